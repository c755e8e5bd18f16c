"""Batches for feature extraction whose results do not depend on the thread count.

A CPU network's output for one image can differ in its last bits with the batch's size and the
number of threads (oneDNN parallelises a small batch over its spatial work, a large one over
images). Measured for EfficientNet-Lite0 with torch 2.13 on this project's 2-core machine:
batches of 2, 4 or 8 images give other bits with 1 thread than with 2; batches of 16, 32 and 64
give the same bits with 1 or 2 threads, and the same per image as each other. So a short batch
is padded (repeating its last image) to a multiple of :data:`MIN_ROWS`: a prepare split into
jobs with fewer threads each then writes the bytes of one that extracts everything at once.
"""

from __future__ import annotations

import numpy as np

MIN_ROWS = 16


def padded_batch(images: np.ndarray, start: int, batch_size: int) -> tuple[np.ndarray, int]:
    """``images[start:start + batch_size]``, a short one padded to a multiple of
    :data:`MIN_ROWS` rows (at most ``batch_size``); returns (batch, number of real rows)."""
    batch = images[start : start + batch_size]
    n_real = batch.shape[0]
    rows = min(batch_size, max(MIN_ROWS, -(-n_real // MIN_ROWS) * MIN_ROWS))
    if n_real < rows:
        batch = np.concatenate([batch, np.repeat(batch[-1:], rows - n_real, axis=0)])
    return batch, n_real
