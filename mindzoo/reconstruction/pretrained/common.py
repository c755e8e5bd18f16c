"""What the pretrained diffusers backends share: DDIM sampling, seeded generation, loading.

Every backend samples with DDIM (eta 0) built from the pipeline's scheduler config, so the only
randomness is the initial noise drawn per item from ``seed + i``; results do not depend on the
batch. Any backend can start from a low-level image (img2img): encode it with the VAE, noise it
to the timestep where the last ``strength`` fraction of the schedule starts, and denoise from
there. Images come out at the pipeline's native size (UNet sample size x VAE scale factor).

Loading checks that ``--weights`` is a local diffusers pipeline directory of the right class
with every file the backend reads, and loads safetensors weights only, without the network.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mindzoo.errors import UserInputError
from mindzoo.reconstruction.base import GenerationSettings

Inputs = dict[str, torch.Tensor]
"""Keyword inputs of the UNet besides the latents and timestep, batch first."""


class LatentSampler:
    """A pipeline's UNet + VAE with a DDIM loop: classifier-free guidance and img2img init."""

    def __init__(self, unet: Any, vae: Any, scheduler_config: dict, device: str) -> None:
        from diffusers import DDIMScheduler

        self.unet, self.vae, self.device = unet, vae, device
        self.dtype = unet.dtype
        self.scheduler = DDIMScheduler.from_config(scheduler_config)
        scale = 2 ** (len(vae.config.block_out_channels) - 1)
        size = unet.config.sample_size
        latent_h, latent_w = (size, size) if isinstance(size, int) else tuple(size)
        self.latent_shape = (int(unet.config.in_channels), int(latent_h), int(latent_w))
        self.image_size = (int(latent_h) * scale, int(latent_w) * scale)

    def encode(self, images: np.ndarray) -> torch.Tensor:
        """uint8 [n, h, w, 3] -> scaled VAE latents (posterior mean) at the native size."""
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
        if x.shape[-2:] != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", antialias=True)
        x = x.to(self.device, self.dtype)
        with torch.no_grad():
            latents = self.vae.encode(x).latent_dist.mean
        return latents * self.vae.config.scaling_factor

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Scaled VAE latents -> uint8 images [n, H, W, 3]."""
        with torch.no_grad():
            x = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        x = ((x.float() + 1) * 127.5).round().clamp(0, 255)
        return x.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

    def sample(
        self,
        noise: torch.Tensor,
        cond: Inputs,
        uncond: Inputs,
        settings: GenerationSettings,
        init: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Denoise ``noise`` [n, c, h, w] (or ``init`` latents re-noised with it) to latents.

        With ``init``, only the last ``settings.strength`` fraction of the ``settings.steps``
        schedule runs (at least one step), starting from ``init`` noised to that timestep.
        """
        scheduler = self.scheduler
        scheduler.set_timesteps(settings.steps, device=self.device)
        timesteps = scheduler.timesteps
        noise = noise.to(self.device, self.dtype)
        if init is None:
            latents = noise * scheduler.init_noise_sigma
        else:
            n_steps = min(settings.steps, max(1, int(settings.steps * settings.strength)))
            timesteps = timesteps[settings.steps - n_steps :]
            start = timesteps[:1].repeat(noise.shape[0])
            latents = scheduler.add_noise(init.to(self.device, self.dtype), noise, start)
        guided = settings.guidance > 1.0
        inputs = {k: torch.cat([uncond[k], cond[k]]) if guided else cond[k] for k in cond}
        inputs = {k: v.to(self.device, self.dtype) for k, v in inputs.items()}
        for t in timesteps:
            x = torch.cat([latents, latents]) if guided else latents
            x = scheduler.scale_model_input(x, t)
            with torch.no_grad():  # noise (epsilon) or v, as the pipeline's scheduler says
                pred = self.unet(x, t, **inputs).sample
            if guided:
                pred_uncond, pred_cond = pred.chunk(2)
                pred = pred_uncond + settings.guidance * (pred_cond - pred_uncond)
            latents = scheduler.step(pred, t, latents, eta=0.0).prev_sample
        return latents


ConditionInputs = Callable[[torch.Tensor, list[torch.Generator]], tuple[Inputs, Inputs]]
"""(condition rows, per-item generators) -> (conditional, unconditional) UNet inputs."""


def generate_images(
    name: str,
    sampler: LatentSampler,
    to_inputs: ConditionInputs,
    condition: np.ndarray,
    settings: GenerationSettings,
    lowlevel: np.ndarray | None,
) -> np.ndarray:
    """Images uint8 [n, H, W, 3]; item ``i`` draws all its noise from ``seed + i``."""
    _check_settings(settings, condition, lowlevel)
    if lowlevel is not None and settings.strength >= 1.0:
        lowlevel = None  # strength 1 re-noises the whole schedule: the init has no say
    batches = []
    starts = range(0, condition.shape[0], settings.batch_size)
    for start in tqdm(starts, desc=name, unit="batch", disable=len(starts) < 2):
        stop = min(start + settings.batch_size, condition.shape[0])
        generators = [torch.Generator().manual_seed(settings.seed + i) for i in range(start, stop)]
        # latent noise first, then whatever the condition inputs draw (unCLIP embedding noise)
        noise = item_noise(sampler.latent_shape, generators)
        rows = torch.from_numpy(np.asarray(condition[start:stop], dtype=np.float32))
        cond, uncond = to_inputs(rows, generators)
        init = None if lowlevel is None else sampler.encode(lowlevel[start:stop])
        batches.append(sampler.decode(sampler.sample(noise, cond, uncond, settings, init)))
    return np.concatenate(batches)


def item_noise(shape: tuple[int, ...], generators: list[torch.Generator]) -> torch.Tensor:
    """Standard normal noise [n, *shape] on the CPU, row i drawn from ``generators[i]``."""
    return torch.stack([torch.randn(shape, generator=g) for g in generators])


def _check_settings(
    settings: GenerationSettings, condition: np.ndarray, lowlevel: np.ndarray | None
) -> None:
    if settings.steps < 1 or settings.batch_size < 1:
        raise UserInputError(
            f"steps and batch_size must be positive, got {settings.steps} and {settings.batch_size}"
        )
    if not 0.0 < settings.strength <= 1.0:
        raise UserInputError(f"strength must be in (0, 1], got {settings.strength}")
    if lowlevel is not None and (
        lowlevel.dtype != np.uint8
        or lowlevel.ndim != 4
        or lowlevel.shape[-1] != 3
        or len(lowlevel) != len(condition)
    ):
        raise UserInputError(
            f"lowlevel must be uint8 [{len(condition)}, h, w, 3] (one image per condition row), "
            f"got {lowlevel.dtype} {lowlevel.shape}"
        )


def check_condition(name: str, condition: np.ndarray, shape: tuple[int, ...], what: str) -> None:
    if condition.ndim != len(shape) + 1 or tuple(condition.shape[1:]) != shape:
        raise UserInputError(
            f"Backend {name} needs {what} of shape [n, {', '.join(map(str, shape))}], got "
            f"{tuple(condition.shape)}; predict the feature space of the pipeline's own CLIP"
        )


# --- loading -------------------------------------------------------------------------------


def _weight_files(component: str, library: str) -> tuple[str, ...]:
    base = "model" if library == "transformers" else "diffusion_pytorch_model"
    return (f"{component}/{base}.safetensors", f"{component}/{base}.safetensors.index.json")


def check_pipeline_dir(
    name: str,
    weights: Path | None,
    classes: tuple[str, ...],
    configs: tuple[str, ...],
    models: dict[str, str],
) -> Path:
    """The weights directory, after checking it holds every file this backend reads.

    ``configs``: files that must exist; ``models``: component -> library of safetensors weights.
    """
    if weights is None:
        raise UserInputError(
            f"Backend {name} needs --weights DIR: a local diffusers {classes[0]} directory "
            "(save_pretrained output or a Hub snapshot)"
        )
    index = weights / "model_index.json"
    if not index.is_file():
        raise UserInputError(
            f"{index} not found: --weights must be a local diffusers {classes[0]} directory"
        )
    try:
        found = json.loads(index.read_text()).get("_class_name")
    except (ValueError, AttributeError) as exc:
        raise UserInputError(f"{index} is not a diffusers model index (JSON object)") from exc
    if found not in classes:
        raise UserInputError(
            f"{index} describes a {found}; backend {name} needs a {' or '.join(classes)}"
        )
    for rel in configs:
        if not (weights / rel).is_file():
            raise UserInputError(f"{weights / rel} is missing: the {classes[0]} is incomplete")
    for component, library in models.items():
        files = _weight_files(component, library)
        if not any((weights / rel).is_file() for rel in files):
            raise UserInputError(
                f"{weights / files[0]} is missing: the {classes[0]} is incomplete (safetensors "
                "weights are required)"
            )
    return weights


def load_pipeline(pipeline_cls: type, weights: Path, device: str, **given: Any) -> Any:
    """``pipeline_cls`` from ``weights`` (safetensors only, no network) on ``device``; ``given``:
    components passed instead of loaded (None = not needed, left on disk)."""
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    try:
        pipe = pipeline_cls.from_pretrained(
            weights, dtype=dtype, use_safetensors=True, local_files_only=True, **given
        )
    except (OSError, ValueError) as exc:
        raise UserInputError(
            f"Could not load {weights} as a {pipeline_cls.__name__}: {first_line(exc)}"
        ) from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_component(model_cls: type, weights: Path, subfolder: str, device: str) -> Any:
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    try:
        return model_cls.from_pretrained(
            weights,
            subfolder=subfolder,
            dtype=dtype,
            use_safetensors=True,
            local_files_only=True,
        )
    except (OSError, ValueError) as exc:
        raise UserInputError(f"Could not load {weights / subfolder}: {first_line(exc)}") from exc


def first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
