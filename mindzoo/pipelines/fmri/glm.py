"""The single-trial GLM: HRF-convolved trial regressors, a nuisance basis, LSA and LSS fits.

A run's design is one HRF-convolved regressor per trial plus a cosine drift basis, an intercept
and optional confounds, fit to every voxel at once by least squares:

- ``lsa`` (least-squares-all): one GLM with all trial regressors;
- ``lss`` (least-squares-separate, Mumford et al. 2012): per trial a GLM with that trial and
  one regressor for all the others, solved for all trials and voxels in closed form.

Both first project the nuisance regressors out of the trial regressors (Frisch-Waugh-Lovell),
which leaves the trial betas unchanged and means only the trial columns meet the data. Betas
keep the data's units.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from nilearn.glm.first_level import glover_hrf, spm_hrf
from nilearn.glm.first_level.design_matrix import create_cosine_drift

HRF_KERNELS = {"glover": glover_hrf, "spm": spm_hrf}
# HRF sampling step = TR / this; nilearn's default, so regressors match its design matrices.
_HRF_OVERSAMPLING = 50
# Relative singular value under which a design is treated as rank deficient.
_RANK_TOLERANCE = 1e-8


def trial_regressors(
    onsets: np.ndarray, durations: np.ndarray, n_frames: int, tr: float, hrf_model: str = "glover"
) -> np.ndarray:
    """HRF-convolved boxcar per trial at frame times ``arange(n_frames) * tr``; ``[frame, trial]``.

    Onsets and durations in s; a zero duration is one HRF sample long, as in nilearn. Uses the
    HRF's running sum, so all trials cost one interpolation instead of one convolution each;
    the result matches ``nilearn.glm.first_level.compute_regressor``.
    """
    kernel = HRF_KERNELS[hrf_model](tr, oversampling=_HRF_OVERSAMPLING)
    step = tr / _HRF_OVERSAMPLING
    step_response = np.cumsum(kernel)
    samples = np.arange(len(kernel), dtype=float)
    lag = (np.arange(n_frames)[:, None] * tr - np.asarray(onsets)[None, :]) / step
    width = np.maximum(np.asarray(durations), step)[None, :] / step
    rising = np.interp(lag, samples, step_response, left=0.0)
    falling = np.interp(lag - width, samples, step_response, left=0.0)
    return rising - falling


def nuisance_regressors(
    n_frames: int, tr: float, high_pass_hz: float, confounds: np.ndarray | None = None
) -> np.ndarray:
    """Cosine drift basis up to ``high_pass_hz``, an intercept and confounds; ``[frame, k]``."""
    drift = create_cosine_drift(high_pass_hz, np.arange(n_frames) * tr)
    if confounds is None:
        return drift
    return np.hstack([drift, confounds])


def fit_single_trial_betas(
    bold: np.ndarray, trials: np.ndarray, nuisance: np.ndarray, method: Literal["lsa", "lss"]
) -> np.ndarray:
    """Single-trial betas, float32 ``[trial, voxel]``, for all voxels at once.

    ``bold`` is float32 ``[frame, voxel]``, ``trials`` ``[frame, trial]`` and ``nuisance``
    ``[frame, k]``. Raises ``numpy.linalg.LinAlgError`` when the trials cannot be separated.
    """
    trials = trials - nuisance @ np.linalg.lstsq(nuisance, trials, rcond=None)[0]
    singular = np.linalg.svd(trials, compute_uv=False)
    if singular[0] <= 0:
        raise np.linalg.LinAlgError("every trial regressor lies in the nuisance space")
    if method == "lsa":
        if singular[-1] < _RANK_TOLERANCE * singular[0]:
            raise np.linalg.LinAlgError("trial regressors are collinear")
        return np.linalg.pinv(trials).astype(np.float32) @ bold
    return _least_squares_separate(bold, trials)


def _least_squares_separate(bold: np.ndarray, trials: np.ndarray) -> np.ndarray:
    """LSS in closed form from ``trials.T @ bold`` and the trials' Gram matrix.

    For trial i the model is [x_i, o_i] with o_i = sum of the other trials, so its 2x2 normal
    equations only need x_i.y, o_i.y = total.y - x_i.y and sums of Gram entries.
    """
    trial_dot_bold = (trials.T.astype(np.float32) @ bold).astype(np.float64)
    gram = trials.T @ trials
    own = np.diag(gram)
    if len(own) == 1:
        return (trial_dot_bold / own[:, None]).astype(np.float32)
    row_sums = gram.sum(axis=1)
    cross = row_sums - own
    others = gram.sum() - 2 * row_sums + own
    determinant = own * others - cross**2
    if (determinant <= _RANK_TOLERANCE * own * others).any():
        raise np.linalg.LinAlgError("a trial is collinear with the sum of the others")
    others_dot_bold = trial_dot_bold.sum(axis=0, keepdims=True) - trial_dot_bold
    betas = others[:, None] * trial_dot_bold - cross[:, None] * others_dot_bold
    return (betas / determinant[:, None]).astype(np.float32)
