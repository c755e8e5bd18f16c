"""The `pixels` feature space: the image itself, flattened; a baseline target and metric space."""

from __future__ import annotations

import numpy as np


def pixel_features(
    images: np.ndarray, batch_size: int = 64, progress: bool = True
) -> dict[str, np.ndarray]:
    """uint8 images [n, h, w, 3] -> ``global``: float32 [n, h*w*3] in [0, 1] (row-major, RGB last).

    ``batch_size`` and ``progress`` are accepted for a uniform feature-space signature; the
    conversion is a single vectorised step.
    """
    n = images.shape[0]
    return {"global": images.reshape(n, -1).astype(np.float32) / np.float32(255.0)}
