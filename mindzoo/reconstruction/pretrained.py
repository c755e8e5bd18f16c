"""Backends built from pretrained diffusers pipelines in a local directory (``--weights DIR``).

Each backend feeds *predicted* CLIP features straight into the pipeline's UNet (the pipeline's
own image encoder is bypassed), with the pipeline's classifier-free guidance:

- ``sd-image-variations`` (StableDiffusionImageVariationPipeline, e.g. a copy of
  lambdalabs/sd-image-variations-diffusers): condition ``("clip", "image_embeds")`` [n, d] is
  the single cross-attention token; the unconditional token is zeros, as the pipeline does.
- ``sd-unclip`` (StableUnCLIPImg2ImgPipeline, e.g. stabilityai/stable-diffusion-2-1-unclip):
  ``image_embeds`` go through the pipeline's noise augmentation (normaliser + noising schedule at
  noise level 0) into the UNet's class embedding, the empty prompt fills the cross-attention;
  unconditional = zeros for the whole class input, as the pipeline does. The pipeline's ``image``
  argument is only the CLIP conditioning image (it has no init-latent path), so the low-level
  init is ours: encode the low-level image with the VAE, noise it to the timestep where the last
  ``strength`` fraction of the schedule starts, and denoise from there (img2img).
- ``versatile-diffusion`` (VersatileDiffusionDualGuidedPipeline, deprecated in diffusers but
  still shipped in 0.42): condition ``("clip", "tokens")`` [n, 257, d_hidden] (the last hidden
  state); the pipeline's post layer norm, visual projection and normalisation by the class
  token's norm turn them into its image context. We predict no text, so the text branch gets the
  empty prompt with mixing weight ``VD_TEXT_TO_IMAGE_STRENGTH`` = 0 (pure image guidance);
  unconditional image context = the pipeline's own (its grey image). Its own ``__call__``
  crashes in diffusers 0.42 (DualTransformer2DModel rejects the UNet's encoder_attention_mask,
  diffusers issue #13651); the loader wraps those blocks so the mask (always None) is dropped.

Every backend samples with DDIM (eta 0) built from the pipeline's scheduler config, so the only
randomness is the initial noise drawn per item from ``seed + i``; results do not depend on the
batch. Any backend can start from a low-level image as above. Images come out at the
pipeline's native size (UNet sample size x VAE scale factor).
"""

from __future__ import annotations

import inspect
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

VD_TEXT_TO_IMAGE_STRENGTH = 0.0
"""Text/image mixing of Versatile Diffusion's dual attention (0 = image only: we predict no text)."""
UNCLIP_NOISE_LEVEL = 0
"""Noise augmentation of the unCLIP image embedding (the pipeline's default)."""

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


def _check_condition(name: str, condition: np.ndarray, shape: tuple[int, ...], what: str) -> None:
    if condition.ndim != len(shape) + 1 or tuple(condition.shape[1:]) != shape:
        raise UserInputError(
            f"Backend {name} needs {what} of shape [n, {', '.join(map(str, shape))}], got "
            f"{tuple(condition.shape)}; predict the feature space of the pipeline's own CLIP"
        )


# --- loading -------------------------------------------------------------------------------


def _weight_files(component: str, library: str) -> tuple[str, ...]:
    base = "model" if library == "transformers" else "diffusion_pytorch_model"
    return (f"{component}/{base}.safetensors", f"{component}/{base}.safetensors.index.json")


def _check_pipeline_dir(
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


def _load_pipeline(pipeline_cls: type, weights: Path, device: str, **given: Any) -> Any:
    """``pipeline_cls`` from ``weights`` (safetensors only, no network) on ``device``; ``given``:
    components passed instead of loaded (None = not needed, left on disk)."""
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    try:
        pipe = pipeline_cls.from_pretrained(
            weights, dtype=dtype, use_safetensors=True, local_files_only=True, **given
        )
    except (OSError, ValueError) as exc:
        raise UserInputError(
            f"Could not load {weights} as a {pipeline_cls.__name__}: {_first_line(exc)}"
        ) from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _load_component(model_cls: type, weights: Path, subfolder: str, device: str) -> Any:
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
        raise UserInputError(f"Could not load {weights / subfolder}: {_first_line(exc)}") from exc


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- Stable Diffusion image variations -------------------------------------------------------


class SDImageVariations:
    """Stable Diffusion conditioned on one CLIP image embedding token."""

    name = "sd-image-variations"
    condition = ("clip", "image_embeds")
    supports_lowlevel = True

    def __init__(self, sampler: LatentSampler) -> None:
        self.sampler = sampler
        self.embed_dim = int(sampler.unet.config.cross_attention_dim)

    def _inputs(
        self, rows: torch.Tensor, generators: list[torch.Generator]
    ) -> tuple[Inputs, Inputs]:
        tokens = rows[:, None, :]
        return {"encoder_hidden_states": tokens}, {
            "encoder_hidden_states": torch.zeros_like(tokens)
        }

    def generate(
        self,
        condition: np.ndarray,
        settings: GenerationSettings,
        lowlevel: np.ndarray | None = None,
    ) -> np.ndarray:
        """Images uint8 [n, H, W, 3] from CLIP image embeddings [n, d] (see the module doc)."""
        _check_condition(self.name, condition, (self.embed_dim,), "CLIP image_embeds")
        return generate_images(self.name, self.sampler, self._inputs, condition, settings, lowlevel)


def load_sd_image_variations(weights: Path | None, device: str = "cpu") -> SDImageVariations:
    """The ``sd-image-variations`` backend from a local StableDiffusionImageVariationPipeline."""
    from diffusers import StableDiffusionImageVariationPipeline

    weights = _check_pipeline_dir(
        "sd-image-variations",
        weights,
        ("StableDiffusionImageVariationPipeline",),
        ("unet/config.json", "vae/config.json", "scheduler/scheduler_config.json"),
        {"unet": "diffusers", "vae": "diffusers"},
    )
    # the embeddings are predicted, so the image encoder (and the safety checker) stay on disk
    pipe = _load_pipeline(
        StableDiffusionImageVariationPipeline,
        weights,
        device,
        image_encoder=None,
        feature_extractor=None,
        safety_checker=None,
    )
    return SDImageVariations(LatentSampler(pipe.unet, pipe.vae, pipe.scheduler.config, device))


# --- Stable unCLIP img2img ----------------------------------------------------------------------


class SDUnCLIP:
    """Stable unCLIP: CLIP image embedding (noise-augmented) as the UNet's class embedding."""

    name = "sd-unclip"
    condition = ("clip", "image_embeds")
    supports_lowlevel = True

    def __init__(self, pipe: Any, sampler: LatentSampler) -> None:
        self.pipe, self.sampler = pipe, sampler
        self.embed_dim = int(pipe.image_normalizer.config.embedding_dim)
        with torch.no_grad():
            prompt, _ = pipe.encode_prompt("", sampler.device, 1, False)
        self.empty_prompt = prompt.float().cpu()
        """[1, n_text_tokens, d_text]: the prompt is empty, as in the pipeline's image-only use."""

    def _inputs(
        self, rows: torch.Tensor, generators: list[torch.Generator]
    ) -> tuple[Inputs, Inputs]:
        noise = item_noise((self.embed_dim,), generators)
        device, dtype = self.sampler.device, self.sampler.dtype
        with torch.no_grad():
            labels = self.pipe.noise_image_embeddings(
                rows.to(device, dtype), UNCLIP_NOISE_LEVEL, noise=noise.to(device, dtype)
            )
        prompt = self.empty_prompt.expand(len(rows), -1, -1)
        cond = {"encoder_hidden_states": prompt, "class_labels": labels}
        uncond = {"encoder_hidden_states": prompt, "class_labels": torch.zeros_like(labels)}
        return cond, uncond

    def generate(
        self,
        condition: np.ndarray,
        settings: GenerationSettings,
        lowlevel: np.ndarray | None = None,
    ) -> np.ndarray:
        """Images uint8 [n, H, W, 3] from CLIP image embeddings [n, d] (see the module doc)."""
        _check_condition(self.name, condition, (self.embed_dim,), "CLIP image_embeds")
        return generate_images(self.name, self.sampler, self._inputs, condition, settings, lowlevel)


def load_sd_unclip(weights: Path | None, device: str = "cpu") -> SDUnCLIP:
    """The ``sd-unclip`` backend from a local StableUnCLIPImg2ImgPipeline directory."""
    from diffusers import StableUnCLIPImg2ImgPipeline

    weights = _check_pipeline_dir(
        "sd-unclip",
        weights,
        ("StableUnCLIPImg2ImgPipeline",),
        (
            "unet/config.json",
            "vae/config.json",
            "scheduler/scheduler_config.json",
            "image_noising_scheduler/scheduler_config.json",
            "image_normalizer/config.json",
            "text_encoder/config.json",
        ),
        {
            "unet": "diffusers",
            "vae": "diffusers",
            "image_normalizer": "diffusers",
            "text_encoder": "transformers",
        },
    )
    pipe = _load_pipeline(
        StableUnCLIPImg2ImgPipeline, weights, device, image_encoder=None, feature_extractor=None
    )
    sampler = LatentSampler(pipe.unet, pipe.vae, pipe.scheduler.config, device)
    return SDUnCLIP(pipe, sampler)


# --- Versatile Diffusion dual-guided -----------------------------------------------------------


class VersatileDualGuided:
    """Versatile Diffusion's image UNet with dual (text | image) attention, image-guided."""

    name = "versatile-diffusion"
    condition = ("clip", "tokens")
    supports_lowlevel = True

    def __init__(self, pipe: Any, sampler: LatentSampler) -> None:
        self.pipe, self.sampler = pipe, sampler
        encoder = pipe.image_encoder
        self.token_shape = (
            (encoder.config.image_size // encoder.config.patch_size) ** 2 + 1,
            int(encoder.config.hidden_size),
        )
        pipe.set_transformer_params(VD_TEXT_TO_IMAGE_STRENGTH, ("text", "image"))
        device = sampler.device
        with torch.no_grad():
            # the pipeline's own text context (empty prompt) and unconditional image context
            self.text = pipe._encode_text_prompt([""], device, 1, False).float().cpu()
            grey = [np.zeros((512, 512, 3)) + 0.5]
            self.uncond_image = pipe._encode_image_prompt(grey, device, 1, False).float().cpu()

    def image_context(self, tokens: torch.Tensor) -> torch.Tensor:
        """Vision last hidden states [n, 257, d_hidden] -> the UNet's image context [n, 257, d]:
        post layer norm, visual projection, divided by the projected class token's norm."""
        encoder = self.pipe.image_encoder
        device, dtype = self.sampler.device, encoder.dtype
        with torch.no_grad():
            x = encoder.vision_model.post_layernorm(tokens.to(device, dtype))
            x = encoder.visual_projection(x)
        return (x / x[:, :1].norm(dim=-1, keepdim=True)).float().cpu()

    def _inputs(
        self, rows: torch.Tensor, generators: list[torch.Generator]
    ) -> tuple[Inputs, Inputs]:
        n = len(rows)
        text = self.text.expand(n, -1, -1)
        cond = torch.cat([text, self.image_context(rows)], dim=1)
        uncond = torch.cat([text, self.uncond_image.expand(n, -1, -1)], dim=1)
        return {"encoder_hidden_states": cond}, {"encoder_hidden_states": uncond}

    def generate(
        self,
        condition: np.ndarray,
        settings: GenerationSettings,
        lowlevel: np.ndarray | None = None,
    ) -> np.ndarray:
        """Images uint8 [n, H, W, 3] from CLIP vision tokens [n, 257, d_hidden]."""
        _check_condition(self.name, condition, self.token_shape, "CLIP vision tokens")
        return generate_images(self.name, self.sampler, self._inputs, condition, settings, lowlevel)


class _MaskTolerantDual(torch.nn.Module):
    """Wraps a DualTransformer2DModel so it accepts the ``encoder_attention_mask`` keyword that
    diffusers' UNet blocks pass and 0.42's DualTransformer2DModel rejects (TypeError; diffusers
    issue #13651). The mask is always None here (no padding mask), so dropping it is exact."""

    def __init__(self, dual: torch.nn.Module) -> None:
        super().__init__()
        self.dual = dual

    def forward(
        self, hidden_states: torch.Tensor, *args: Any, encoder_attention_mask: Any = None, **kw: Any
    ) -> Any:
        if encoder_attention_mask is not None:
            raise ValueError("Versatile Diffusion's dual attention cannot apply an attention mask")
        return self.dual(hidden_states, *args, **kw)


def _tolerate_encoder_mask(unet: torch.nn.Module) -> None:
    from diffusers.models.transformers.dual_transformer_2d import DualTransformer2DModel

    if "encoder_attention_mask" in inspect.signature(DualTransformer2DModel.forward).parameters:
        return  # a diffusers with the fix
    for name, module in list(unet.named_modules()):
        if isinstance(module, DualTransformer2DModel):
            parent, index = name.rsplit(".", 1)
            unet.get_submodule(parent)[int(index)] = _MaskTolerantDual(module)


def load_versatile_diffusion(weights: Path | None, device: str = "cpu") -> VersatileDualGuided:
    """The ``versatile-diffusion`` backend from a local Versatile Diffusion directory."""
    try:
        from diffusers import VersatileDiffusionDualGuidedPipeline
    except ImportError as exc:
        raise UserInputError(
            "Backend versatile-diffusion needs VersatileDiffusionDualGuidedPipeline, which this "
            "diffusers no longer provides (0.42 still has it, deprecated); install diffusers<=0.42"
        ) from exc
    weights = _check_pipeline_dir(
        "versatile-diffusion",
        weights,
        ("VersatileDiffusionPipeline", "VersatileDiffusionDualGuidedPipeline"),
        (
            "image_unet/config.json",
            "text_unet/config.json",
            "vae/config.json",
            "scheduler/scheduler_config.json",
            "image_encoder/config.json",
            "text_encoder/config.json",
            "image_feature_extractor/preprocessor_config.json",
            "tokenizer/tokenizer_config.json",
        ),
        {
            "image_unet": "diffusers",
            "text_unet": "diffusers",
            "vae": "diffusers",
            "image_encoder": "transformers",
            "text_encoder": "transformers",
        },
    )
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from diffusers.pipelines.deprecated.versatile_diffusion.modeling_text_unet import (
        UNetFlatConditionModel,
    )
    from transformers import (
        CLIPImageProcessor,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        CLIPVisionModelWithProjection,
    )

    # Built from its parts: model_index.json names the text UNet's library in ways this diffusers
    # cannot resolve any more (the pipeline moved under pipelines/deprecated).
    parts = {
        "image_unet": UNet2DConditionModel,
        "text_unet": UNetFlatConditionModel,
        "vae": AutoencoderKL,
        "image_encoder": CLIPVisionModelWithProjection,
        "text_encoder": CLIPTextModelWithProjection,
    }
    components = {k: _load_component(cls, weights, k, device) for k, cls in parts.items()}
    try:
        components["tokenizer"] = CLIPTokenizer.from_pretrained(weights / "tokenizer")
        components["image_feature_extractor"] = CLIPImageProcessor.from_pretrained(
            weights / "image_feature_extractor"
        )
    except (OSError, ValueError) as exc:
        raise UserInputError(
            f"Could not load the tokenizer or image processor of {weights}: {_first_line(exc)}"
        ) from exc
    components["scheduler"] = DDIMScheduler.from_pretrained(weights / "scheduler")
    pipe = VersatileDiffusionDualGuidedPipeline(**components).to(device)
    pipe.set_progress_bar_config(disable=True)
    _tolerate_encoder_mask(pipe.image_unet)
    sampler = LatentSampler(pipe.image_unet, pipe.vae, pipe.scheduler.config, device)
    return VersatileDualGuided(pipe, sampler)
