"""Voxel noise ceilings from repeated presentations, as defined for the Natural Scenes Dataset.

Allen et al. (2022), Nature Neuroscience, "A massive 7T fMRI dataset to bridge cognitive
neuroscience and artificial intelligence", Methods, "Noise ceiling": z-score each voxel's betas
over all trials, take the noise SD as the root mean (over images) of the across-repeat variance,
the signal SD as sqrt(max(0, 1 - noise_sd^2)), ncsnr = signal_sd / noise_sd, and the ceiling for
responses averaged over n repeats as ncsnr^2 / (ncsnr^2 + 1/n).
"""

from __future__ import annotations

import numpy as np

from mindzoo.errors import UserInputError


def noise_ceiling_snr(betas: np.ndarray) -> np.ndarray:
    """Noise-ceiling SNR (ncsnr) per voxel from betas [n_images, n_reps, n_voxels].

    inf for a voxel whose repeats agree exactly, 0 for a voxel that never changes.
    """
    signal_sd, noise_sd = _signal_and_noise_sd(_check_betas(betas))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(signal_sd > 0, signal_sd / noise_sd, 0.0)


def noise_ceiling(betas: np.ndarray, n_average: int | None = None) -> np.ndarray:
    """Fraction of variance explainable in the average of ``n_average`` repeats, per voxel.

    betas: single-trial responses [n_images, n_reps, n_voxels] (n_reps >= 2; the same number of
    repeats for every image). n_average defaults to n_reps. Returns float64 [n_voxels] in [0, 1]
    (NSD reports the same number times 100, in percent).
    """
    betas = _check_betas(betas)
    n = betas.shape[1] if n_average is None else n_average
    if n < 1:
        raise UserInputError(f"n_average must be a positive number of repeats, got {n_average}")
    signal_sd, noise_sd = _signal_and_noise_sd(betas)
    # ncsnr^2 / (ncsnr^2 + 1/n), written without the division so noise-free voxels give 1
    signal_var, noise_var = signal_sd**2, noise_sd**2 / n
    total = signal_var + noise_var
    return np.divide(signal_var, total, out=np.zeros_like(total), where=total > 0)


def _signal_and_noise_sd(betas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(signal SD, noise SD) per voxel in units of the voxel's SD over all trials."""
    n_images, n_reps, n_voxels = betas.shape
    trials = betas.reshape(n_images * n_reps, n_voxels)
    sd = trials.std(axis=0)
    # a voxel that never changes has neither signal nor noise
    z = (betas - trials.mean(axis=0)) / np.where(sd > 0, sd, np.inf)
    noise_sd = np.sqrt(np.mean(z.var(axis=1, ddof=1), axis=0))
    signal_sd = np.sqrt(np.clip(1.0 - noise_sd**2, 0.0, None))
    signal_sd[sd == 0] = 0.0
    return signal_sd, noise_sd


def _check_betas(betas: np.ndarray) -> np.ndarray:
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 3:
        raise UserInputError(
            f"Expected betas of shape [n_images, n_reps, n_voxels], got {betas.shape}; "
            "group the trials of each repeated image along axis 1"
        )
    if betas.shape[1] < 2:
        raise UserInputError(
            f"Noise ceiling needs at least 2 repeats per image, got {betas.shape[1]}; "
            "use only images shown two or more times"
        )
    if not np.all(np.isfinite(betas)):
        raise UserInputError("Betas contain NaN or inf; drop or fix those voxels first")
    return betas
