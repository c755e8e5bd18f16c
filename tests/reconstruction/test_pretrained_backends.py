"""Pretrained diffusers backends, built tiny from config with random weights and loaded by path.

The strongest checks compare our generation (predicted embeddings fed straight to the UNet)
with the diffusers pipeline's own ``__call__`` given the image whose embedding we feed: same
noise, same scheduler, so the images must agree to rounding.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from factories import pretrained as factory
from PIL import Image

from mindzoo.errors import UserInputError
from mindzoo.reconstruction import GenerationSettings, load_backend

SETTINGS = GenerationSettings(steps=2, guidance=3.0, seed=5)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pipelines")
    return {
        "sd-image-variations": factory.save_sd_image_variations(root / "sdiv"),
        "sd-unclip": factory.save_sd_unclip(root / "unclip"),
        "versatile-diffusion": factory.save_versatile_diffusion(root / "vd"),
    }


@pytest.fixture(scope="module")
def backends(pipelines: dict[str, Path]) -> dict:
    return {name: load_backend(name, weights=path) for name, path in pipelines.items()}


def _condition(name: str, n: int = 2, seed: int = 0) -> np.ndarray:
    shape = (n, factory.VD_TOKENS, 16) if name == "versatile-diffusion" else (n, factory.EMBED_DIM)
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _pixels(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Random CLIP-normalised pixel batches [n, 3, size, size]."""
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(n, 3, size, size))).float()


def _noise(backend, n: int, seed: int) -> tuple[torch.Tensor, list[torch.Generator]]:
    """The initial latents our backend draws for items 0..n-1, and the generators after them."""
    generators = [torch.Generator().manual_seed(seed + i) for i in range(n)]
    shape = backend.sampler.latent_shape
    return torch.stack([torch.randn(shape, generator=g) for g in generators]), generators


@pytest.mark.parametrize("name", ["sd-image-variations", "sd-unclip", "versatile-diffusion"])
def test_generate_shapes_determinism_and_condition_dependence(backends, name):
    backend = backends[name]
    condition = _condition(name)
    images = backend.generate(condition, SETTINGS)
    assert images.shape == (2, 16, 16, 3) and images.dtype == np.uint8
    assert images.std() > 5  # not a constant image
    np.testing.assert_array_equal(backend.generate(condition, SETTINGS), images)
    # item i depends only on seed + i: batch size and neighbours do not matter
    one_by_one = backend.generate(
        condition, GenerationSettings(steps=2, guidance=3.0, seed=5, batch_size=1)
    )
    assert np.abs(one_by_one.astype(int) - images).max() <= 1
    alone = backend.generate(condition[1:], GenerationSettings(steps=2, guidance=3.0, seed=6))
    assert np.abs(alone[0].astype(int) - images[1]).max() <= 1
    other_seed = backend.generate(condition, GenerationSettings(steps=2, guidance=3.0, seed=6))
    assert np.abs(other_seed.astype(int) - images).mean() > 1
    other_condition = backend.generate(_condition(name, seed=1), SETTINGS)
    assert not np.array_equal(other_condition, images)


def test_sd_image_variations_matches_the_diffusers_pipeline(backends, pipelines):
    from diffusers import DDIMScheduler, StableDiffusionImageVariationPipeline

    pipe = StableDiffusionImageVariationPipeline.from_pretrained(pipelines["sd-image-variations"])
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)  # ours samples with DDIM
    pipe.set_progress_bar_config(disable=True)
    pixels = _pixels(2, 16)
    with torch.no_grad():
        embeds = pipe.image_encoder(pixels).image_embeds.numpy()
    backend = backends["sd-image-variations"]
    noise, _ = _noise(backend, 2, SETTINGS.seed)
    expected = pipe(
        pixels, num_inference_steps=2, guidance_scale=3.0, latents=noise, output_type="np"
    ).images
    ours = backend.generate(embeds, SETTINGS)
    assert np.abs(ours / 255.0 - expected).max() < 1.5 / 255


def test_sd_unclip_matches_the_diffusers_pipeline(backends, pipelines):
    from diffusers import StableUnCLIPImg2ImgPipeline

    pipe = StableUnCLIPImg2ImgPipeline.from_pretrained(pipelines["sd-unclip"])
    pipe.set_progress_bar_config(disable=True)
    pixels = _pixels(2, 16)
    with torch.no_grad():
        embeds = pipe.image_encoder(pixels).image_embeds
    backend = backends["sd-unclip"]
    # the pipeline draws the embedding noise from the generators after our latent noise
    noise, generators = _noise(backend, 2, SETTINGS.seed)
    expected = pipe(
        image_embeds=embeds,
        prompt=["", ""],
        num_inference_steps=2,
        guidance_scale=3.0,
        latents=noise,
        generator=generators,
        output_type="np",
    ).images
    ours = backend.generate(embeds.numpy(), SETTINGS)
    assert np.abs(ours / 255.0 - expected).max() < 1.5 / 255


def test_versatile_diffusion_matches_the_diffusers_pipeline(backends):
    backend = backends["versatile-diffusion"]
    pipe = backend.pipe  # the loaded pipeline (with the encoder-mask fix for diffusers 0.42)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in "ab"]
    pixels = pipe.image_feature_extractor(images=images, return_tensors="pt").pixel_values
    with torch.no_grad():
        tokens = pipe.image_encoder(pixels).last_hidden_state.numpy()
    noise, _ = _noise(backend, 2, SETTINGS.seed)
    expected = pipe(
        prompt=["", ""],
        image=images,
        text_to_image_strength=0.0,
        num_inference_steps=2,
        guidance_scale=3.0,
        latents=noise,
        output_type="np",
    ).images
    ours = backend.generate(tokens, SETTINGS)
    assert np.abs(ours / 255.0 - expected).max() < 1.5 / 255


def test_unclip_lowlevel_init_pulls_the_output_towards_the_init_image(backends):
    backend = backends["sd-unclip"]
    condition = _condition("sd-unclip")
    rng = np.random.default_rng(3)
    lowlevel = rng.integers(0, 256, size=(2, 24, 20, 3), dtype=np.uint8)  # resized by the backend
    # a random VAE does not reconstruct, so "the init image" is its VAE round trip
    target = backend.sampler.decode(backend.sampler.encode(lowlevel)).astype(float)

    def distance(strength: float) -> float:
        settings = GenerationSettings(steps=10, guidance=3.0, seed=5, strength=strength)
        return float(np.abs(backend.generate(condition, settings, lowlevel) - target).mean())

    low, mid, full = distance(0.1), distance(0.5), distance(1.0)
    assert low < mid < full
    assert low < 0.7 * full  # random UNet outputs still move it: 21 vs 39 grey levels
    # strength 1 re-noises everything: the init image has no say
    no_init = backend.generate(condition, GenerationSettings(steps=10, guidance=3.0, seed=5))
    assert full == pytest.approx(float(np.abs(no_init - target).mean()))


def test_weights_errors_name_the_missing_file(pipelines, tmp_path):
    with pytest.raises(UserInputError, match="--weights"):
        load_backend("sd-image-variations")
    with pytest.raises(UserInputError, match="model_index.json"):
        load_backend("sd-image-variations", weights=tmp_path)
    broken = tmp_path / "sdiv"
    shutil.copytree(pipelines["sd-image-variations"], broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(UserInputError, match=r"unet/diffusion_pytorch_model\.safetensors"):
        load_backend("sd-image-variations", weights=broken)
    with pytest.raises(UserInputError, match="StableUnCLIPImg2ImgPipeline"):
        load_backend("sd-unclip", weights=pipelines["sd-image-variations"])
    vd = tmp_path / "vd"
    shutil.copytree(pipelines["versatile-diffusion"], vd)
    shutil.rmtree(vd / "text_unet")
    with pytest.raises(UserInputError, match=r"text_unet/config\.json"):
        load_backend("versatile-diffusion", weights=vd)


def test_bad_condition_and_settings_are_user_errors(backends):
    backend = backends["sd-image-variations"]
    with pytest.raises(UserInputError, match=r"\[n, 16\]"):
        backend.generate(np.zeros((2, 8), np.float32), SETTINGS)
    with pytest.raises(UserInputError, match="strength"):
        backend.generate(_condition("sd-unclip"), GenerationSettings(strength=0.0))
    with pytest.raises(UserInputError, match="lowlevel"):
        backend.generate(_condition("sd-unclip"), SETTINGS, np.zeros((3, 8, 8, 3), np.uint8))
