"""fMRI pipeline: BIDS bold runs + events -> z-scored single-trial betas per subject.

For each run: load the bold series, keep the voxels of the signal ROI, build a design of one
HRF-convolved regressor per trial plus a cosine drift basis, an intercept and optional
confounds, and fit every voxel at once by least squares:

- ``lsa`` (least-squares-all): one GLM with all trial regressors;
- ``lss`` (least-squares-separate, Mumford et al. 2012): per trial a GLM with that trial and
  one regressor for all the others, solved for all trials and voxels in closed form.

Both first project the nuisance regressors out of the trial regressors (Frisch-Waugh-Lovell),
which leaves the trial betas unchanged and means only the trial columns meet the data. After
all runs, each session's betas are z-scored per voxel with the mean and standard deviation of
that session's training trials (all of its trials when it has none), so test data never sets
the normalisation where it can be avoided. Betas keep the data's units before z-scoring.

Inputs: the raw ``*_bold.nii[.gz]`` of a BIDS dataset (``input=raw``) or fMRIPrep's
preprocessed bold in one output space (``input=fmriprep``; events still come from the raw
dataset). The signal ROI is the intersection of fMRIPrep's per-run brain masks (when there are
any) and of the ``roi_mask`` folder's brain mask and ``dseg > 0``; with neither, nilearn's EPI
mask of the subject's first run. Every run of a subject must lie on one voxel grid; a mask on
another grid is refused unless ``mask_resample=nearest``.

Test trials keep their repetition index; averaging repeats is left to the views that read the
store. Stimulus images are found below ``stimuli/`` (or ``stimuli_dir``) by the name the events
give: a relative path, a file name, or a name without extension (``stimuli/stimuli.tsv`` may map
ids to files).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
import pandas as pd
from nibabel.affines import apply_affine
from nilearn.glm.first_level import glover_hrf, spm_hrf
from nilearn.glm.first_level.design_matrix import create_cosine_drift
from nilearn.image import resample_img
from nilearn.masking import compute_epi_mask
from PIL import Image
from pydantic import BaseModel, ConfigDict, field_validator
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from mindzoo.errors import UserInputError
from mindzoo.pipelines.bids_fmri import (
    BoldRun,
    check_bold_header,
    check_same_grid,
    find_bold_runs,
    find_fmriprep_runs,
    find_subject_masks,
    grid_difference,
    list_names,
    parse_entities,
    read_dseg_labels,
    read_events,
    require_content,
    select_sessions,
    select_subjects,
    select_tasks,
)

STIMULI_DIR = "stimuli"
STIMULI_TABLE = "stimuli.tsv"
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"training": "train", "validation": "val", "testing": "test"}
_HRF_KERNELS = {"glover": glover_hrf, "spm": spm_hrf}
# HRF sampling step = TR / this; nilearn's default, so regressors match its design matrices.
_HRF_OVERSAMPLING = 50
# Relative singular value under which a design is treated as rank deficient.
_RANK_TOLERANCE = 1e-8
# A resampled mask must keep this share of its volume inside the bold field of view; less
# means the two images are not in the same space, and nearest-neighbour would silently crop.
_MIN_RESAMPLED_VOLUME = 0.5


def _split_name(value: str) -> str:
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
        unknown = [split for split in value.values() if _split_name(split) not in SPLITS]
        if unknown:
            raise ValueError(f"split {unknown[0]!r} is not one of {', '.join(SPLITS)}")
        return {key: _split_name(split) for key, split in value.items()}

    @field_validator("hrf_model")
    @classmethod
    def _known_hrf(cls, value: str) -> str:
        if value not in _HRF_KERNELS:
            raise ValueError(f"hrf_model must be one of {', '.join(_HRF_KERNELS)}, got {value!r}")
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


@dataclass
class SubjectBetas:
    """One subject's single-trial betas and what their axes mean.

    ``betas`` is float32 ``[trial, voxel]``; ``trials`` has one row per trial in chronological
    order (columns ``stimulus_index``, ``stimulus_id``, ``session``, ``run``, ``repetition``,
    ``split``, ``label``, ``onset`` in s); ``voxel_ijk`` int32 ``[voxel, 3]`` indexes the
    ``volume_shape`` grid and ``voxel_xyz`` float32 ``[voxel, 3]`` is ``affine @ ijk`` in mm in
    ``space``; ``roi_labels`` names each voxel's ROI.
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


def prepare_bids_fmri(
    root: Path | str,
    config: FMRIPipelineConfig,
    progress: bool = True,
    with_images: bool = True,
) -> PreparedFMRI:
    """Single-trial betas for every chosen subject of the BIDS fMRI dataset at ``root``.

    ``with_images=False`` prepares without looking for stimulus images (``images`` is then
    ``None``): for datasets whose images are not at hand when no image features are wanted.
    Checks the whole input (headers, sidecars, events, confounds, masks, stimuli) before
    loading any bold data, so bad input fails in seconds with a :class:`UserInputError`.
    """
    root = Path(root)
    sources = _SourceFiles()
    selection = _select_runs(root, config)
    stimuli_table = _read_stimuli_table(root, config, sources)

    plans = {
        subject: _plan_subject(subject, selection, config, sources)
        for subject in selection.subjects
    }
    catalog = _build_catalog(
        root, plans, selection.task_runs, stimuli_table, config, sources, with_images
    )
    voxels = {
        subject: _subject_voxels(root, subject, plans[subject], config, sources)
        for subject in selection.subjects
    }

    n_runs = sum(len(subject_plans) for subject_plans in plans.values())
    # A run's GLM is small (frames x trials): multithreaded BLAS only adds start-up and
    # contention there (0.3 s instead of 0.5 ms per SVD on a busy 2-core machine).
    with (
        threadpool_limits(limits=1, user_api="blas"),
        tqdm(total=n_runs, desc="fMRI runs", unit="run", disable=not progress) as bar,
    ):
        prepared = {}
        for subject in selection.subjects:
            betas, trials, subject_voxels = _fit_subject(
                plans[subject], voxels[subject], config, bar
            )
            prepared[f"sub-{subject}"] = _assemble_subject(
                subject, betas, trials, subject_voxels, catalog, config
            )

    images = None
    if catalog.image_paths is not None:
        images = _load_images(catalog.image_paths, config.image_size)
        sources.add(*catalog.image_paths)
    return PreparedFMRI(
        subjects=prepared,
        stimulus_ids=catalog.ids,
        stimulus_labels=catalog.labels,
        stimulus_splits=catalog.splits,
        images=images,
        source_files=sources.paths(),
    )


def input_files(
    root: Path | str, config: FMRIPipelineConfig, with_images: bool = True
) -> list[Path]:
    """The files that preparing ``root`` with ``config`` reads, found without reading NIfTI data.

    For sources that fetch lazily (DataLad): the chosen runs' bold, sidecars, events, fMRIPrep
    masks and (when ``confounds`` are set) confounds, the ``roi_mask`` files of the chosen
    subjects, ``stimuli/stimuli.tsv`` and the stimulus images found below ``stimuli/`` (or
    ``stimuli_dir``). Reads only events and sidecars (small, and in git for DataLad). Paths
    outside ``root`` (an fMRIPrep or image folder elsewhere) are included as they are.
    """
    root = Path(root)
    selection = _select_runs(root, config)
    files: list[Path | None] = []
    for run in selection.runs:
        files += [run.bold_path, *run.sidecar_paths, run.events_path, run.brain_mask]
        if config.confounds:
            files.append(run.confounds_path())
    if config.roi_mask is not None:
        for subject in selection.subjects:
            masks = find_subject_masks(_under_root(root, config.roi_mask), subject)
            files += [masks.brain_mask, masks.dseg, masks.dseg_labels]
    table_path = root / STIMULI_DIR / STIMULI_TABLE
    files.append(table_path if table_path.is_file() else None)
    if with_images:
        table = _read_stimuli_table(root, config, _SourceFiles())
        finder = _ImageFinder(_stimuli_folder(root, config))
        keys = {key for run in selection.runs for key in _run_trials(run, config)["stimulus_key"]}
        files += [finder.find(_image_name(key, table)) for key in sorted(keys)]
    return list(dict.fromkeys(path for path in files if path is not None))


def _under_root(root: Path, folder: str) -> Path:
    path = Path(folder).expanduser()
    return path if path.is_absolute() else root / path


class _SourceFiles:
    """Ordered set of the input files read, for provenance."""

    def __init__(self) -> None:
        self._paths: dict[Path, None] = {}

    def add(self, *paths: Path | None) -> None:
        self._paths.update(dict.fromkeys(p for p in paths if p is not None))

    def paths(self) -> list[Path]:
        return list(self._paths)


# --- runs and their trials -------------------------------------------------------------------


@dataclass
class _RunSelection:
    """The runs to prepare and the context they were chosen from.

    ``task_runs``: every run of the chosen tasks (all subjects and sessions: split inference
    and session numbering look at them, so a limit does not change either); ``runs``: those of
    the chosen subjects and sessions; ``subjects``: labels without ``sub-``.
    """

    task_runs: list[BoldRun]
    runs: list[BoldRun]
    subjects: list[str]


def _select_runs(root: Path, config: FMRIPipelineConfig) -> _RunSelection:
    if config.input == "fmriprep":
        if not root.is_dir():
            raise UserInputError(f"BIDS root {root} is not a directory; pass the dataset folder")
        runs = find_fmriprep_runs(_under_root(root, config.derivatives_dir), root, config.space)
    else:
        runs = find_bold_runs(root)
    tasks = select_tasks(runs, config.tasks)
    task_runs = [run for run in runs if run.task in tasks]
    subjects = select_subjects(task_runs, config.subjects)
    chosen = select_sessions([run for run in task_runs if run.subject in subjects], config.sessions)
    without = [s for s in subjects if not any(run.subject == s for run in chosen)]
    if without:
        raise UserInputError(
            f"sub-{without[0]} has no runs in sessions {', '.join(config.sessions or [])}; "
            "choose other subjects or sessions"
        )
    return _RunSelection(task_runs=task_runs, runs=chosen, subjects=subjects)


@dataclass
class _RunPlan:
    """A bold run checked and ready to fit: header image, TR (s), trials and confounds."""

    run: BoldRun
    image: nib.Nifti1Image
    tr: float
    session: int
    run_number: int
    trials: pd.DataFrame  # stimulus_key, onset, duration, label, split (raw text), events_file
    confounds: np.ndarray | None  # [frame, column], centred


def _plan_subject(
    subject: str, selection: _RunSelection, config: FMRIPipelineConfig, sources: _SourceFiles
) -> list[_RunPlan]:
    """Check every chosen run of one subject and select its trials; runs without trials go."""
    runs = [run for run in selection.runs if run.subject == subject]
    sessions = _session_numbers([r.session for r in selection.task_runs if r.subject == subject])
    plans = []
    for run in runs:
        trials = _run_trials(run, config, sources)
        if trials.empty:
            continue
        require_content(run.bold_path)
        image = nib.load(run.bold_path)
        tr = check_bold_header(run, image)
        sources.add(run.bold_path, *run.sidecar_paths)
        n_frames = image.shape[3]
        _check_onsets_inside_run(run, trials, n_frames=n_frames, tr=tr)
        confounds = _read_confounds(run, config.confounds, n_frames, sources)
        plans.append(_RunPlan(run, image, tr, sessions[run.session], 0, trials, confounds))
    if not plans:
        raise UserInputError(
            f"sub-{subject} has no trials: no events row names a stimulus in column "
            f"{config.stimulus_column!r}{_trial_type_filter(runs, config)}; set "
            "stimulus_column/trial_types to match the events files"
        )
    _number_runs(plans)
    return plans


def _trial_type_filter(runs: list[BoldRun], config: FMRIPipelineConfig) -> str:
    """Error-message phrase naming the requested and the available trial types."""
    if config.trial_types is None:
        return ""
    column = config.trial_type_column
    present = set()
    for run in runs:
        events = read_events(run, [column])
        present |= set(events[column].dropna())
    return f" with {column} in {config.trial_types} (the events have {sorted(present)})"


def _session_numbers(labels: list[str | None]) -> dict[str | None, int]:
    """Session label -> int: the label itself when all are numeric, else 1-based sorted rank.

    A dataset without sessions is one session, numbered 1.
    """
    unique = sorted({label for label in labels if label is not None})
    if not unique:
        return {None: 1}
    if all(label.isdigit() for label in unique):
        return {label: int(label) for label in unique}
    return {label: rank for rank, label in enumerate(unique, start=1)}


def _number_runs(plans: list[_RunPlan]) -> None:
    """Run numbers per session: the ``run`` entity when unique integers, else file order.

    A session with one run and no run entity (BIDS allows it) gets run 1.
    """
    for session in {plan.session for plan in plans}:
        in_session = [plan for plan in plans if plan.session == session]
        labels = [plan.run.entities.get("run", "") for plan in in_session]
        numbers = [int(label) for label in labels if label.isdigit()]
        if len(numbers) != len(labels) or len(set(numbers)) != len(numbers):
            numbers = list(range(1, len(in_session) + 1))
        for plan, number in zip(in_session, numbers, strict=True):
            plan.run_number = number


def _run_trials(
    run: BoldRun, config: FMRIPipelineConfig, sources: _SourceFiles | None = None
) -> pd.DataFrame:
    """The events rows of ``run`` modelled as trials, with their raw stimulus/label/split."""
    required = ["onset", "duration", config.stimulus_column]
    if config.trial_types is not None:
        required.append(config.trial_type_column)
    events = read_events(
        run,
        required,
        fix="add them to the events file, or change stimulus_column/trial_types to match it",
    )
    if sources is not None:
        sources.add(run.events_path)
    keys = events[config.stimulus_column].str.strip()
    rows = keys.notna() & (keys != "")
    if config.trial_types is not None:
        rows &= events[config.trial_type_column].isin(config.trial_types)
    selected = events[rows]

    def optional(column: str | None) -> pd.Series:
        if column is None or column not in selected.columns:
            return pd.Series(pd.NA, index=selected.index, dtype=object)
        return selected[column].str.strip()

    split = optional(config.split_column)
    if config.session_splits is not None:
        split = pd.Series(_session_split(run, config.session_splits), index=selected.index)
    return pd.DataFrame(
        {
            "stimulus_key": keys[rows],
            "onset": selected["onset"],
            "duration": selected["duration"],
            "label": optional(config.label_column),
            "split": split,
            "events_file": run.events_path.name,
        }
    ).reset_index(drop=True)


def _session_split(run: BoldRun, session_splits: dict[str, str]) -> str:
    """The split of every trial of ``run`` from its session label: the ``session_splits`` entry
    named exactly, else the one split of the glob patterns it matches (order-independent, as
    settings pass through YAML, JSON and hashing)."""
    if run.session is None:
        raise UserInputError(
            f"session_splits needs sessions but {run.name} has no ses- entity; "
            "set session_splits=null and give the split another way"
        )
    if run.session in session_splits:  # an exact label beats any pattern
        return session_splits[run.session]
    splits = {split for p, split in session_splits.items() if fnmatchcase(run.session, p)}
    if len(splits) == 1:
        return splits.pop()
    if splits:
        raise UserInputError(
            f"Session ses-{run.session} matches session_splits patterns of several splits "
            f"({', '.join(sorted(splits))}); name the session exactly to choose one"
        )
    raise UserInputError(
        f"Session ses-{run.session} ({run.name}) matches no session_splits pattern "
        f"({', '.join(session_splits)}); add a pattern for it or leave it out with sessions"
    )


def _check_onsets_inside_run(run: BoldRun, trials: pd.DataFrame, n_frames: int, tr: float) -> None:
    run_end = n_frames * tr
    late = trials["onset"] >= run_end
    if late.any():
        onset = float(trials.loc[late, "onset"].iloc[0])
        raise UserInputError(
            f"{run.events_path.name}: trial onset {onset:g} s is after the end of {run.name} "
            f"({n_frames} volumes x TR {tr:g} s = {run_end:g} s); fix the events or the TR"
        )


def _read_confounds(
    run: BoldRun, columns: list[str], n_frames: int, sources: _SourceFiles
) -> np.ndarray | None:
    """Chosen confound columns, centred, with missing values (fMRIPrep's first rows) as 0."""
    if not columns:
        return None
    path = run.confounds_path()
    if not os.path.lexists(path):
        raise UserInputError(
            f"confounds were requested but {path.name} is missing beside {run.name}; "
            "add it or set confounds=[]"
        )
    require_content(path)
    table = pd.read_csv(path, sep="\t", na_values=["n/a"])
    sources.add(path)
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise UserInputError(
            f"{path.name} lacks confound column(s) {', '.join(missing)}; choose from "
            f"{', '.join(table.columns[:20])}{' ...' if len(table.columns) > 20 else ''}"
        )
    if len(table) != n_frames:
        raise UserInputError(
            f"{path.name} has {len(table)} rows but {run.name} has {n_frames} volumes; "
            "use the confounds of this run"
        )
    values = table[columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    all_missing = np.isnan(values).all(axis=0)
    if all_missing.any():
        raise UserInputError(
            f"{path.name}: confound column {columns[int(all_missing.argmax())]} has no numeric "
            "value; choose another column"
        )
    values = values - np.nanmean(values, axis=0)
    return np.nan_to_num(values, nan=0.0)


# --- stimuli ---------------------------------------------------------------------------------


@dataclass
class _StimulusCatalog:
    """Stimuli in ``stimulus_index`` order and how each trial's key maps to an index."""

    ids: list[str]
    labels: list[str]
    splits: list[str]
    image_paths: list[Path] | None
    index_of_key: dict[str, int]


def _read_stimuli_table(
    root: Path, config: FMRIPipelineConfig, sources: _SourceFiles
) -> pd.DataFrame | None:
    """``stimuli/stimuli.tsv`` indexed by the stimulus column, or ``None`` when it can't map."""
    path = root / STIMULI_DIR / STIMULI_TABLE
    if not path.is_file():
        return None
    table = pd.read_csv(path, sep="\t", dtype=str, na_values=["n/a", ""], keep_default_na=False)
    sources.add(path)
    if config.stimulus_column not in table.columns:
        return None
    if table[config.stimulus_column].duplicated().any():
        duplicate = table.loc[table[config.stimulus_column].duplicated(), config.stimulus_column]
        raise UserInputError(
            f"{path.name} lists {config.stimulus_column}={duplicate.iloc[0]!r} twice; "
            "keep one row per stimulus"
        )
    return table.set_index(config.stimulus_column, drop=False)


def _is_image_file(key: str) -> bool:
    return Path(key).suffix.lower() in IMAGE_EXTENSIONS


def _build_catalog(
    root: Path,
    plans: dict[str, list[_RunPlan]],
    task_runs: list[BoldRun],
    table: pd.DataFrame | None,
    config: FMRIPipelineConfig,
    sources: _SourceFiles,
    with_images: bool,
) -> _StimulusCatalog:
    """Stimulus ids, labels, splits and image files for every stimulus the trials name."""
    trials = pd.concat([p.trials for ps in plans.values() for p in ps], ignore_index=True)
    first_rows = trials.drop_duplicates("stimulus_key").set_index("stimulus_key")
    keys = list(first_rows.index)
    ids = {key: _stimulus_id(key, table) for key in keys}
    labels = _per_stimulus(trials, "label", config.label_column, table)
    # The default column may be absent (labels stay empty); a column the user named may not.
    # (Not model_fields_set: catalog settings arrive with every default written out.)
    named = config.label_column != FMRIPipelineConfig.model_fields["label_column"].default
    if labels.isna().all() and config.label_column and named:
        raise UserInputError(
            f"label_column {config.label_column!r} is in no events file nor {STIMULI_TABLE}; "
            "name an existing column or set label_column=null"
        )
    if config.label_regex is not None:
        labels = _labels_from_names(labels, config.label_regex)
    if config.session_splits is None:  # a session plan that contradicts itself stays an error
        trials = _strongest_split_per_stimulus(trials, config)
    splits = _per_stimulus(trials, "split", config.split_column, table)
    if splits.isna().all():
        splits = _infer_splits(task_runs, config, sources).reindex(keys)
    splits = _checked_splits(splits, config)

    order = sorted(keys, key=lambda key: ids[key])
    duplicates = pd.Series([ids[key] for key in order]).duplicated()
    if duplicates.any():
        raise UserInputError(
            f"Two stimuli share the id {ids[order[int(duplicates.idxmax())]]!r}; "
            "give every stimulus file a distinct name"
        )
    image_paths = None
    if with_images:
        image_paths = _find_images(root, order, first_rows["events_file"], table, config)
    return _StimulusCatalog(
        ids=[ids[key] for key in order],
        labels=[_text(labels.get(key)) for key in order],
        splits=[str(splits[key]) for key in order],
        image_paths=image_paths,
        index_of_key={key: index for index, key in enumerate(order)},
    )


def _text(value: object) -> str:
    return "" if value is None or pd.isna(value) else str(value)


def _stimulus_id(key: str, table: pd.DataFrame | None) -> str:
    """``stim_id`` from ``stimuli.tsv`` when listed; else the file name without extension."""
    if table is not None and "stim_id" in table.columns and key in table.index:
        stim_id = table.at[key, "stim_id"]
        if not pd.isna(stim_id):
            return str(stim_id)
    return str(Path(key).with_suffix("")) if _is_image_file(key) else key


def _labels_from_names(labels: pd.Series, pattern: str) -> pd.Series:
    """Missing labels filled with ``pattern``'s group matched in the stimulus name (the index)."""
    compiled = re.compile(pattern)
    filled = labels.copy()
    for key in labels.index[labels.isna()]:
        match = compiled.search(key)
        if match is None:
            raise UserInputError(
                f"label_regex {pattern!r} does not match stimulus {key!r}; fix the pattern or "
                "set label_regex=null"
            )
        filled[key] = match.group(1)
    return filled


def _stimuli_folder(root: Path, config: FMRIPipelineConfig) -> Path:
    return _under_root(root, config.stimuli_dir or STIMULI_DIR)


def _image_name(key: str, table: pd.DataFrame | None) -> str:
    """What to look for: ``stimuli.tsv``'s ``stim_file`` for an id it lists, else the key."""
    if _is_image_file(key) or table is None or "stim_file" not in table.columns:
        return key
    if key in table.index and not pd.isna(table.at[key, "stim_file"]):
        return str(table.at[key, "stim_file"])
    return key


def _find_images(
    root: Path,
    keys: list[str],
    events_files: pd.Series,
    table: pd.DataFrame | None,
    config: FMRIPipelineConfig,
) -> list[Path]:
    """The image file of each stimulus; all missing ones are reported in one line."""
    folder = _stimuli_folder(root, config)
    finder = _ImageFinder(folder)
    paths, missing = [], []
    for key in keys:
        path = finder.find(_image_name(key, table))
        if path is None:
            missing.append(key)
        else:
            paths.append(path)
    if missing:
        fix = (
            "pass stimuli_dir=FOLDER with the images"
            if config.stimuli_dir is None
            else "put them there or fix stimuli_dir"
        )
        raise UserInputError(
            f"{len(missing)} of {len(keys)} stimulus images are missing ({list_names(missing)}, "
            f"first named in {events_files[missing[0]]}); looked below {folder} by relative path, "
            f"file name or name without extension; {fix}, or prepare without image features "
            "(features=[])"
        )
    return paths


class _ImageFinder:
    """Image files below ``folder``, found by relative path, file name or name without
    extension (so ``n01518878_5958`` finds ``n01518878/n01518878_5958.JPEG``).

    The folder is walked once, on the first name that is not a relative path below it. Links
    whose content is absent (annexed files not fetched) are listed too.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._by_name: dict[str, list[Path]] | None = None

    def find(self, name: str) -> Path | None:
        direct = self.folder / name
        if _is_image_file(name) and os.path.lexists(direct):
            return direct
        matches = self._index().get(Path(name).name if _is_image_file(name) else name, [])
        if len(matches) > 1:
            raise UserInputError(
                f"Several images below {self.folder} match stimulus {name!r} "
                f"({list_names([str(p.relative_to(self.folder)) for p in matches])}); keep one "
                "or name stimuli by their relative path"
            )
        return matches[0] if matches else None

    def _index(self) -> dict[str, list[Path]]:
        """File name -> paths, and name without extension -> paths."""
        if self._by_name is None:
            self._by_name = {}
            for dirpath, dirnames, filenames in os.walk(self.folder):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for filename in sorted(filenames):
                    if _is_image_file(filename):
                        path = Path(dirpath) / filename
                        self._by_name.setdefault(filename, []).append(path)
                        self._by_name.setdefault(Path(filename).stem, []).append(path)
        return self._by_name


def _per_stimulus(
    trials: pd.DataFrame, trial_column: str, table_column: str | None, table: pd.DataFrame | None
) -> pd.Series:
    """One value per stimulus key from the events (checked consistent), else ``stimuli.tsv``."""
    known = trials.dropna(subset=[trial_column]).drop_duplicates(["stimulus_key", trial_column])
    conflicts = known["stimulus_key"].duplicated(keep=False)
    if conflicts.any():
        clash = known[conflicts]
        key = clash["stimulus_key"].iloc[0]
        values = clash.loc[clash["stimulus_key"] == key, trial_column].tolist()
        raise UserInputError(
            f"Stimulus {key!r} has several {table_column or trial_column} values "
            f"({', '.join(values)}) in the events (e.g. {clash['events_file'].iloc[0]}); "
            "give each stimulus one value"
        )
    values = known.set_index("stimulus_key")[trial_column]
    keys = trials["stimulus_key"].unique()
    values = values.reindex(keys)
    if table is not None and table_column is not None and table_column in table.columns:
        values = values.fillna(table[table_column].reindex(keys))
    return values


def _strongest_split_per_stimulus(trials: pd.DataFrame, config: FMRIPipelineConfig) -> pd.DataFrame:
    """Trials with each stimulus' split reduced to one value: test wins over val over train.

    Values are first mapped by ``split_values``. BOLD5000 marks one presentation of a repeated
    image ``coco`` and the others ``rep_coco``: the image is a test image. Unknown values rank
    first so that ``_checked_splits`` reports them.
    """
    if "split" not in trials.columns:
        return trials
    mapped = trials["split"].map(
        lambda value: (
            value if pd.isna(value) else _split_name(config.split_values.get(value, value))
        )
    )
    rank = mapped.map({"test": 1, "val": 2, "train": 3}).fillna(0).where(mapped.notna(), 4)
    strongest = (
        trials.assign(split=mapped, _rank=rank).groupby("stimulus_key")["_rank"].transform("min")
    )
    return trials.assign(split=mapped.where(rank == strongest))


def _infer_splits(
    runs: list[BoldRun], config: FMRIPipelineConfig, sources: _SourceFiles
) -> pd.Series:
    """Test = stimuli that every subject of the dataset saw (as NSD's shared images)."""
    seen_by: dict[str, set[str]] = {}
    for run in runs:
        for key in _run_trials(run, config, sources)["stimulus_key"]:
            seen_by.setdefault(key, set()).add(run.subject)
    n_subjects = len({run.subject for run in runs})
    splits = pd.Series(
        {key: "test" if len(who) == n_subjects else "train" for key, who in seen_by.items()}
    )
    if (splits == "test").all():
        raise UserInputError(
            f"No split column ({config.split_column!r}) and every stimulus is seen by all "
            f"{n_subjects} subject(s), so no training set can be inferred; set split_column "
            "to an events column with train/test, or session_splits"
        )
    return splits


def _checked_splits(splits: pd.Series, config: FMRIPipelineConfig) -> pd.Series:
    """Split names mapped by ``split_values`` and normalised to train/val/test; missing or
    unknown ones are refused."""
    missing = splits.isna()
    if missing.any():
        raise UserInputError(
            f"Stimulus {splits.index[missing][0]!r} has no {config.split_column!r} value in any "
            "events file; fill the split column for every trial"
        )
    normalised = splits.map(lambda value: _split_name(config.split_values.get(value, value)))
    unknown = ~normalised.isin(SPLITS)
    if unknown.any():
        raise UserInputError(
            f"Unknown split {splits[unknown].iloc[0]!r} in column {config.split_column!r}; "
            f"use one of {', '.join(SPLITS)} or map it with split_values"
        )
    return normalised


def _load_images(paths: list[Path], image_size: int | None) -> np.ndarray:
    """uint8 ``[n, h, w, 3]``; with ``image_size``, centre-cropped to square and resized."""
    images = []
    for path in paths:
        require_content(path)
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        if image_size is not None:
            image = _square_resize(image, image_size)
        elif images and image.size != (images[0].shape[1], images[0].shape[0]):
            raise UserInputError(
                f"Stimulus {path.name} is {image.size[0]}x{image.size[1]} pixels but "
                f"{paths[0].name} is {images[0].shape[1]}x{images[0].shape[0]}; "
                "set image_size to resize them all"
            )
        images.append(np.asarray(image, dtype=np.uint8))
    return np.stack(images)


def _square_resize(image: Image.Image, size: int) -> Image.Image:
    side = min(image.size)
    left = (image.width - side) // 2
    top = (image.height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    return square.resize((size, size), Image.Resampling.BICUBIC)


# --- voxels ----------------------------------------------------------------------------------


@dataclass
class _Voxels:
    """The voxels a subject's betas keep, on one bold grid."""

    ijk: np.ndarray  # int32 [voxel, 3], C order of the grid
    roi_labels: np.ndarray
    affine: np.ndarray
    shape: tuple[int, int, int]
    space: str

    def flat_index(self) -> np.ndarray:
        """Index of each voxel in a volume flattened in NIfTI (Fortran) order."""
        return np.ravel_multi_index(tuple(self.ijk.T), self.shape, order="F")


def _subject_voxels(
    root: Path,
    subject: str,
    plans: list[_RunPlan],
    config: FMRIPipelineConfig,
    sources: _SourceFiles,
) -> _Voxels | None:
    """Signal-ROI voxels from the masks; ``None`` when an EPI mask is computed later.

    Every run must lie on the grid of the first one; masks are checked against it (and
    resampled onto it with ``mask_resample=nearest``).
    """
    reference = plans[0]
    for plan in plans[1:]:
        check_same_grid(
            reference.image,
            reference.run.name,
            plan.image,
            plan.run.name,
            fix="every run of a subject must be on one grid: use data registered to one space "
            "(e.g. input=fmriprep) or limit sessions",
        )
    inside = np.ones(reference.image.shape[:3], dtype=bool)
    masks = [plan.run.brain_mask for plan in plans if plan.run.brain_mask is not None]
    for path in masks:  # fMRIPrep's: keep voxels inside the brain in every run
        inside &= _mask_on_grid(path, reference, config) > 0
    space = reference.run.entities.get("space")
    segmentation, labels_path = None, None
    if config.roi_mask is not None:
        files = find_subject_masks(_under_root(root, config.roi_mask), subject)
        if files.brain_mask is not None:
            inside &= _mask_on_grid(files.brain_mask, reference, config) > 0
            space = space or parse_entities(files.brain_mask.name)[0].get("space")
        if files.dseg is not None:
            segmentation = np.rint(_mask_on_grid(files.dseg, reference, config)).astype(np.int32)
            inside &= segmentation > 0
            space = space or parse_entities(files.dseg.name)[0].get("space")
        masks += [path for path in (files.brain_mask, files.dseg) if path is not None]
        labels_path = files.dseg_labels
    if not masks:
        return None
    sources.add(*masks, labels_path)
    if not inside.any():
        shown = " & ".join(path.name for path in masks)
        raise UserInputError(f"The signal ROI ({shown}) is empty; fix the masks")
    ijk = np.argwhere(inside).astype(np.int32)
    if segmentation is None:
        roi_labels = np.full(len(ijk), "brain")
    else:
        names = read_dseg_labels(labels_path)
        codes = segmentation[tuple(ijk.T)]
        roi_labels = np.array([names.get(int(code), f"roi-{code}") for code in codes])
    return _Voxels(
        ijk=ijk,
        roi_labels=roi_labels,
        affine=reference.image.affine.copy(),
        shape=tuple(int(n) for n in reference.image.shape[:3]),
        space=space or "native",
    )


def _mask_on_grid(path: Path, reference: _RunPlan, config: FMRIPipelineConfig) -> np.ndarray:
    """A 3D mask's values on the reference run's grid (resampled if allowed and needed)."""
    require_content(path)
    mask = nib.load(path)
    if len(mask.shape) == 4 and mask.shape[3] == 1:
        mask = mask.slicer[..., 0]
    if len(mask.shape) != 3:
        raise UserInputError(
            f"Expected a 3D mask, got shape {tuple(mask.shape)} from {path.name}; pass one volume"
        )
    difference = grid_difference(reference.image, mask)
    if difference is None:
        return np.asanyarray(mask.dataobj)
    if config.mask_resample == "never":
        raise UserInputError(
            f"{path.name} is on a different voxel grid than {reference.run.name} ({difference}); "
            "set mask_resample=nearest to resample the mask to the bold grid (only if both are "
            "in the same space), or resample it yourself"
        )
    return _resample_mask(mask, path.name, reference)


def _resample_mask(mask: nib.Nifti1Image, name: str, reference: _RunPlan) -> np.ndarray:
    """Nearest-neighbour resampling onto the bold grid, refused if it crops most of the mask."""
    target_shape = tuple(int(n) for n in reference.image.shape[:3])
    resampled = resample_img(
        nib.Nifti1Image(np.asanyarray(mask.dataobj), mask.affine),
        target_affine=reference.image.affine,
        target_shape=target_shape,
        interpolation="nearest",
        force_resample=True,
        copy_header=True,
    )
    values = np.asanyarray(resampled.dataobj)
    volume_before = np.count_nonzero(np.asanyarray(mask.dataobj)) * _voxel_volume(mask.affine)
    volume_after = np.count_nonzero(values) * _voxel_volume(reference.image.affine)
    if volume_before > 0 and volume_after < _MIN_RESAMPLED_VOLUME * volume_before:
        raise UserInputError(
            f"{name} resampled to the grid of {reference.run.name} keeps "
            f"{100 * volume_after / volume_before:.0f}% of its volume, the rest is outside the "
            "bold field of view; use a mask in the same space as the bold"
        )
    return values


def _voxel_volume(affine: np.ndarray) -> float:
    return float(abs(np.linalg.det(affine[:3, :3])))


def _epi_voxels(mean_volume: np.ndarray, plan: _RunPlan) -> _Voxels:
    """All voxels of nilearn's EPI mask of a run's mean volume (no mask given)."""
    mean_image = nib.Nifti1Image(mean_volume, plan.image.affine)
    mask = np.asanyarray(compute_epi_mask(mean_image).dataobj) > 0
    ijk = np.argwhere(mask).astype(np.int32)
    if len(ijk) == 0:
        raise UserInputError(
            f"nilearn found no brain in {plan.run.name}; pass a mask with roi_mask=FOLDER"
        )
    return _Voxels(
        ijk=ijk,
        roi_labels=np.full(len(ijk), "brain"),
        affine=plan.image.affine.copy(),
        shape=tuple(int(n) for n in plan.image.shape[:3]),
        space=plan.run.entities.get("space", "native"),
    )


# --- loading and fitting ---------------------------------------------------------------------


def _read_volumes(image: nib.Nifti1Image) -> tuple[np.ndarray, float, float]:
    """The stored 4D array (no float64 scaling copy) with its scale slope and intercept."""
    proxy = image.dataobj
    if nib.is_proxy(proxy):
        return proxy.get_unscaled(), float(proxy.slope), float(proxy.inter)
    return np.asanyarray(proxy), 1.0, 0.0


def _masked_timeseries(
    volumes: np.ndarray, slope: float, inter: float, flat_index: np.ndarray
) -> np.ndarray:
    """float32 ``[frame, voxel]`` of the chosen voxels of a 4D array."""
    n_frames = volumes.shape[3]
    # NIfTI arrays are Fortran ordered: this transpose is a view with one contiguous volume
    # per row, so the gather reads each volume once, in order.
    by_frame = volumes.reshape(-1, n_frames, order="F").T
    series = by_frame[:, flat_index].astype(np.float32, copy=False)
    if slope != 1.0 or inter != 0.0:
        series = series * np.float32(slope) + np.float32(inter)
    return series


def trial_regressors(
    onsets: np.ndarray, durations: np.ndarray, n_frames: int, tr: float, hrf_model: str = "glover"
) -> np.ndarray:
    """HRF-convolved boxcar per trial at frame times ``arange(n_frames) * tr``; ``[frame, trial]``.

    Onsets and durations in s; a zero duration is one HRF sample long, as in nilearn. Uses the
    HRF's running sum, so all trials cost one interpolation instead of one convolution each;
    the result matches ``nilearn.glm.first_level.compute_regressor``.
    """
    kernel = _HRF_KERNELS[hrf_model](tr, oversampling=_HRF_OVERSAMPLING)
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


def _fit_run(
    plan: _RunPlan, voxels: _Voxels | None, config: FMRIPipelineConfig
) -> tuple[np.ndarray, _Voxels]:
    """Betas ``[trial, voxel]`` of one run (and the voxels, set from this run if not yet)."""
    volumes, slope, inter = _read_volumes(plan.image)
    if voxels is None:
        mean_volume = volumes.mean(axis=3, dtype=np.float32) * np.float32(slope) + inter
        voxels = _epi_voxels(mean_volume, plan)
    bold = _masked_timeseries(volumes, slope, inter, voxels.flat_index())
    del volumes
    not_finite = ~np.isfinite(bold).all(axis=0)
    if not_finite.any():
        i, j, k = voxels.ijk[int(not_finite.argmax())]
        raise UserInputError(
            f"{plan.run.name} has NaN/inf values in {int(not_finite.sum())} ROI voxel(s), "
            f"e.g. voxel ({i}, {j}, {k}); fix the run or exclude those voxels from the mask"
        )
    n_frames = bold.shape[0]
    design = trial_regressors(
        plan.trials["onset"].to_numpy(),
        plan.trials["duration"].to_numpy(),
        n_frames,
        plan.tr,
        config.hrf_model,
    )
    nuisance = nuisance_regressors(n_frames, plan.tr, config.high_pass_hz, plan.confounds)
    try:
        return fit_single_trial_betas(bold, design, nuisance, config.glm), voxels
    except np.linalg.LinAlgError as err:
        raise UserInputError(
            f"The trials of {plan.run.events_path.name} cannot be separated ({err}); check for "
            "duplicate onsets or too few volumes, or use glm=lss"
        ) from err


def _fit_subject(
    plans: list[_RunPlan], voxels: _Voxels | None, config: FMRIPipelineConfig, bar: tqdm
) -> tuple[np.ndarray, pd.DataFrame, _Voxels]:
    """All runs of a subject: betas ``[trial, voxel]`` and trials, in run order."""
    betas, trials = [], []
    for plan in plans:
        bar.set_postfix_str(plan.run.name, refresh=False)
        run_betas, voxels = _fit_run(plan, voxels, config)
        betas.append(run_betas)
        trials.append(plan.trials.assign(session=plan.session, run=plan.run_number))
        bar.update()
    return np.concatenate(betas), pd.concat(trials, ignore_index=True), voxels


# --- per subject -----------------------------------------------------------------------------


def _assemble_subject(
    subject: str,
    betas: np.ndarray,
    trials: pd.DataFrame,
    voxels: _Voxels,
    catalog: _StimulusCatalog,
    config: FMRIPipelineConfig,
) -> SubjectBetas:
    """Chronological trial table with repetitions and splits, and z-scored betas."""
    order = trials.sort_values(["session", "run", "onset"], kind="stable").index.to_numpy()
    trials = trials.loc[order].reset_index(drop=True)
    betas = betas[order]
    index = trials["stimulus_key"].map(catalog.index_of_key).to_numpy(dtype=np.int64)
    table = pd.DataFrame(
        {
            "stimulus_index": index,
            "stimulus_id": [catalog.ids[i] for i in index],
            "session": trials["session"].to_numpy(dtype=np.int64),
            "run": trials["run"].to_numpy(dtype=np.int64),
            "repetition": pd.Series(index).groupby(index).cumcount().to_numpy(dtype=np.int64),
            "split": [catalog.splits[i] for i in index],
            "label": [catalog.labels[i] for i in index],
            "onset": trials["onset"].to_numpy(dtype=float),
        }
    )
    if config.zscore == "session":
        betas = zscore_by_session(betas, table["session"].to_numpy(), table["split"].to_numpy())
    return SubjectBetas(
        subject=f"sub-{subject}",
        betas=np.ascontiguousarray(betas, dtype=np.float32),
        trials=table,
        voxel_ijk=voxels.ijk,
        voxel_xyz=apply_affine(voxels.affine, voxels.ijk).astype(np.float32),
        roi_labels=voxels.roi_labels,
        affine=voxels.affine,
        volume_shape=voxels.shape,
        space=voxels.space,
    )


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
