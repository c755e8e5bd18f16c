"""fMRI pipeline: BIDS bold runs + events -> z-scored single-trial betas per subject.

For each run: load the bold series, keep the voxels of the signal ROI (``dseg > 0`` inside the
brain mask), build a design of one HRF-convolved regressor per trial plus a cosine drift basis,
an intercept and optional confounds, and fit every voxel at once by least squares:

- ``lsa`` (least-squares-all): one GLM with all trial regressors;
- ``lss`` (least-squares-separate, Mumford et al. 2012): per trial a GLM with that trial and
  one regressor for all the others, solved for all trials and voxels in closed form.

Both first project the nuisance regressors out of the trial regressors (Frisch-Waugh-Lovell),
which leaves the trial betas unchanged and means only the trial columns meet the data. After
all runs, each session's betas are z-scored per voxel with the mean and standard deviation of
that session's training trials (all of its trials when it has none), so test data never sets
the normalisation where it can be avoided. Betas keep the data's units before z-scoring.

Test trials keep their repetition index; averaging repeats is left to the views that read the
store. Stimuli are the files under ``stimuli/`` that the events name (or ids mapped to files by
``stimuli/stimuli.tsv``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
import pandas as pd
from nibabel.affines import apply_affine
from nilearn.glm.first_level import glover_hrf, spm_hrf
from nilearn.glm.first_level.design_matrix import create_cosine_drift
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
    find_subject_masks,
    parse_entities,
    read_dseg_labels,
    read_events,
    select_subjects,
    select_task,
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


class FMRIPipelineConfig(BaseModel):
    """Options of the BIDS fMRI pipeline (all names as ``--set key=value`` takes them)."""

    model_config = ConfigDict(extra="forbid")

    task: str | None = None
    """BIDS task label; ``None`` takes the only task present."""
    subjects: list[str] | None = None
    """Subject labels without ``sub-``; ``None`` takes every subject with runs of the task."""
    stimulus_column: str = "stim_file"
    """Events column naming the stimulus: a file under ``stimuli/`` or a stimulus id."""
    label_column: str | None = "category"
    """Events (or ``stimuli.tsv``) column with a label per stimulus."""
    split_column: str | None = "split"
    """Events (else ``stimuli.tsv``) column with train/val/test; absent or ``None``: test =
    the stimuli that every subject of the dataset saw, train = the others."""
    trial_types: list[str] | None = None
    """``trial_type`` values modelled as trials; ``None``: every row that names a stimulus."""
    roi_mask: str | None = "derivatives/masks"
    """Folder (relative to the root, or absolute) with ``sub-*/**/*_desc-brain_mask`` and
    ``*_dseg``; ``None`` computes an EPI mask from each subject's first run and keeps it all."""
    glm: Literal["lsa", "lss"] = "lsa"
    hrf_model: str = "glover"
    """``glover`` or ``spm`` (nilearn's kernels)."""
    high_pass_hz: float = 0.01
    """Cut-off of the cosine drift basis, Hz."""
    confounds: list[str] = []
    """Columns of the ``*_desc-confounds_timeseries.tsv`` beside each bold file."""
    zscore: Literal["session", "none"] = "session"
    image_size: int | None = None
    """Side of the square the stimuli are centre-cropped and resized to; ``None`` keeps them."""

    @field_validator("task")
    @classmethod
    def _drop_task_prefix(cls, value: str | None) -> str | None:
        return value.removeprefix("task-") if value is not None else None

    @field_validator("subjects")
    @classmethod
    def _drop_subject_prefix(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("subjects must name at least one subject, or be null for all")
        return [label.removeprefix("sub-") for label in value] if value is not None else None

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
    ``stimulus_index``; ``images`` is uint8 ``[n_stimuli, h, w, 3]`` or ``None`` when the
    stimuli are not image files; ``source_files`` lists every input file read.
    """

    subjects: dict[str, SubjectBetas]
    stimulus_ids: list[str]
    stimulus_labels: list[str]
    stimulus_splits: list[str]
    images: np.ndarray | None
    source_files: list[Path]


def prepare_bids_fmri(
    root: Path | str, config: FMRIPipelineConfig, progress: bool = True
) -> PreparedFMRI:
    """Single-trial betas for every chosen subject of the BIDS fMRI dataset at ``root``.

    Checks the whole input (headers, sidecars, events, masks, stimuli) before loading any bold
    data, so bad input fails in seconds with a :class:`UserInputError`.
    """
    root = Path(root)
    sources = _SourceFiles()
    runs = find_bold_runs(root)
    task = select_task(runs, config.task)
    runs = [run for run in runs if run.task == task]
    subjects = select_subjects(runs, config.subjects)
    stimuli_table = _read_stimuli_table(root, config, sources)

    plans = {
        subject: _plan_subject(subject, [r for r in runs if r.subject == subject], config, sources)
        for subject in subjects
    }
    catalog = _build_catalog(root, plans, runs, stimuli_table, config, sources)
    voxels = {
        subject: _subject_voxels(root, subject, plans[subject], config, sources)
        for subject in subjects
    }

    n_runs = sum(len(subject_plans) for subject_plans in plans.values())
    # A run's GLM is small (frames x trials): multithreaded BLAS only adds start-up and
    # contention there (0.3 s instead of 0.5 ms per SVD on a busy 2-core machine).
    with (
        threadpool_limits(limits=1, user_api="blas"),
        tqdm(total=n_runs, desc="fMRI runs", unit="run", disable=not progress) as bar,
    ):
        prepared = {}
        for subject in subjects:
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
class _RunPlan:
    """A bold run checked and ready to fit: its header image, TR (s) and trial table."""

    run: BoldRun
    image: nib.Nifti1Image
    tr: float
    session: int
    run_number: int
    trials: pd.DataFrame  # stimulus_key, onset, duration, label, split (raw text), events_file


def _plan_subject(
    subject: str, runs: list[BoldRun], config: FMRIPipelineConfig, sources: _SourceFiles
) -> list[_RunPlan]:
    """Check every run of one subject and select its trials; runs without trials are dropped."""
    sessions = _session_numbers([run.session for run in runs])
    plans = []
    for run in runs:
        trials = _run_trials(run, config, sources)
        if trials.empty:
            continue
        image = nib.load(run.bold_path)
        tr = check_bold_header(run, image)
        sources.add(run.bold_path, *run.sidecar_paths)
        _check_onsets_inside_run(run, trials, n_frames=image.shape[3], tr=tr)
        plans.append(_RunPlan(run, image, tr, sessions[run.session], 0, trials))
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
    present = set()
    for run in runs:
        events = read_events(run, ["trial_type"])
        present |= set(events["trial_type"].dropna())
    return f" with trial_type in {config.trial_types} (the events have {sorted(present)})"


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
    """Run numbers per session: the ``run`` entity when unique integers, else file order."""
    for session in {plan.session for plan in plans}:
        in_session = [plan for plan in plans if plan.session == session]
        labels = [plan.run.entities.get("run", "") for plan in in_session]
        if all(label.isdigit() for label in labels) and len(set(labels)) == len(labels):
            numbers = [int(label) for label in labels]
        else:
            numbers = list(range(1, len(in_session) + 1))
        for plan, number in zip(in_session, numbers, strict=True):
            plan.run_number = number


def _run_trials(run: BoldRun, config: FMRIPipelineConfig, sources: _SourceFiles) -> pd.DataFrame:
    """The events rows of ``run`` modelled as trials, with their raw stimulus/label/split."""
    required = ["onset", "duration", config.stimulus_column]
    if config.trial_types is not None:
        required.append("trial_type")
    events = read_events(
        run,
        required,
        fix="add them to the events file, or change stimulus_column/trial_types to match it",
    )
    sources.add(run.events_path)
    keys = events[config.stimulus_column].str.strip()
    rows = keys.notna() & (keys != "")
    if config.trial_types is not None:
        rows &= events["trial_type"].isin(config.trial_types)
    selected = events[rows]

    def optional(column: str | None) -> pd.Series:
        if column is None or column not in selected.columns:
            return pd.Series(pd.NA, index=selected.index, dtype=object)
        return selected[column].str.strip()

    return pd.DataFrame(
        {
            "stimulus_key": keys[rows],
            "onset": selected["onset"],
            "duration": selected["duration"],
            "label": optional(config.label_column),
            "split": optional(config.split_column),
            "events_file": run.events_path.name,
        }
    ).reset_index(drop=True)


def _check_onsets_inside_run(run: BoldRun, trials: pd.DataFrame, n_frames: int, tr: float) -> None:
    run_end = n_frames * tr
    late = trials["onset"] >= run_end
    if late.any():
        onset = float(trials.loc[late, "onset"].iloc[0])
        raise UserInputError(
            f"{run.events_path.name}: trial onset {onset:g} s is after the end of {run.name} "
            f"({n_frames} volumes x TR {tr:g} s = {run_end:g} s); fix the events or the TR"
        )


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
    all_runs: list[BoldRun],
    table: pd.DataFrame | None,
    config: FMRIPipelineConfig,
    sources: _SourceFiles,
) -> _StimulusCatalog:
    """Stimulus ids, labels, splits and image files for every stimulus the trials name."""
    trials = pd.concat([p.trials for ps in plans.values() for p in ps], ignore_index=True)
    first_rows = trials.drop_duplicates("stimulus_key").set_index("stimulus_key")
    keys = list(first_rows.index)
    ids = {key: _stimulus_id(key, table) for key in keys}
    images = {
        key: _stimulus_image(root, key, first_rows.at[key, "events_file"], table) for key in keys
    }
    labels = _per_stimulus(trials, "label", config.label_column, table)
    splits = _per_stimulus(trials, "split", config.split_column, table)
    if splits.isna().all():
        splits = _infer_splits(all_runs, config, sources).reindex(keys)
    splits = _checked_splits(splits, config)
    if labels.isna().all() and config.label_column and "label_column" in config.model_fields_set:
        raise UserInputError(
            f"label_column {config.label_column!r} is in no events file nor {STIMULI_TABLE}; "
            "name an existing column or set label_column=null"
        )

    order = sorted(keys, key=lambda key: ids[key])
    duplicates = pd.Series([ids[key] for key in order]).duplicated()
    if duplicates.any():
        raise UserInputError(
            f"Two stimuli share the id {ids[order[int(duplicates.idxmax())]]!r}; "
            "give every stimulus file a distinct name"
        )
    have_images = all(images[key] is not None for key in order)
    if not have_images and any(images[key] is not None for key in order):
        warnings.warn("Only some stimuli are image files; no images are kept", stacklevel=2)
    return _StimulusCatalog(
        ids=[ids[key] for key in order],
        labels=[_text(labels.get(key)) for key in order],
        splits=[str(splits[key]) for key in order],
        image_paths=[images[key] for key in order] if have_images else None,
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


def _stimulus_image(
    root: Path, key: str, events_file: str, table: pd.DataFrame | None
) -> Path | None:
    """The image file of a stimulus (under ``stimuli/``), or ``None`` when it is not a file."""
    name = key
    if not _is_image_file(key):
        if table is None or "stim_file" not in table.columns or key not in table.index:
            return None
        name = table.at[key, "stim_file"]
        if pd.isna(name):
            return None
    path = root / STIMULI_DIR / name
    if not path.is_file():
        raise UserInputError(
            f"Stimulus file {STIMULI_DIR}/{name} named in {events_file} does not exist; add it "
            f"under {root / STIMULI_DIR} or fix the events' stimulus column"
        )
    return path


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
            f"Stimulus {key!r} has several {table_column} values ({', '.join(values)}) in the "
            f"events (e.g. {clash['events_file'].iloc[0]}); give each stimulus one value"
        )
    values = known.set_index("stimulus_key")[trial_column]
    keys = trials["stimulus_key"].unique()
    values = values.reindex(keys)
    if table is not None and table_column is not None and table_column in table.columns:
        values = values.fillna(table[table_column].reindex(keys))
    return values


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
            f"{n_subjects} subject(s), so no training set can be inferred; "
            "set split_column to an events column with train/test"
        )
    return splits


def _checked_splits(splits: pd.Series, config: FMRIPipelineConfig) -> pd.Series:
    """Split names normalised to train/val/test; missing or unknown ones are refused."""
    missing = splits.isna()
    if missing.any():
        raise UserInputError(
            f"Stimulus {splits.index[missing][0]!r} has no {config.split_column!r} value in any "
            "events file; fill the split column for every trial"
        )
    normalised = splits.str.lower().replace(_SPLIT_ALIASES)
    unknown = ~normalised.isin(SPLITS)
    if unknown.any():
        raise UserInputError(
            f"Unknown split {splits[unknown].iloc[0]!r} in column {config.split_column!r}; "
            f"use one of {', '.join(SPLITS)}"
        )
    return normalised


def _load_images(paths: list[Path], image_size: int | None) -> np.ndarray:
    """uint8 ``[n, h, w, 3]``; with ``image_size``, centre-cropped to square and resized."""
    images = []
    for path in paths:
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
    """Signal-ROI voxels from the mask derivatives; ``None`` when an EPI mask is computed later.

    Every run must lie on the grid of the first one (and of the mask).
    """
    reference = plans[0]
    for plan in plans[1:]:
        check_same_grid(
            reference.image,
            reference.run.name,
            plan.image,
            plan.run.name,
            fix="resample every run of a subject to one grid",
        )
    if config.roi_mask is None:
        return None
    mask_root = Path(config.roi_mask)
    mask_root = mask_root if mask_root.is_absolute() else root / mask_root
    files = find_subject_masks(mask_root, subject)
    sources.add(files.brain_mask, files.dseg, files.dseg_labels)
    inside = np.ones(reference.image.shape[:3], dtype=bool)
    space = None
    if files.brain_mask is not None:
        inside &= _load_mask_volume(files.brain_mask, reference) > 0
        space = parse_entities(files.brain_mask.name)[0].get("space")
    segmentation = None
    if files.dseg is not None:
        segmentation = np.rint(_load_mask_volume(files.dseg, reference)).astype(np.int32)
        inside &= segmentation > 0
        space = space or parse_entities(files.dseg.name)[0].get("space")
    shown = files.dseg or files.brain_mask
    if not inside.any():
        raise UserInputError(f"The signal ROI in {shown.name} is empty; fix the mask")
    ijk = np.argwhere(inside).astype(np.int32)
    if segmentation is None:
        roi_labels = np.full(len(ijk), "brain")
    else:
        names = read_dseg_labels(files.dseg_labels)
        codes = segmentation[tuple(ijk.T)]
        roi_labels = np.array([names.get(int(code), f"roi-{code}") for code in codes])
    return _Voxels(
        ijk=ijk,
        roi_labels=roi_labels,
        affine=reference.image.affine.copy(),
        shape=tuple(int(n) for n in reference.image.shape[:3]),
        space=space or _bold_space(reference.run),
    )


def _bold_space(run: BoldRun) -> str:
    return run.entities.get("space", "native")


def _load_mask_volume(path: Path, reference: _RunPlan) -> np.ndarray:
    mask = nib.load(path)
    if len(mask.shape) == 4 and mask.shape[3] == 1:
        mask = mask.slicer[..., 0]
    if len(mask.shape) != 3:
        raise UserInputError(
            f"Expected a 3D mask, got shape {tuple(mask.shape)} from {path.name}; pass one volume"
        )
    check_same_grid(reference.image, reference.run.name, mask, path.name)
    return np.asanyarray(mask.dataobj)


def _epi_voxels(mean_volume: np.ndarray, plan: _RunPlan) -> _Voxels:
    """All voxels of nilearn's EPI mask of a run's mean volume (no ROI derivatives given)."""
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
        space=_bold_space(plan.run),
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


def _read_confounds(plan: _RunPlan, columns: list[str], n_frames: int) -> np.ndarray | None:
    """Chosen confound columns, centred, with missing values (fMRIPrep's first rows) as 0."""
    if not columns:
        return None
    path = plan.run.confounds_path()
    if not path.is_file():
        raise UserInputError(
            f"confounds were requested but {path.name} is missing beside {plan.run.name}; "
            "add it or set confounds=[]"
        )
    table = pd.read_csv(path, sep="\t", na_values=["n/a"])
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise UserInputError(
            f"{path.name} lacks confound column(s) {', '.join(missing)}; choose from "
            f"{', '.join(table.columns[:20])}{' ...' if len(table.columns) > 20 else ''}"
        )
    if len(table) != n_frames:
        raise UserInputError(
            f"{path.name} has {len(table)} rows but {plan.run.name} has {n_frames} volumes; "
            "use the confounds of this run"
        )
    values = table[columns].to_numpy(dtype=float)
    values = values - np.nanmean(values, axis=0)
    return np.nan_to_num(values, nan=0.0)


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
    confounds = _read_confounds(plan, config.confounds, n_frames)
    nuisance = nuisance_regressors(n_frames, plan.tr, config.high_pass_hz, confounds)
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
