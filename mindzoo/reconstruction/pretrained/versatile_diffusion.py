"""``versatile-diffusion``: Versatile Diffusion dual-guided, image-guided by predicted CLIP tokens.

VersatileDiffusionDualGuidedPipeline, deprecated in diffusers but still shipped in 0.42:
condition ``("clip", "tokens")`` [n, 257, d_hidden] (the last hidden state); the pipeline's
post layer norm, visual projection and normalisation by the class token's norm turn them into
its image context. We predict no text, so the text branch gets the empty prompt with mixing
weight ``VD_TEXT_TO_IMAGE_STRENGTH`` = 0 (pure image guidance); unconditional image context =
the pipeline's own (its grey image). Its own ``__call__`` crashes in diffusers 0.42
(DualTransformer2DModel rejects the UNet's encoder_attention_mask, diffusers issue #13651); the
loader wraps those blocks so the mask (always None) is dropped.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mindzoo.errors import UserInputError
from mindzoo.extras import require
from mindzoo.reconstruction.base import GenerationSettings
from mindzoo.reconstruction.pretrained.common import (
    Inputs,
    LatentSampler,
    check_condition,
    check_pipeline_dir,
    first_line,
    generate_images,
    load_component,
)

VD_TEXT_TO_IMAGE_STRENGTH = 0.0
"""Text/image mixing of Versatile Diffusion's dual attention (0 = image only: we predict no text)."""


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
        check_condition(self.name, condition, self.token_shape, "CLIP vision tokens")
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
    weights = check_pipeline_dir(
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

    transformers = require("transformers", "clip")

    # Built from its parts: model_index.json names the text UNet's library in ways this diffusers
    # cannot resolve any more (the pipeline moved under pipelines/deprecated).
    parts = {
        "image_unet": UNet2DConditionModel,
        "text_unet": UNetFlatConditionModel,
        "vae": AutoencoderKL,
        "image_encoder": transformers.CLIPVisionModelWithProjection,
        "text_encoder": transformers.CLIPTextModelWithProjection,
    }
    components = {k: load_component(cls, weights, k, device) for k, cls in parts.items()}
    try:
        components["tokenizer"] = transformers.CLIPTokenizer.from_pretrained(weights / "tokenizer")
        components["image_feature_extractor"] = transformers.CLIPImageProcessor.from_pretrained(
            weights / "image_feature_extractor"
        )
    except (OSError, ValueError) as exc:
        raise UserInputError(
            f"Could not load the tokenizer or image processor of {weights}: {first_line(exc)}"
        ) from exc
    components["scheduler"] = DDIMScheduler.from_pretrained(weights / "scheduler")
    pipe = VersatileDiffusionDualGuidedPipeline(**components).to(device)
    pipe.set_progress_bar_config(disable=True)
    _tolerate_encoder_mask(pipe.image_unet)
    sampler = LatentSampler(pipe.image_unet, pipe.vae, pipe.scheduler.config, device)
    return VersatileDualGuided(pipe, sampler)
