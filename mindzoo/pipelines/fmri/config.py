"""Settings of the BIDS fMRI pipeline (:class:`FMRIPipelineConfig`) and the split names.

Folder settings (``derivatives_dir``, ``stimuli_dir``, ``roi_mask``) are relative to the dataset
root or absolute (:func:`under_root`). Split names are train/val/test; ``training``,
``validation`` and ``testing`` are accepted for them (:func:`split_name`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator

from mindzoo.pipelines.fmri.glm import HRF_KERNELS

SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"training": "train", "validation": "val", "testing": "test"}


def split_name(value: str) -> str:
    return _SPLIT_ALIASES.get(value.lower(), value.lower())


class FMRIPipelineConfig(BaseModel):
    """Options of the BIDS fMRI pipeline (all names as ``--set key=value`` takes them)."""

    model_config = ConfigDict(extra="forbid")

    input: Literal["raw", "fmriprep"] = "raw"
    """``raw``: the dataset's ``*_bold.nii[.gz]``; ``fmriprep``: fMRIPrep's preprocessed bold in
    ``space`` under ``derivatives_dir``, with its brain masks and confounds (events and sidecars
    still from the raw dataset)."""
    derivatives_dir: str = "derivatives/fmriprep"
    """fMRIPrep's output folder (``input=fmriprep``), relative to the dataset root or absolute."""
    space: str = "T1w"
    """fMRIPrep output space (``input=fmriprep``): ``T1w``, ``MNI152NLin2009cAsym``, or with a
    resolution as fMRIPrep's ``--output-spaces`` writes it, ``MNI152NLin2009cAsym:res-2``."""
    task: str | list[str] | None = None
    """BIDS task label(s); ``None`` takes the only task present."""
    subjects: list[str] | None = None
    """Subject labels without ``sub-``; ``None`` takes every subject with runs of the task."""
    sessions: list[str] | None = None
    """Session labels without ``ses-``, or glob patterns (``perceptionTest*``); ``None``: all."""
    stimulus_column: str = "stim_file"
    """Events column naming the stimulus: an image (relative path, file name or name without
    extension) or a stimulus id."""
    stimuli_dir: str | None = None
    """Folder with the stimulus images when the dataset does not ship them (ImageNet, COCO,
    THINGS), relative to the dataset root or absolute; ``None``: the dataset's ``stimuli/``."""
    label_column: str | None = "category"
    """Events (or ``stimuli.tsv``) column with a label per stimulus."""
    label_regex: str | None = None
    """Regular expression with one group that takes the label from the stimulus name where no
    label column gives one (``^(n\\d+)_`` gives an ImageNet file's synset)."""
    split_column: str | None = "split"
    """Events (else ``stimuli.tsv``) column with train/val/test; absent or ``None``: test =
    the stimuli that every subject of the dataset saw, train = the others."""
    split_values: dict[str, str] = {}
    """Split-column value -> train/val/test, for datasets with their own words (``exp: train``)."""
    session_splits: dict[str, str] | None = None
    """Session label or glob pattern -> train/val/test, for datasets whose split is the session
    type (``perceptionTraining*: train``); an exact label beats patterns (``imagenet04: test``
    with ``imagenet*: train``); overrides ``split_column``."""
    trial_types: list[str] | None = None
    """``trial_type_column`` values modelled as trials; ``None``: every row that names a
    stimulus."""
    trial_type_column: str = "trial_type"
    """Events column that ``trial_types`` selects on."""
    roi_mask: str | None = "derivatives/masks"
    """Folder (relative to the root, or absolute) with ``sub-*/**/*_desc-brain_mask`` and
    ``*_dseg``; ``None``: only fMRIPrep's brain masks, or without them an EPI mask computed from
    each subject's first run."""
    mask_resample: Literal["never", "nearest"] = "never"
    """A mask on another voxel grid than the bold: ``never`` refuses it; ``nearest`` resamples
    it onto the bold grid (nearest neighbour, by the affines), which is right only when both
    are in the same space (e.g. fMRIPrep ``space-T1w`` bold and a T1w-space dseg)."""
    glm: Literal["lsa", "lss"] = "lsa"
    hrf_model: str = "glover"
    """``glover`` or ``spm`` (nilearn's kernels)."""
    high_pass_hz: float = 0.01
    """Cut-off of the cosine drift basis, Hz."""
    confounds: list[str] = []
    """Columns of each run's confounds TSV (fMRIPrep's ``*_desc-confounds_timeseries.tsv``
    beside the bold), e.g. ``trans_x ... rot_z, csf, white_matter, framewise_displacement``."""
    zscore: Literal["session", "none"] = "session"
    image_size: int | None = None
    """Side of the square the stimuli are centre-cropped and resized to; ``None`` keeps them."""

    @property
    def tasks(self) -> list[str] | None:
        """``task`` as a list (``None`` when unset)."""
        return [self.task] if isinstance(self.task, str) else self.task

    @field_validator("task")
    @classmethod
    def _drop_task_prefix(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list):
            if not value:
                raise ValueError("task must name at least one task, or be null for the only one")
            return [label.removeprefix("task-") for label in value]
        return value.removeprefix("task-") if value is not None else None

    @field_validator("subjects")
    @classmethod
    def _drop_subject_prefix(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("subjects must name at least one subject, or be null for all")
        return [label.removeprefix("sub-") for label in value] if value is not None else None

    @field_validator("sessions")
    @classmethod
    def _drop_session_prefix(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("sessions must name at least one session, or be null for all")
        return [label.removeprefix("ses-") for label in value] if value is not None else None

    @field_validator("space")
    @classmethod
    def _drop_space_prefix(cls, value: str) -> str:
        value = value.removeprefix("space-")
        if not value:
            raise ValueError("space must name an fMRIPrep output space, e.g. T1w")
        return value

    @field_validator("label_regex")
    @classmethod
    def _one_group(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            groups = re.compile(value).groups
        except re.error as err:
            raise ValueError(f"label_regex {value!r} is not a regular expression: {err}") from err
        if groups != 1:
            raise ValueError(f"label_regex {value!r} must have one (group), it has {groups}")
        return value

    @field_validator("split_values", "session_splits")
    @classmethod
    def _known_splits(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        unknown = [split for split in value.values() if split_name(split) not in SPLITS]
        if unknown:
            raise ValueError(f"split {unknown[0]!r} is not one of {', '.join(SPLITS)}")
        return {key: split_name(split) for key, split in value.items()}

    @field_validator("hrf_model")
    @classmethod
    def _known_hrf(cls, value: str) -> str:
        if value not in HRF_KERNELS:
            raise ValueError(f"hrf_model must be one of {', '.join(HRF_KERNELS)}, got {value!r}")
        return value

    @field_validator("high_pass_hz")
    @classmethod
    def _non_negative(cls, value: float) -> float:
        if value < 0:
            raise ValueError(f"high_pass_hz must be >= 0 Hz, got {value}")
        return value

    @field_validator("image_size")
    @classmethod
    def _positive_size(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError(f"image_size must be a positive number of pixels, got {value}")
        return value


def under_root(root: Path, folder: str) -> Path:
    path = Path(folder).expanduser()
    return path if path.is_absolute() else root / path
