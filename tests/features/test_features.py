"""Feature spaces: pretrained EfficientNet-Lite0 classifies real photos; shapes, dtypes, values."""

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from mindzoo.errors import UserInputError
from mindzoo.features import FEATURE_SPACES, compute_features
from mindzoo.features.batching import padded_batch
from mindzoo.features.efficientnet_lite import load_efficientnet_lite0, preprocess

IMAGENET_CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
IMAGENET_COFFEE = {967, 968}  # espresso, cup


def _top5(image: np.ndarray) -> set[int]:
    model = load_efficientnet_lite0()
    with torch.no_grad():
        logits = model(preprocess(image[None]))
    return set(logits[0].topk(5).indices.tolist())


def test_pretrained_weights_recognise_a_cat():
    assert _top5(data.chelsea()) & IMAGENET_CATS


def test_pretrained_weights_recognise_coffee_as_top1():
    model = load_efficientnet_lite0()
    with torch.no_grad():
        probabilities = model(preprocess(data.coffee()[None])).softmax(dim=-1)[0]
    assert int(probabilities.argmax()) in IMAGENET_COFFEE
    assert float(probabilities[list(IMAGENET_COFFEE)].sum()) > 0.5


def test_model_is_built_once_per_process():
    assert load_efficientnet_lite0() is load_efficientnet_lite0()


@pytest.fixture(scope="module")
def small_images() -> np.ndarray:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 40, 48, 3), dtype=np.uint8)
    # one real photo, so not every image is noise
    images[0] = np.asarray(Image.fromarray(data.chelsea()).resize((48, 40)))
    return images


def test_efficientnet_shapes_dtypes_and_head_nonnegativity(small_images):
    features = compute_features("efficientnet-lite0", small_images, progress=False)
    assert set(features) == {"global", "spatial"}
    assert features["global"].shape == (5, 1280) and features["global"].dtype == np.float32
    assert features["spatial"].shape == (5, 49, 320) and features["spatial"].dtype == np.float16
    # the pooled head is an average of ReLU6 outputs: within [0, 6] and not constant
    assert features["global"].min() >= 0.0 and features["global"].max() <= 6.0
    assert features["global"].std(axis=0).mean() > 0.01


def test_efficientnet_global_feeds_the_classifier(small_images):
    features = compute_features("efficientnet-lite0", small_images, progress=False)
    model = load_efficientnet_lite0()
    with torch.no_grad():
        logits = model(preprocess(small_images)).numpy()
        from_features = model._fc(torch.from_numpy(features["global"])).numpy()
    np.testing.assert_allclose(from_features, logits, rtol=1e-4, atol=1e-4)


def test_efficientnet_spatial_tokens_are_row_major(small_images):
    features = compute_features("efficientnet-lite0", small_images[:2], progress=False)
    batch, n_real = padded_batch(small_images[:2], 0, 64)  # what compute_features runs
    assert (len(batch), n_real) == (16, 2)
    with torch.no_grad():
        spatial, _ = load_efficientnet_lite0().forward_features(preprocess(batch))
    spatial = spatial[:n_real]
    # token 7 is row 1, column 0 of the 7x7 grid
    expected = spatial[:, :, 1, 0].numpy().astype(np.float16)
    np.testing.assert_array_equal(features["spatial"][:, 7], expected)


def test_efficientnet_is_deterministic_and_batch_size_invariant(small_images):
    whole = compute_features("efficientnet-lite0", small_images, progress=False)["global"]
    again = compute_features("efficientnet-lite0", small_images, progress=False)["global"]
    batched = compute_features("efficientnet-lite0", small_images, batch_size=2, progress=False)
    np.testing.assert_array_equal(whole, again)
    np.testing.assert_allclose(batched["global"], whole, rtol=1e-4, atol=1e-5)


def test_pixels_are_the_image_in_unit_range(small_images):
    features = compute_features("pixels", small_images, progress=False)
    assert set(features) == {"global", "lowres"}
    pixels = features["global"]
    assert pixels.shape == (5, 40 * 48 * 3) and pixels.dtype == np.float32
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0
    np.testing.assert_array_equal(np.round(pixels[3] * 255).reshape(40, 48, 3), small_images[3])
    lowres = features["lowres"]
    assert lowres.shape == (5, 28, 28, 3) and lowres.dtype == np.float32
    # area average: the image mean survives the resize (up to uint8 rounding per pixel)
    assert abs(lowres[3].mean() - small_images[3].mean() / 255) < 2 / 255


def test_lowres_of_a_block_image_keeps_its_blocks():
    image = np.zeros((1, 56, 56, 3), dtype=np.uint8)
    image[0, :28, :28] = 200  # top-left quadrant bright
    lowres = compute_features("pixels", image, progress=False)["lowres"][0]
    np.testing.assert_allclose(lowres[:14, :14], 200 / 255, atol=1e-6)
    np.testing.assert_allclose(lowres[14:, 14:], 0.0, atol=1e-6)


def test_feature_spaces_registry_lists_both_spaces():
    assert {"pixels", "efficientnet-lite0"} <= set(FEATURE_SPACES)
    assert all(space.name == name for name, space in FEATURE_SPACES.items())


def test_unknown_space_names_it_and_lists_the_valid_ones(small_images):
    with pytest.raises(UserInputError, match="'clip-vit'.*efficientnet-lite0, pixels"):
        compute_features("clip-vit", small_images)


@pytest.mark.parametrize(
    "images",
    [
        np.zeros((2, 8, 8, 3), dtype=np.float32),
        np.zeros((2, 8, 8), dtype=np.uint8),
        np.zeros((0, 8, 8, 3), dtype=np.uint8),
    ],
)
def test_bad_images_are_user_input_errors(images):
    with pytest.raises(UserInputError, match="image"):
        compute_features("pixels", images)


def test_compute_features_memo_matches_fresh_computation() -> None:
    from mindzoo.features import _MEMO

    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    _MEMO.clear()
    first = compute_features("pixels", images[:3], progress=False)
    # reordered and partly new: cached rows come back in the new order, new ones are computed
    order = [4, 2, 0, 3, 1]
    second = compute_features("pixels", images[order], progress=False)
    _MEMO.clear()
    fresh = compute_features("pixels", images[order], progress=False)
    np.testing.assert_array_equal(second["global"], fresh["global"])
    np.testing.assert_array_equal(first["global"], fresh["global"][[2, 4, 1]])
