"""Tiny random-weight diffusers pipelines and CLIP encoders, saved like real local weights.

Sizes follow diffusers' own fast tests, shrunk further (8-channel groups, one layer per block)
so that building, saving, loading and a 2-step generation take well under a second each.
Images come out at 16 x 16 (8 x 8 latents, VAE scale factor 2).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

EMBED_DIM = 16
LATENT_SIZE = 8
VD_TOKENS = 257  # Versatile Diffusion's dual attention hard-codes 257 image tokens (16 x 16 + 1)


def clip_vision(image_size: int = 16, patch_size: int = 4, hidden: int = 16, seed: int = 0):
    """A CLIPVisionModelWithProjection with random weights (projection dim EMBED_DIM)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        hidden_size=hidden,
        projection_dim=EMBED_DIM,
        intermediate_size=32,
        num_attention_heads=2,
        num_hidden_layers=2,
        image_size=image_size,
        patch_size=patch_size,
    )
    return CLIPVisionModelWithProjection(config).eval()


def _unet(seed: int, flat: bool = False, **extra):
    from diffusers import UNet2DConditionModel
    from diffusers.pipelines.deprecated.versatile_diffusion.modeling_text_unet import (
        UNetFlatConditionModel,
    )

    torch.manual_seed(seed)
    kind = "Flat" if flat else "2D"
    config = dict(
        sample_size=LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        down_block_types=(f"CrossAttnDownBlock{kind}", f"DownBlock{kind}"),
        up_block_types=(f"UpBlock{kind}", f"CrossAttnUpBlock{kind}"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        attention_head_dim=4,
        cross_attention_dim=EMBED_DIM,
    )
    config.update(extra)
    return (UNetFlatConditionModel if flat else UNet2DConditionModel)(**config)


def _vae(seed: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=8,
        latent_channels=4,
        sample_size=2 * LATENT_SIZE,
    )
    # like SD's 0.18215: scale latents of images to unit variance, the diffusion's noise scale
    images = torch.rand(
        4, 3, 2 * LATENT_SIZE, 2 * LATENT_SIZE, generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        spread = vae.encode(images * 2 - 1).latent_dist.mean.std().item()
    vae.register_to_config(scaling_factor=1.0 / spread)
    return vae


def _sd_scheduler(prediction_type: str = "epsilon"):
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type=prediction_type,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def _tokenizer(tmp: Path, max_length: int):
    """A CLIP tokenizer with a 4-entry vocabulary: enough to encode the empty prompt offline."""
    from transformers import CLIPTokenizer

    tmp.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2, "a</w>": 3}
    (tmp / "vocab.json").write_text(json.dumps(vocab))
    (tmp / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(
        vocab_file=str(tmp / "vocab.json"),
        merges_file=str(tmp / "merges.txt"),
        model_max_length=max_length,
    )


def _text_config(max_length: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        vocab_size=8,
        hidden_size=EMBED_DIM,
        projection_dim=EMBED_DIM,
        intermediate_size=32,
        num_attention_heads=2,
        num_hidden_layers=2,
        max_position_embeddings=max_length,
    )


def _feature_extractor(size: int):
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    )


def save_sd_image_variations(out: Path, seed: int = 0) -> Path:
    """A tiny StableDiffusionImageVariationPipeline saved to ``out``."""
    from diffusers import PNDMScheduler, StableDiffusionImageVariationPipeline

    pipe = StableDiffusionImageVariationPipeline(
        vae=_vae(seed),
        image_encoder=clip_vision(seed=seed),
        unet=_unet(seed),
        scheduler=PNDMScheduler(skip_prk_steps=True),
        safety_checker=None,
        feature_extractor=_feature_extractor(16),
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def save_sd_unclip(out: Path, seed: int = 0) -> Path:
    """A tiny StableUnCLIPImg2ImgPipeline (v-prediction, like SD 2.1 unCLIP) saved to ``out``."""
    from diffusers import DDPMScheduler, StableUnCLIPImg2ImgPipeline
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import (
        StableUnCLIPImageNormalizer,
    )
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    normalizer = StableUnCLIPImageNormalizer(embedding_dim=EMBED_DIM)
    with torch.no_grad():  # a non-trivial normaliser, so scale/unscale are exercised
        normalizer.mean.normal_(0, 0.1)
        normalizer.std.uniform_(0.5, 1.5)
    max_length = 8
    pipe = StableUnCLIPImg2ImgPipeline(
        feature_extractor=_feature_extractor(16),
        image_encoder=clip_vision(seed=seed),
        image_normalizer=normalizer,
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        tokenizer=_tokenizer(out.parent / f"{out.name}-tok", max_length),
        text_encoder=CLIPTextModel(_text_config(max_length)).eval(),
        unet=_unet(
            seed,
            class_embed_type="projection",
            projection_class_embeddings_input_dim=2 * EMBED_DIM,
        ),
        scheduler=_sd_scheduler("v_prediction"),
        vae=_vae(seed),
    )
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def save_versatile_diffusion(out: Path, seed: int = 0) -> Path:
    """A tiny VersatileDiffusionDualGuidedPipeline (257 image tokens) saved to ``out``."""
    from diffusers import VersatileDiffusionDualGuidedPipeline
    from transformers import CLIPTextModelWithProjection

    max_length = 8
    pipe = VersatileDiffusionDualGuidedPipeline(
        tokenizer=_tokenizer(out.parent / f"{out.name}-tok", max_length),
        image_feature_extractor=_feature_extractor(32),
        text_encoder=CLIPTextModelWithProjection(_text_config(max_length)).eval(),
        image_encoder=clip_vision(image_size=32, patch_size=2, seed=seed),
        image_unet=_unet(seed),
        text_unet=_unet(seed + 1, flat=True),
        vae=_vae(seed),
        scheduler=_sd_scheduler(),
    )
    # saved as the published checkpoint is: plain image UNet, dual attention built when loading
    pipe._revert_dual_attention()
    pipe.save_pretrained(out, safe_serialization=True)
    return out
