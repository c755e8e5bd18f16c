"""``sd-image-variations``: Stable Diffusion conditioned on one predicted CLIP image embedding.

StableDiffusionImageVariationPipeline, e.g. a copy of lambdalabs/sd-image-variations-diffusers:
condition ``("clip", "image_embeds")`` [n, d] is the single cross-attention token; the
unconditional token is zeros, as the pipeline does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mindzoo.extras import require
from mindzoo.reconstruction.base import GenerationSettings
from mindzoo.reconstruction.pretrained.common import (
    Inputs,
    LatentSampler,
    check_condition,
    check_pipeline_dir,
    generate_images,
    load_pipeline,
)


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
        check_condition(self.name, condition, (self.embed_dim,), "CLIP image_embeds")
        return generate_images(self.name, self.sampler, self._inputs, condition, settings, lowlevel)


def load_sd_image_variations(weights: Path | None, device: str = "cpu") -> SDImageVariations:
    """The ``sd-image-variations`` backend from a local StableDiffusionImageVariationPipeline."""
    # the pipeline needs transformers (without it diffusers has only a placeholder class)
    require("transformers", "clip")
    from diffusers import StableDiffusionImageVariationPipeline

    weights = check_pipeline_dir(
        "sd-image-variations",
        weights,
        ("StableDiffusionImageVariationPipeline",),
        ("unet/config.json", "vae/config.json", "scheduler/scheduler_config.json"),
        {"unet": "diffusers", "vae": "diffusers"},
    )
    # the embeddings are predicted, so the image encoder (and the safety checker) stay on disk
    pipe = load_pipeline(
        StableDiffusionImageVariationPipeline,
        weights,
        device,
        image_encoder=None,
        feature_extractor=None,
        safety_checker=None,
    )
    return SDImageVariations(LatentSampler(pipe.unet, pipe.vae, pipe.scheduler.config, device))
