"""The NSD import (:func:`prepare_nsd_mirror`): plans, betas, z-scoring, conventions, images.

Each session is z-scored per voxel with the statistics of its training trials
(:func:`mindzoo.pipelines.fmri.betas.zscore_by_session`); only the images the trials show are
read from ``imgBrick``, a batch at a time. Subjects are named ``sub-XX``.

Conventions: ``single-trial`` keeps every trial (MindEye2; average the test repeats when
evaluating). ``mindeye1-averaged`` (MindEye1/MindBridge) averages the z-scored repetitions of
each image: train = every non-shared image with the repeats it has, test = the shared images
the subject saw all 3 times in the imported sessions (982 for subj01 in the first 37
sessions); shared images seen fewer times are dropped.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from mindzoo.errors import UserInputError
from mindzoo.pipelines.fmri.betas import PreparedFMRI, SubjectBetas, zscore_by_session
from mindzoo.pipelines.nsd.betas import load_betas
from mindzoo.pipelines.nsd.config import NSDConfig
from mindzoo.pipelines.nsd.mirror import (
    MAX_REPEATS,
    STIMULI,
    Mirror,
    read_expdesign,
    read_stim_info,
)
from mindzoo.pipelines.nsd.subjects import SubjectPlan, plan_subject, select_subjects

_IMAGE_BATCH = 64


def prepare_nsd_mirror(root: Path | str, config: NSDConfig, progress: bool = True) -> PreparedFMRI:
    """Z-scored NSD betas of the chosen subjects and sessions from the NSD mirror at ``root``.

    Checks every file the import needs (and that the design, the stimulus table and the beta
    files agree) before reading any betas, so a bad mirror fails in seconds with a one-line
    :class:`UserInputError` naming the NSD path it expects.
    """
    mirror = Mirror(Path(root))
    design = read_expdesign(mirror)
    info = read_stim_info(mirror, design, config.label_column)
    subjects = select_subjects(mirror, design, config)
    plans = [plan_subject(mirror, design, info, subject, config) for subject in subjects]
    stimuli_path = mirror.require(STIMULI) if config.load_images else None

    betas, tables = {}, {}
    n_files = sum(len(plan.files) * len(plan.files[0]) for plan in plans)
    with tqdm(total=n_files, desc="NSD betas", unit="file", disable=not progress) as bar:
        for plan in plans:
            betas[plan.subject], tables[plan.subject] = _subject_betas(plan, config, bar)

    nsd_ids = np.unique(np.concatenate([table["nsd_id"].to_numpy() for table in tables.values()]))
    shared = set(design.shared_ids.tolist())
    labels = _labels(info, nsd_ids, config.label_column)
    images = None
    if stimuli_path is not None:
        images = _read_images(stimuli_path, nsd_ids, config.image_size, progress)
    return PreparedFMRI(
        subjects={
            _subject_name(plan.subject): SubjectBetas(
                subject=_subject_name(plan.subject),
                betas=betas[plan.subject],
                trials=_finish_table(tables[plan.subject], nsd_ids, labels),
                voxel_ijk=plan.region.ijk,
                voxel_xyz=plan.region.xyz,
                roi_labels=plan.region.roi_labels,
                affine=plan.region.affine,
                volume_shape=plan.region.shape,
                space=config.space,
            )
            for plan in plans
        },
        stimulus_ids=[stimulus_id(nsd_id) for nsd_id in nsd_ids],
        stimulus_labels=labels,
        stimulus_splits=["test" if nsd_id in shared else "train" for nsd_id in nsd_ids],
        images=images,
        source_files=list(dict.fromkeys(mirror.sources)),
    )


def _subject_betas(
    plan: SubjectPlan, config: NSDConfig, bar: tqdm
) -> tuple[np.ndarray, pd.DataFrame]:
    """float32 betas ``[row, voxel]`` of one subject, z-scored and in the chosen convention,
    with their trial rows."""
    betas = load_betas(plan, config, bar)
    table = plan.trials
    if config.zscore == "session":
        betas = zscore_by_session(betas, table["session"].to_numpy(), table["split"].to_numpy())
    if config.convention == "mindeye1-averaged":
        betas, table = _average_repeats(betas, table)
    return np.ascontiguousarray(betas, dtype=np.float32), table


def stimulus_id(nsd_id: int) -> str:
    """``nsd-NNNNN`` for the 0-based 73k image number (``nsdId``, row of ``imgBrick``)."""
    return f"nsd-{int(nsd_id):05d}"


def _subject_name(subject: int) -> str:
    return f"sub-{subject:02d}"


# --- conventions and the stimulus table ------------------------------------------------------


def _average_repeats(betas: np.ndarray, trials: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    """MindEye1/MindBridge: one row per image, the mean of its (z-scored) repetitions.

    Test keeps only shared images with all ``MAX_REPEATS`` repetitions; rows follow the first
    presentation, whose session and run they keep.
    """
    n_repeats = trials.groupby("nsd_id")["nsd_trial"].transform("size").to_numpy()
    keep = (trials["split"].to_numpy() == "train") | (n_repeats == MAX_REPEATS)
    kept = trials[keep]
    codes, firsts = pd.factorize(kept["nsd_id"])  # in order of first presentation
    sums = np.zeros((len(firsts), betas.shape[1]), dtype=np.float64)
    np.add.at(sums, codes, betas[keep])
    counts = np.bincount(codes, minlength=len(firsts))
    table = kept.drop_duplicates("nsd_id").reset_index(drop=True)
    table["repetition"] = 0
    table["n_repeats"] = counts
    return (sums / counts[:, None]).astype(np.float32), table


def _labels(info: pd.DataFrame, nsd_ids: np.ndarray, column: str | None) -> list[str]:
    if column is None:
        return [""] * len(nsd_ids)
    values = info[column].reindex(nsd_ids)
    return ["" if pd.isna(value) else str(value) for value in values]


def _finish_table(trials: pd.DataFrame, nsd_ids: np.ndarray, labels: list[str]) -> pd.DataFrame:
    """The store's trial columns (see :class:`SubjectBetas`) plus ``nsd_trial``/``nsd_id``."""
    index = np.searchsorted(nsd_ids, trials["nsd_id"].to_numpy())
    table = pd.DataFrame(
        {
            "stimulus_index": index.astype(np.int64),
            "stimulus_id": [stimulus_id(nsd_id) for nsd_id in trials["nsd_id"]],
            "session": trials["session"].to_numpy(dtype=np.int64),
            "run": trials["run"].to_numpy(dtype=np.int64),
            "repetition": trials["repetition"].to_numpy(dtype=np.int64),
            "split": trials["split"].to_numpy(dtype=object),
            "label": [labels[i] for i in index],
            "onset": np.full(len(trials), np.nan),  # NSD's betas come without trial onsets
            "nsd_trial": trials["nsd_trial"].to_numpy(dtype=np.int64),
            "nsd_id": trials["nsd_id"].to_numpy(dtype=np.int64),
        }
    )
    if "n_repeats" in trials.columns:
        table["n_repeats"] = trials["n_repeats"].to_numpy(dtype=np.int64)
    return table


def _read_images(
    path: Path, nsd_ids: np.ndarray, image_size: int | None, progress: bool
) -> np.ndarray:
    """uint8 ``[n, h, w, 3]`` rows ``nsd_ids`` (sorted) of ``imgBrick``, optionally resized."""
    with h5py.File(path, "r") as file:
        if "imgBrick" not in file:
            raise UserInputError(f"{STIMULI} has no dataset 'imgBrick'; it is not NSD's file")
        brick = file["imgBrick"]
        if brick.ndim != 4 or brick.shape[3] != 3 or brick.dtype != np.uint8:
            raise UserInputError(
                f"{STIMULI}: imgBrick is {brick.dtype} {brick.shape}, expected uint8 "
                "[73000, 425, 425, 3]"
            )
        if len(nsd_ids) and nsd_ids[-1] >= brick.shape[0]:
            raise UserInputError(
                f"{STIMULI} has {brick.shape[0]} images but the trials show nsdId "
                f"{nsd_ids[-1]}; use the stimulus file of the NSD release"
            )
        height, width = (image_size, image_size) if image_size else brick.shape[1:3]
        images = np.empty((len(nsd_ids), height, width, 3), dtype=np.uint8)
        starts = range(0, len(nsd_ids), _IMAGE_BATCH)
        for start in tqdm(starts, desc="NSD images", unit="batch", disable=not progress):
            batch = brick[nsd_ids[start : start + _IMAGE_BATCH]]
            if image_size:
                batch = [
                    np.asarray(
                        Image.fromarray(image).resize(
                            (image_size, image_size), Image.Resampling.BICUBIC
                        )
                    )
                    for image in batch
                ]
            images[start : start + len(batch)] = batch
    return images
