"""The interface every diffusion backend follows, and the registry that picks one by name.

A backend turns predicted image features (one row per test item) into images. It declares the
feature space it is conditioned on (``condition``: a store feature space and kind, e.g.
``("efficientnet-lite0", "global")`` or ``("clip-vit-l-14", "image_embeds")``) so `reconstruct`
can check that the checkpoint predicts what the backend needs, and whether it can start from a
predicted low-level image (``supports_lowlevel``).

Backends are built with :func:`load_backend` from a weights directory (``--weights DIR``), so a
backend module is only imported (with diffusers) when it is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from mindzoo.errors import UserInputError


@dataclass(frozen=True)
class GenerationSettings:
    """How to sample: denoising steps, classifier-free guidance scale, seed, and the low-level
    init strength (fraction of the schedule that is re-noised; 1.0 = ignore the init image)."""

    steps: int = 50
    guidance: float = 3.0
    seed: int = 0
    strength: float = 0.75
    batch_size: int = 16


class ReconstructionBackend(Protocol):
    """A loaded diffusion backend."""

    name: str
    condition: tuple[str, str]
    """(feature space, kind) of the conditioning vectors, as stored under ``features/``."""
    supports_lowlevel: bool

    def generate(
        self,
        condition: np.ndarray,
        settings: GenerationSettings,
        lowlevel: np.ndarray | None = None,
    ) -> np.ndarray:
        """Images uint8 [n, H, W, 3] from conditioning vectors [n, ...] (float32).

        ``lowlevel`` (uint8 [n, h, w, 3], any size; resized by the backend) starts denoising
        part-way (``settings.strength``) from these images instead of pure noise. Item ``i``
        uses the generator seeded with ``settings.seed + i``, so results do not depend on the
        batch size or on the other items.
        """
        ...


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 images [n, h, w, 3] -> uint8 [n, size, size, 3] (bilinear; unchanged when equal).

    For backends that take low-level images of any size, and for figures.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise UserInputError(
            f"Expected uint8 images [n, h, w, 3], got {images.dtype} {tuple(images.shape)}"
        )
    if images.shape[1:3] == (size, size):
        return images
    return np.stack(
        [np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in images]
    )


BackendLoader = Callable[[Path | None, str], ReconstructionBackend]
"""``loader(weights_dir, device)``: builds a backend; ``weights_dir`` None = its default."""


@dataclass(frozen=True)
class BackendInfo:
    name: str
    description: str
    module: str
    """Module that defines the loader (imported lazily)."""
    loader: str
    """Name of the loader function in ``module``."""


_BACKENDS: dict[str, BackendInfo] = {}


def register_backend(name: str, description: str, module: str, loader: str) -> None:
    """Announce a backend; its module is imported only by :func:`load_backend`."""
    if name in _BACKENDS:
        raise ValueError(f"Backend '{name}' is already registered")
    _BACKENDS[name] = BackendInfo(name, description, module, loader)


def list_backends() -> list[BackendInfo]:
    """All registered backends, sorted by name."""
    return [_BACKENDS[name] for name in sorted(_BACKENDS)]


def load_backend(
    name: str, weights: Path | None = None, device: str = "cpu"
) -> ReconstructionBackend:
    """Build backend ``name`` from ``weights`` (a local directory); unknown names list the rest."""
    if name not in _BACKENDS:
        available = ", ".join(sorted(_BACKENDS)) or "none"
        raise UserInputError(f"Unknown backend '{name}'; choose one of: {available}")
    info = _BACKENDS[name]
    loader: BackendLoader = getattr(importlib.import_module(info.module), info.loader)
    return loader(None if weights is None else Path(weights), device)
