"""CLIP image features (projected image embedding + vision tokens) from local weights.

The weights are never downloaded: :func:`load_clip_vision` reads a local directory holding a
transformers ``CLIPVisionModelWithProjection`` (``config.json`` + ``model.safetensors``; a full
``CLIPModel`` checkpoint such as a copy of openai/clip-vit-large-patch14 also works) or a diffusers
pipeline directory, whose ``image_encoder/`` is then used. Pointing it at the pipeline that will
generate the images guarantees that the predicted features live in the space that pipeline
expects.

Preprocessing is CLIP's (as ``CLIPImageProcessor`` does it): bicubic resize of the shortest edge
to the model's input size, centre crop to a square, scale to [0, 1], normalise with the CLIP
mean/std.

As the feature space ``clip`` (``--set features=[...,clip]`` in `prepare`), the weights directory
comes from the environment variable ``MINDZOO_CLIP_WEIGHTS``.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from mindzoo.errors import UserInputError
from mindzoo.extras import require
from mindzoo.features.batching import padded_batch

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
WEIGHTS_ENV = "MINDZOO_CLIP_WEIGHTS"


class ClipVision:
    """A CLIP vision tower with its projection, in eval mode, plus CLIP preprocessing."""

    def __init__(self, model: torch.nn.Module, device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.device = device
        self.image_size = int(model.config.image_size)

    def preprocess(self, images: np.ndarray) -> torch.Tensor:
        """uint8 [n, h, w, 3] -> normalised float32 [n, 3, s, s] (s = the model's input size)."""
        crops = np.stack([self._resize_and_crop(image) for image in images])
        x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        return (x - mean) / std

    def _resize_and_crop(self, image: np.ndarray) -> np.ndarray:
        size = self.image_size
        h, w = image.shape[:2]
        # shortest edge -> size, the other edge truncated like CLIPImageProcessor
        new_h, new_w = (int(size * h / w), size) if w < h else (size, int(size * w / h))
        if (new_h, new_w) != (h, w):
            resized = Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BICUBIC)
            image = np.asarray(resized)
        top, left = (new_h - size) // 2, (new_w - size) // 2
        return image[top : top + size, left : left + size]

    def __call__(self, images: np.ndarray, batch_size: int = 32) -> dict[str, np.ndarray]:
        """CLIP features of uint8 images [n, h, w, 3].

        Returns ``image_embeds``: float32 [n, d_proj], the projected (unnormalised) image
        embedding, and ``tokens``: float32 [n, n_tokens, d_hidden], the vision transformer's last
        hidden state (class token first, then the patch tokens row-major; before the final
        layer norm).
        """
        return self.extract(images, batch_size=batch_size, progress=False)

    def extract(
        self, images: np.ndarray, batch_size: int = 32, progress: bool = True
    ) -> dict[str, np.ndarray]:
        """As ``__call__``, with a progress bar."""
        embeds, tokens = [], []
        starts = range(0, images.shape[0], batch_size)
        for start in tqdm(starts, desc="clip", unit="batch", disable=not progress):
            raw, n_real = padded_batch(images, start, batch_size)  # one shape for all batches
            pixels = self.preprocess(raw).to(self.device)
            with torch.no_grad():
                out = self.model(pixel_values=pixels)
            embeds.append(out.image_embeds[:n_real].float().cpu().numpy())
            tokens.append(out.last_hidden_state[:n_real].float().cpu().numpy())
        return {"image_embeds": np.concatenate(embeds), "tokens": np.concatenate(tokens)}


def load_clip_vision(weights_dir: Path, device: str = "cpu") -> ClipVision:
    """The CLIP vision model (with projection) saved in ``weights_dir`` (see the module doc)."""
    transformers = require("transformers", "clip")
    model_dir = _model_dir(Path(weights_dir))
    model = transformers.CLIPVisionModelWithProjection.from_pretrained(
        model_dir, local_files_only=True, use_safetensors=True
    )
    return ClipVision(model, device)


def _model_dir(weights_dir: Path) -> Path:
    if (weights_dir / "model_index.json").is_file():  # a diffusers pipeline: use its encoder
        weights_dir = weights_dir / "image_encoder"
    for name in ("config.json", "model.safetensors"):
        if not (weights_dir / name).is_file():
            raise UserInputError(
                f"CLIP weights: {weights_dir / name} not found; give a directory with a "
                "CLIPVisionModelWithProjection (config.json + model.safetensors) or a diffusers "
                "pipeline with image_encoder/"
            )
    return weights_dir


@functools.lru_cache(maxsize=1)
def _cached_clip_vision(weights_dir: str, device: str) -> ClipVision:
    return load_clip_vision(Path(weights_dir), device)


def clip_features(
    images: np.ndarray, batch_size: int = 32, progress: bool = True
) -> dict[str, np.ndarray]:
    """The ``clip`` feature space, with weights from ``$MINDZOO_CLIP_WEIGHTS``.

    Returns ``global`` and ``image_embeds`` (the same float32 [n, d_proj] projected embedding;
    ``global`` is the name every feature space has) and ``tokens``: float16
    [n, n_tokens, d_hidden] (half precision to halve the store size).
    """
    weights = os.environ.get(WEIGHTS_ENV)
    if not weights:
        raise UserInputError(
            f"Feature space 'clip' needs local CLIP weights: set {WEIGHTS_ENV}=DIR (a "
            "CLIPVisionModelWithProjection or diffusers pipeline directory), or drop clip from "
            "features"
        )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    features = _cached_clip_vision(weights, device).extract(images, batch_size, progress)
    return {
        "global": features["image_embeds"],
        "image_embeds": features["image_embeds"],
        "tokens": features["tokens"].astype(np.float16),
    }
