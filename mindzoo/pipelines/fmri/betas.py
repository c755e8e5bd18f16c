"""The prepared result: single-trial betas per subject, the dataset, per-session z-scoring.

After all runs, each session's betas are z-scored per voxel with the mean and standard deviation
of that session's training trials (all of its trials when it has none), so test data never sets
the normalisation where it can be avoided. Betas keep the data's units before z-scoring. The NSD
import (:mod:`mindzoo.pipelines.nsd`) returns the same result, z-scored the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass
class SubjectBetas:
    """One subject's single-trial betas and what their axes mean.

    ``betas`` is float32 ``[trial, voxel]``; ``trials`` has one row per trial in chronological
    order (columns ``stimulus_index``, ``stimulus_id``, ``session``, ``run``, ``repetition``,
    ``split``, ``label``, ``onset`` in s); ``voxel_ijk`` int32 ``[voxel, 3]`` indexes the
    ``volume_shape`` grid and ``voxel_xyz`` float32 ``[voxel, 3]`` is ``affine @ ijk`` in mm in
    ``space``; ``roi_labels`` names each voxel's ROI. ``runs_without_trials`` names the runs
    left out because no events row of theirs names a stimulus (prepare's summary counts them).
    """

    subject: str
    betas: np.ndarray
    trials: pd.DataFrame
    voxel_ijk: np.ndarray
    voxel_xyz: np.ndarray
    roi_labels: np.ndarray
    affine: np.ndarray
    volume_shape: tuple[int, int, int]
    space: str
    runs_without_trials: tuple[str, ...] = ()  # left out: no events row names a stimulus


@dataclass
class PreparedFMRI:
    """Everything the store needs from a BIDS fMRI dataset.

    ``stimulus_ids``/``stimulus_labels``/``stimulus_splits`` are indexed by the trials'
    ``stimulus_index``; ``images`` is uint8 ``[n_stimuli, h, w, 3]``, or ``None`` when prepared
    without images; ``source_files`` lists every input file read.
    """

    subjects: dict[str, SubjectBetas]
    stimulus_ids: list[str]
    stimulus_labels: list[str]
    stimulus_splits: list[str]
    images: np.ndarray | None
    source_files: list[Path]


def zscore_by_session(betas: np.ndarray, sessions: np.ndarray, splits: np.ndarray) -> np.ndarray:
    """Z-score ``[trial, voxel]`` betas per session with that session's training-trial stats.

    A session without training trials uses all of its trials; a voxel with zero spread is
    only centred.
    """
    scored = np.empty_like(betas, dtype=np.float32)
    for session in np.unique(sessions):
        rows = sessions == session
        reference = rows & (splits == "train")
        if not reference.any():
            reference = rows
        mean = betas[reference].mean(axis=0)
        std = betas[reference].std(axis=0)
        std[std == 0] = 1.0
        scored[rows] = (betas[rows] - mean) / std
    return scored
