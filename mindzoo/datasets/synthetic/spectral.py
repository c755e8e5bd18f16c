"""Coloured Gaussian noise drawn in the Fourier domain, shared by the sEEG and EEG simulators.

Used by :mod:`mindzoo.datasets.synthetic.ieeg` (1/f^2 background, high-gamma carrier) and
:mod:`mindzoo.datasets.synthetic.eeg` (1/f^2 background).
"""

from __future__ import annotations

import numpy as np


def spectral_noise(
    rng: np.random.Generator, n_rows: int, n_samples: int, amplitude: np.ndarray
) -> np.ndarray:
    """Gaussian noise [row, time] with amplitude spectrum ``amplitude`` [n_samples // 2 + 1],
    unit variance per row: random complex Fourier coefficients and one inverse FFT."""
    from scipy.fft import irfft

    shape = (n_rows, len(amplitude))
    spectrum = rng.standard_normal(shape, dtype=np.float32) + 1j * rng.standard_normal(
        shape, dtype=np.float32
    )
    spectrum *= amplitude.astype(np.float32)
    noise = irfft(spectrum, n=n_samples, axis=1, workers=1)
    noise /= noise.std(axis=1, keepdims=True)
    return noise.astype(np.float32, copy=False)
