"""``sd-unclip``: Stable unCLIP img2img with a predicted CLIP image embedding.

StableUnCLIPImg2ImgPipeline, e.g. stabilityai/stable-diffusion-2-1-unclip: ``image_embeds`` go
through the pipeline's noise augmentation (normaliser + noising schedule at noise level 0) into
the UNet's class embedding, the empty prompt fills the cross-attention; unconditional = zeros
for the whole class input, as the pipeline does. The pipeline's ``image`` argument is only the
CLIP conditioning image (it has no init-latent path), so the low-level init is ours: encode the
low-level image with the VAE, noise it to the timestep where the last ``strength`` fraction of
the schedule starts, and denoise from there (img2img).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
    item_noise,
    load_pipeline,
)

UNCLIP_NOISE_LEVEL = 0
"""Noise augmentation of the unCLIP image embedding (the pipeline's default)."""


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
        check_condition(self.name, condition, (self.embed_dim,), "CLIP image_embeds")
        return generate_images(self.name, self.sampler, self._inputs, condition, settings, lowlevel)


def load_sd_unclip(weights: Path | None, device: str = "cpu") -> SDUnCLIP:
    """The ``sd-unclip`` backend from a local StableUnCLIPImg2ImgPipeline directory."""
    # the pipeline needs transformers (without it diffusers has only a placeholder class)
    require("transformers", "clip")
    from diffusers import StableUnCLIPImg2ImgPipeline

    weights = check_pipeline_dir(
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
    pipe = load_pipeline(
        StableUnCLIPImg2ImgPipeline, weights, device, image_encoder=None, feature_extractor=None
    )
    sampler = LatentSampler(pipe.unet, pipe.vae, pipe.scheduler.config, device)
    return SDUnCLIP(pipe, sampler)
