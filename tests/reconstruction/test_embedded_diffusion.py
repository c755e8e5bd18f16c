"""The embedded diffusion backend on a tiny model: training, seeds, guidance, low-level init."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mindzoo.errors import UserInputError
from mindzoo.models.diffusion import (
    EmbeddedConfig,
    EmbeddedDiffusion,
    EmbeddedTrainConfig,
    denoising_loss,
    save_embedded,
)
from mindzoo.reconstruction import GenerationSettings, load_backend
from mindzoo.reconstruction.base import resize_images
from mindzoo.reconstruction.embedded import EmbeddedBackend
from mindzoo.training.diffusion import train_embedded

# v-prediction (the preset predicts the clean image): at low noise a barely trained v-model
# already leaves its input almost unchanged, which the strength test relies on.
TINY = EmbeddedConfig(
    image_size=16,
    patch=2,
    channels=[16, 32],
    norm_groups=8,
    attention_head_dim=8,
    prediction_type="v_prediction",
)
TRAIN = EmbeddedTrainConfig(steps=80, batch_size=8, lr=3e-3, warmup_steps=5)


def colour_squares(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Flat-colour 16x16 images with a bright square; the condition is colour + square place."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, (n, 3))
    corners = rng.integers(0, 8, (n, 2))
    images = np.broadcast_to(colours[:, None, None, :], (n, 16, 16, 3)).astype(np.uint8).copy()
    for image, (y, x) in zip(images, corners, strict=True):
        image[y : y + 8, x : x + 8] = 255
    conditions = np.concatenate([colours / 255.0, corners / 8.0], axis=1).astype(np.float32)
    return images, conditions


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and two threads crawl on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained() -> tuple[EmbeddedDiffusion, dict, np.ndarray, np.ndarray]:
    images, conditions = colour_squares(32)
    model, facts = train_embedded(images, conditions, TINY, TRAIN, progress=False)
    return model, facts, images, conditions


def test_training_lowers_the_denoising_loss(trained) -> None:
    model, facts, images, conditions = trained
    torch.manual_seed(TRAIN.seed)  # train_embedded builds its model right after this seed
    untrained = EmbeddedDiffusion(TINY, conditions.shape[1])
    untrained.set_condition_statistics(conditions)
    x0 = untrained.to_model_space(torch.as_tensor(images).float())
    c = torch.as_tensor(conditions)
    with torch.no_grad():
        before = float(denoising_loss(untrained, x0, c, torch.Generator().manual_seed(5)))
        after = float(denoising_loss(model, x0, c, torch.Generator().manual_seed(5)))
    assert after < 0.75 * before, (before, after)
    history = [h["loss"] for h in facts["history"]]
    assert len(history) == 10 and history[-1] < history[0]
    assert facts["n_train_images"] == 32 and facts["parameters"] > 0


def test_same_seed_same_images_other_seed_other_images(trained) -> None:
    model, _, _, conditions = trained
    backend = EmbeddedBackend(model)
    settings = GenerationSettings(steps=4, guidance=2.0, seed=3, batch_size=4)
    first = backend.generate(conditions[:4], settings)
    assert first.shape == (4, 16, 16, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, backend.generate(conditions[:4], settings))
    other = backend.generate(conditions[:4], GenerationSettings(steps=4, guidance=2.0, seed=4))
    assert np.abs(other.astype(int) - first).mean() > 1.0
    # item i uses seed + i whatever the batch: one at a time gives the same images
    single = GenerationSettings(steps=4, guidance=2.0, seed=3, batch_size=1)
    assert np.abs(backend.generate(conditions[:4], single).astype(int) - first).max() <= 1


def test_guidance_zero_ignores_the_condition_and_guidance_changes_images(trained) -> None:
    model, _, _, conditions = trained
    backend = EmbeddedBackend(model)
    same_seed = [conditions[:1], conditions[5:6]]
    unconditional = [
        backend.generate(c, GenerationSettings(steps=4, guidance=0.0, seed=0)) for c in same_seed
    ]
    np.testing.assert_array_equal(*unconditional)
    conditional = [
        backend.generate(c, GenerationSettings(steps=4, guidance=1.0, seed=0)) for c in same_seed
    ]
    assert np.abs(conditional[0].astype(int) - conditional[1]).mean() > 1.0
    guided = backend.generate(conditions[:4], GenerationSettings(steps=4, guidance=3.0, seed=0))
    plain = backend.generate(conditions[:4], GenerationSettings(steps=4, guidance=1.0, seed=0))
    assert np.abs(guided.astype(int) - plain).mean() > 1.0


def test_strength_sets_how_much_of_the_init_image_survives(trained) -> None:
    model, _, images, conditions = trained
    backend = EmbeddedBackend(model)
    init = resize_images(images[::-1][:4].copy(), 8)  # other items' images, at another size
    target = resize_images(init, 16).astype(int)

    def distance(strength: float, lowlevel: np.ndarray | None = init) -> float:
        settings = GenerationSettings(steps=10, guidance=1.0, seed=0, strength=strength)
        out = backend.generate(conditions[:4], settings, lowlevel)
        return float(np.abs(out.astype(int) - target).mean())

    assert distance(0.0) == 0.0  # no step left: the init image itself
    near, far = distance(0.1), distance(1.0)
    assert near < far / 4, (near, far)
    # strength 1 ignores the init image: the same as generating without one
    settings = GenerationSettings(steps=10, guidance=1.0, seed=0, strength=1.0)
    np.testing.assert_array_equal(
        backend.generate(conditions[:4], settings, init), backend.generate(conditions[:4], settings)
    )


def test_saved_weights_load_by_name_and_generate_the_same(trained, tmp_path: Path) -> None:
    model, _, _, conditions = trained
    save_embedded(model, tmp_path / "w", {"note": "test"})
    loaded = load_backend("embedded", tmp_path / "w")
    assert loaded.condition == ("efficientnet-lite0", "global") and loaded.supports_lowlevel
    settings = GenerationSettings(steps=3, seed=1)
    np.testing.assert_array_equal(
        loaded.generate(conditions[:2], settings),
        EmbeddedBackend(model).generate(conditions[:2], settings),
    )
    with pytest.raises(UserInputError, match="config.json is missing"):
        load_backend("embedded", tmp_path / "nothing")
    with pytest.raises(UserInputError, match="needs --weights"):
        load_backend("embedded", None)
    with pytest.raises(UserInputError, match="expects 5-d conditions"):
        loaded.generate(np.zeros((2, 7), np.float32), settings)


def test_config_shape_checks_name_the_fix() -> None:
    with pytest.raises(UserInputError, match="divisible"):
        EmbeddedConfig(image_size=20, patch=2, channels=[16, 32, 32]).check()
    with pytest.raises(UserInputError, match="norm_groups"):
        EmbeddedConfig(channels=[24, 32], norm_groups=16).check()
