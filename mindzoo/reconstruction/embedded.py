"""The `embedded` reconstruction backend: DDIM sampling from a trained embedded diffusion model.

The model (:mod:`mindzoo.models.diffusion`) is trained by ``braindecode-cli train diffusion``
(:mod:`mindzoo.training.diffusion`); without ``--out`` it goes into the store's cache,
``STORE/cache/diffusion-<key>``, where ``key`` hashes the store version and the settings. This
module owns that cache's layout (:func:`cached_weights`), since the backend reads it: `reconstruct
--backend embedded` finds the default-settings model there by itself.

Sampling: DDIM (deterministic, ``eta = 0``, trailing timestep spacing, so the first step starts
from pure noise), optionally started part-way from a low-level image (img2img): with ``strength``
s, the init image is noised to the timestep after which ``round(s * steps)`` steps remain, and
only those are run; classifier-free guidance mixes the conditional and null predictions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from tqdm.auto import tqdm

from mindzoo.config import config_hash, resolve_preset
from mindzoo.datasets.store import TensorStore
from mindzoo.errors import UserInputError
from mindzoo.models.diffusion import (
    BACKEND_NAME,
    CONFIG_FILE,
    EmbeddedConfig,
    EmbeddedDiffusion,
    EmbeddedTrainConfig,
    load_embedded_model,
    noise_scheduler,
)
from mindzoo.reconstruction.base import GenerationSettings, resize_images

NAME = "diffusion"
METRICS_FILE = "metrics.json"


class DiffusionSettings(BaseModel):
    """The sections of mindzoo/configs/models/diffusion.yaml: ``model:``
    (:class:`EmbeddedConfig`) and ``trainer:`` (:class:`EmbeddedTrainConfig`)."""

    model_config = ConfigDict(extra="forbid")

    model: dict = {}
    trainer: dict = {}


def resolve_settings(overrides: list[str]) -> tuple[EmbeddedConfig, EmbeddedTrainConfig]:
    """mindzoo/configs/models/diffusion.yaml + config defaults + ``--set`` overrides, validated."""
    sections = {"model": EmbeddedConfig, "trainer": EmbeddedTrainConfig}
    settings = resolve_preset(NAME, overrides, sections, DiffusionSettings)
    model = EmbeddedConfig(**settings.model)
    model.check()
    return model, EmbeddedTrainConfig(**settings.trainer)


def cache_key(store: TensorStore, model: EmbeddedConfig, trainer: EmbeddedTrainConfig) -> str:
    """Hash of what determines the trained weights: store version and settings."""
    return config_hash(
        {
            "store_config_hash": store.manifest["config_hash"],
            "model": model.model_dump(mode="json"),
            "trainer": trainer.model_dump(mode="json"),
        }
    )


def store_cache_dir(store: TensorStore) -> Path:
    """``STORE/cache`` beside ``CURRENT`` and ``versions/`` (never inside a checksummed version)."""
    if store.path.parent.name != "versions":
        raise UserInputError(
            f"Store {store.path} is a bare version directory with no cache; give the diffusion "
            "model's directory explicitly (train diffusion --out DIR, reconstruct --weights DIR)"
        )
    return store.path.parent.parent / "cache"


def cached_weights(store: TensorStore, overrides: list[str] | None = None) -> Path:
    """Where `train diffusion --store STORE [--set ...]` (no --out) puts its model."""
    model, trainer = resolve_settings(overrides or [])
    return store_cache_dir(store) / f"{NAME}-{cache_key(store, model, trainer)[:12]}"


def is_finished(directory: Path, key: str) -> bool:
    """True when ``directory`` holds a finished model trained with cache key ``key``."""
    config_path = Path(directory) / CONFIG_FILE
    if not (config_path.is_file() and (Path(directory) / METRICS_FILE).is_file()):
        return False
    return json.loads(config_path.read_text()).get("cache_key") == key


class EmbeddedBackend:
    """The `embedded` reconstruction backend around a trained :class:`EmbeddedDiffusion`."""

    name = BACKEND_NAME
    supports_lowlevel = True

    def __init__(self, model: EmbeddedDiffusion, device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.condition = (model.config.condition_space, model.config.condition_kind)

    def generate(
        self,
        condition: np.ndarray,
        settings: GenerationSettings,
        lowlevel: np.ndarray | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """uint8 images [n, S, S, 3] from conditions [n, d]; see the module docstring.

        Item ``i`` draws its noise from a generator seeded ``settings.seed + i``; DDIM with
        ``eta = 0`` draws nothing else, so an item's image does not depend on its batch.
        """
        condition = np.asarray(condition, dtype=np.float32).reshape(len(condition), -1)
        self._check(condition, settings, lowlevel)
        batches = range(0, len(condition), settings.batch_size)
        images = []
        for start in tqdm(batches, desc="generate", disable=not progress):
            rows = slice(start, start + settings.batch_size)
            init = None if lowlevel is None else lowlevel[rows]
            seeds = [settings.seed + i for i in range(start, start + len(condition[rows]))]
            images.append(self._generate_batch(condition[rows], seeds, settings, init))
        size = self.model.config.image_size
        return np.concatenate(images) if images else np.zeros((0, size, size, 3), np.uint8)

    def _check(
        self, condition: np.ndarray, settings: GenerationSettings, lowlevel: np.ndarray | None
    ) -> None:
        if condition.shape[1] != self.model.condition_dim:
            raise UserInputError(
                f"The embedded model expects {self.model.condition_dim}-d conditions "
                f"({'/'.join(self.condition)}), got {condition.shape[1]}-d"
            )
        if settings.steps < 1 or not 0.0 <= settings.strength <= 1.0 or settings.batch_size < 1:
            raise UserInputError(
                f"Need steps >= 1, 0 <= strength <= 1 and batch_size >= 1 (got steps "
                f"{settings.steps}, strength {settings.strength}, batch_size {settings.batch_size})"
            )
        if lowlevel is not None and len(lowlevel) != len(condition):
            raise UserInputError(
                f"Got {len(lowlevel)} low-level images for {len(condition)} conditions"
            )

    @torch.no_grad()
    def _generate_batch(
        self,
        condition: np.ndarray,
        seeds: list[int],
        settings: GenerationSettings,
        lowlevel: np.ndarray | None,
    ) -> np.ndarray:
        from diffusers import DDIMScheduler

        model = self.model
        scheduler = DDIMScheduler.from_config(
            noise_scheduler(model.config).config, timestep_spacing="trailing"
        )
        scheduler.set_timesteps(settings.steps)
        timesteps = scheduler.timesteps
        size, patch = model.config.image_size, model.config.patch
        shape = (3 * patch**2, size // patch, size // patch)
        noise = torch.stack(
            [torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds]
        ).to(self.device)
        if lowlevel is None or settings.strength >= 1.0:
            sample = noise
        else:
            run = round(settings.strength * settings.steps)
            init = torch.as_tensor(resize_images(lowlevel, size)).float().to(self.device)
            init = model.to_model_space(init)
            if run == 0:
                return model.to_images(init)
            timesteps = timesteps[len(timesteps) - run :]
            sample = scheduler.add_noise(init, noise, timesteps[:1].repeat(len(seeds)))
        cond = torch.as_tensor(condition, device=self.device)
        guided = settings.guidance != 1.0
        embedding = model.embed(cond)
        if guided:
            null = model.null_condition.expand_as(embedding)
            embedding = torch.cat([embedding, null])
        for t in timesteps:
            model_input = torch.cat([sample, sample]) if guided else sample
            prediction = model(model_input, t.expand(len(model_input)).to(self.device), embedding)
            if guided:
                conditional, unconditional = prediction.chunk(2)
                prediction = unconditional + settings.guidance * (conditional - unconditional)
            sample = scheduler.step(prediction, t, sample, eta=0.0).prev_sample
        return model.to_images(sample)


def load_embedded(weights_dir: Path | None, device: str = "cpu") -> EmbeddedBackend:
    """The registered loader: an :class:`EmbeddedBackend` from a `train diffusion` directory."""
    if weights_dir is None:
        raise UserInputError(
            "The embedded backend needs --weights DIR: the --out of `braindecode-cli train "
            "diffusion --store STORE` (reconstruct finds the store's cached model by itself)"
        )
    return EmbeddedBackend(load_embedded_model(weights_dir), device)
