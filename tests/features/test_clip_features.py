"""CLIP image features from local weights: preprocessing by hand, shapes, determinism, the
feature space's weights lookup (random tiny encoders saved to tmp dirs; no downloads)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from factories import pretrained as factory
from transformers import CLIPImageProcessor

from mindzoo.errors import UserInputError
from mindzoo.features import FEATURE_SPACES, compute_features
from mindzoo.features.clip import (
    CLIP_MEAN,
    CLIP_STD,
    WEIGHTS_ENV,
    ClipVision,
    _cached_clip_vision,
    clip_features,
    load_clip_vision,
)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("clip")
    factory.clip_vision(image_size=16, patch_size=4).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(5, 20, 26, 3), dtype=np.uint8)


def _hand_normalise(pixels: np.ndarray) -> np.ndarray:
    """uint8 [h, w, 3] -> CLIP-normalised [3, h, w], written out."""
    return ((pixels / 255.0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)).transpose(2, 0, 1)


def test_preprocessing_crops_the_centre_and_normalises_like_a_hand_computation():
    clip = ClipVision(factory.clip_vision(image_size=4, patch_size=2))
    image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3) * 3
    # shortest edge is already 4: no resize; the 4 x 4 centre crop drops column 0 and column 5
    expected = _hand_normalise(image[:, 1:5])
    np.testing.assert_allclose(clip.preprocess(image[None])[0].numpy(), expected, atol=1e-6)


def test_preprocessing_resizes_the_shortest_edge():
    clip = ClipVision(factory.clip_vision(image_size=4, patch_size=2))
    flat = np.full((12, 8, 3), (10, 128, 250), dtype=np.uint8)  # bicubic keeps a flat image flat
    expected = _hand_normalise(flat[:4, :4])
    np.testing.assert_allclose(clip.preprocess(flat[None])[0].numpy(), expected, atol=1e-6)
    # and a textured non-square image matches transformers' CLIPImageProcessor exactly
    image = np.random.default_rng(1).integers(0, 256, size=(30, 41, 3), dtype=np.uint8)
    reference = CLIPImageProcessor(size={"shortest_edge": 4}, crop_size={"height": 4, "width": 4})(
        images=[image], return_tensors="pt"
    ).pixel_values
    np.testing.assert_allclose(clip.preprocess(image[None]).numpy(), reference.numpy(), atol=1e-5)


def test_features_shapes_determinism_and_projection(weights, images):
    torch.set_num_threads(1)
    clip = load_clip_vision(weights)
    features = clip(images, batch_size=2)
    assert features["image_embeds"].shape == (5, factory.EMBED_DIM)
    assert features["tokens"].shape == (5, (16 // 4) ** 2 + 1, 16)
    assert all(v.dtype == np.float32 for v in features.values())
    again = clip(images, batch_size=5)
    np.testing.assert_allclose(again["image_embeds"], features["image_embeds"], atol=1e-5)
    # image_embeds = projection(post layer norm(class token)) of the tokens we return
    model = clip.model
    with torch.no_grad():
        cls = torch.from_numpy(features["tokens"][:, 0])
        projected = model.visual_projection(model.vision_model.post_layernorm(cls)).numpy()
    np.testing.assert_allclose(features["image_embeds"], projected, atol=1e-5)
    assert np.abs(features["image_embeds"][0] - features["image_embeds"][1]).max() > 1e-3


def test_a_pipeline_directory_uses_its_image_encoder(tmp_path, images):
    pipeline = factory.save_sd_image_variations(tmp_path / "sdiv", seed=4)
    from_pipeline = load_clip_vision(pipeline)(images)["image_embeds"]
    from_encoder = load_clip_vision(pipeline / "image_encoder")(images)["image_embeds"]
    np.testing.assert_array_equal(from_pipeline, from_encoder)


def test_missing_weights_are_user_errors(tmp_path, monkeypatch, images):
    with pytest.raises(UserInputError, match="config.json"):
        load_clip_vision(tmp_path)
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    assert "clip" in FEATURE_SPACES
    with pytest.raises(UserInputError, match=WEIGHTS_ENV):
        compute_features("clip", images, progress=False)


def test_feature_space_reads_the_weights_from_the_environment(weights, monkeypatch, images):
    monkeypatch.setenv(WEIGHTS_ENV, str(weights))
    _cached_clip_vision.cache_clear()
    features = clip_features(images, progress=False)
    direct = load_clip_vision(weights)(images)
    assert set(features) == {"global", "image_embeds", "tokens"}
    np.testing.assert_allclose(features["global"], direct["image_embeds"], atol=1e-5)
    np.testing.assert_array_equal(features["image_embeds"], features["global"])
    assert features["tokens"].dtype == np.float16
    np.testing.assert_allclose(features["tokens"], direct["tokens"], atol=1e-2, rtol=1e-2)
