"""GPU check: images/s of a full-size Stable Diffusion image-variation UNet at 512 x 512, fp16.

Builds the SD 1.x UNet (the one lambdalabs/sd-image-variations-diffusers fine-tunes: blocks
320/640/1280/1280, 2 layers per block, 8 heads, cross-attention dim 768 = one CLIP ViT-L/14 image
embedding token, 64 x 64 latents) and the SD VAE from config with random weights (no downloads),
then measures, after a warm-up:

1. ``unet``: the denoising loop alone, ``--steps`` UNet evaluations on ``2 x --batch`` latents
   (classifier-free guidance doubles the batch) -> images/s and UNet it/s;
2. ``generate``: our ``sd-image-variations`` backend end to end (DDIM loop + VAE decode to uint8)
   on random conditioning embeddings -> images/s, and whether the images are finite (random
   fp16 weights can overflow; then the timing still holds but say so).

    python bench/sd_unet_gpu.py [--steps 20] [--batch 8] [--out bench/results/sd_unet_gpu.json]
    python bench/sd_unet_gpu.py --smoke     # tiny config on CPU: checks the script, no numbers

Without CUDA (and without ``--smoke``) it exits with a message and status 2.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

SD_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=(
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    attention_head_dim=8,
    cross_attention_dim=768,
)
SD_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    sample_size=512,
)
SMOKE_UNET = dict(
    SD_UNET,
    sample_size=8,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 64),
    layers_per_block=1,
    cross_attention_dim=32,
)
SMOKE_VAE = dict(
    SD_VAE,
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    block_out_channels=(32, 64),
    layers_per_block=1,
    sample_size=16,
)
# SD 1.x's scheduler (scaled-linear betas); the backend samples with DDIM built from it
SD_SCHEDULER = dict(
    beta_schedule="scaled_linear",
    beta_start=0.00085,
    beta_end=0.012,
    num_train_timesteps=1000,
    set_alpha_to_one=False,
    steps_offset=1,
)


def build_backend(smoke: bool, device: str):
    """Our sd-image-variations backend around a random-weight UNet + VAE built from config."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from mindzoo.reconstruction.pretrained.common import LatentSampler
    from mindzoo.reconstruction.pretrained.sd_image_variations import SDImageVariations

    dtype = torch.float32 if smoke else torch.float16
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**(SMOKE_UNET if smoke else SD_UNET)).to(device, dtype).eval()
    vae = AutoencoderKL(**(SMOKE_VAE if smoke else SD_VAE)).to(device, dtype).eval()
    return SDImageVariations(LatentSampler(unet, vae, SD_SCHEDULER, device))


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_unet(backend, batch: int, steps: int, device: str) -> dict:
    """Seconds for ``steps`` guided UNet evaluations (batch doubled), as the sampler runs them."""
    sampler = backend.sampler
    unet = sampler.unet
    latents = torch.randn(2 * batch, *sampler.latent_shape, device=device, dtype=sampler.dtype)
    context = torch.randn(2 * batch, 1, backend.embed_dim, device=device, dtype=sampler.dtype)
    with torch.no_grad():
        unet(latents, 999, encoder_hidden_states=context)  # warm-up (kernels, allocator)
        sync(device)
        start = time.perf_counter()
        for t in torch.linspace(999, 1, steps).long():
            unet(latents, t.to(device), encoder_hidden_states=context)
        sync(device)
    seconds = time.perf_counter() - start
    return {
        "seconds": round(seconds, 3),
        "unet_it_per_s": round(steps / seconds, 3),
        "images_per_s": round(batch / seconds, 3),
    }


def time_generate(backend, batch: int, steps: int, guidance: float, device: str) -> dict:
    """Seconds for the backend's generate() on ``batch`` random embeddings, after a warm-up."""
    from mindzoo.reconstruction.base import GenerationSettings

    condition = np.random.default_rng(0).normal(size=(batch, backend.embed_dim))
    condition = condition.astype(np.float32)
    warm = GenerationSettings(steps=2, guidance=guidance, batch_size=batch)
    backend.generate(condition, warm)
    settings = GenerationSettings(steps=steps, guidance=guidance, batch_size=batch)
    sync(device)
    start = time.perf_counter()
    images = backend.generate(condition, settings)
    sync(device)
    seconds = time.perf_counter() - start
    return {
        "seconds": round(seconds, 3),
        "images_per_s": round(batch / seconds, 3),
        "image_shape": list(images.shape[1:]),
        "images_vary": bool(images.std() > 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--smoke", action="store_true", help="tiny config on CPU (no numbers)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/sd_unet_gpu.json"))
    args = parser.parse_args()
    if args.smoke:
        device = "cpu"
        torch.set_num_threads(1)
    elif torch.cuda.is_available():
        device = "cuda"
    else:
        print(
            "bench/sd_unet_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False); it "
            "builds a full-size SD UNet in fp16, which is not measured on CPU. Use --smoke to "
            "check the script on CPU.",
            file=sys.stderr,
        )
        sys.exit(2)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    backend = build_backend(args.smoke, device)
    n_params = sum(p.numel() for p in backend.sampler.unet.parameters())
    result = {
        "what": "random-weight SD 1.x image-variation UNet (+ SD VAE) built from config",
        "smoke": args.smoke,
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor(),
        "dtype": str(backend.sampler.dtype),
        "resolution": list(backend.sampler.image_size),
        "unet_parameters_millions": round(n_params / 1e6, 1),
        "steps": args.steps,
        "batch": args.batch,
        "guidance": args.guidance,
        "torch": torch.__version__,
        "diffusers": __import__("diffusers").__version__,
        "unet": time_unet(backend, args.batch, args.steps, device),
        "generate": time_generate(backend, args.batch, args.steps, args.guidance, device),
    }
    if device == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
