"""The `pixels` feature space: the image itself; a baseline target, a metric space, and the
low-level target (``lowres``) that reconstruction starts denoising from."""

from __future__ import annotations

import numpy as np
from PIL import Image

LOWRES_SIZE = 28
"""Side of the ``lowres`` image: 7 x 7 patches of 4 x 4 pixels, one per brain-it query token."""


def pixel_features(
    images: np.ndarray, batch_size: int = 64, progress: bool = True
) -> dict[str, np.ndarray]:
    """uint8 images [n, h, w, 3] -> two kinds, float32 in [0, 1]:

    - ``global``: [n, h*w*3], the image flattened (row-major, RGB last);
    - ``lowres``: [n, 28, 28, 3], the image box-filtered (area average) to 28 x 28 pixels.

    ``batch_size`` and ``progress`` are accepted for a uniform feature-space signature.
    """
    n = images.shape[0]
    lowres = (
        np.stack(
            [
                np.asarray(
                    Image.fromarray(image).resize((LOWRES_SIZE, LOWRES_SIZE), Image.Resampling.BOX)
                )
                for image in images
            ]
        )
        if n
        else np.zeros((0, LOWRES_SIZE, LOWRES_SIZE, 3), dtype=np.uint8)
    )
    return {
        "global": images.reshape(n, -1).astype(np.float32) / np.float32(255.0),
        "lowres": lowres.astype(np.float32) / np.float32(255.0),
    }
