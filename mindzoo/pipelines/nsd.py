"""NSD (Natural Scenes Dataset) from a local mirror in NSD's own release layout.

Imports the released single-trial betas (GLMsingle, ``betas_fithrf_GLMdenoise_RR`` by default)
of the chosen subjects and sessions, keeps the voxels (or fsaverage vertices) of an NSD ROI
(``nsdgeneral`` by default), z-scores each session per voxel with the statistics of its
training trials, and returns them with NSD's own trial bookkeeping. Paths are relative to the
mirror root, exactly as on NSD's S3 bucket (``XX`` = subject 01-08, ``YY`` = session 01-40):

- ``nsddata/experiments/nsd/nsd_expdesign.mat``: ``masterordering`` (per trial, the 1-based
  index into a subject's 10,000 images; one order for all subjects), ``subjectim``
  (``[8, 10000]``, 1-based 73k image numbers) and ``sharedix`` (the shared 1,000, 1-based);
- ``nsddata/experiments/nsd/nsd_stim_info_merged.csv``: per image ``nsdId`` (0-based),
  ``shared1000`` and ``subjectN_repM`` (the 1-based trial of repetition M, 0 if never shown),
  checked against the design so files of different releases are not mixed silently;
- the betas, one file per session of ``T`` trials (750 in NSD; read from the files):
  ``nsddata_betas/ppdata/subjXX/{func1pt8mm,func1mm}/<version>/betas_sessionYY.nii.gz``
  (``[X, Y, Z, T]``) or ``.hdf5`` (dataset ``betas``, ``[T, Z, Y, X]`` as h5py reads MATLAB's
  ``X x Y x Z x T``), and ``nsddata_betas/ppdata/subjXX/fsaverage/<version>/
  {lh,rh}.betas_sessionYY.mgh`` (``[163842, 1, 1, T]``);
- the ROI: ``nsddata/ppdata/subjXX/<space>/roi/<roi>.nii.gz`` or
  ``nsddata/freesurfer/fsaverage/label/{lh,rh}.<roi>.mgz`` (-1 outside the brain, 0 outside
  the ROI, > 0 inside), named from ``nsddata/freesurfer/fsaverage/label/<roi>.mgz.ctab`` when
  that table exists;
- ``nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5`` (``imgBrick``, uint8 ``[73000, 425, 425,
  3]``, 37 GB): only the images the trials show are read, a batch at a time;
- optional: ``nsddata/ppdata/subjXX/behav/responses.tsv`` gives run numbers (else ``run`` is
  0), ``nsddata/freesurfer/fsaverage/surf/{lh,rh}.<surface_coordinates>`` vertex positions.

Units: int16 betas hold 300 x percent signal change (NSD data manual) and are divided by 300;
float betas (the fsaverage ``.mgh`` files) are percent signal change already.

Trials: NSD trial ``t`` (1-based over the whole experiment) of subject ``s`` is in session
``(t - 1) // T + 1`` and shows image ``subjectim[s - 1, masterordering[t - 1] - 1] - 1``
(0-based). Stimulus ids are ``nsd-NNNNN`` with that 0-based number (the CSV's ``nsdId``, the
row of ``imgBrick``; ``responses.tsv``'s ``73KID`` is that number + 1). Test = the shared 1,000
(MindEye2's split), train = the rest. ``repetition`` is NSD's own (0, 1, 2 in chronological
order over all 40 sessions), so it does not change when fewer sessions are imported; the trial
table also keeps ``nsd_trial``.

Conventions: ``single-trial`` keeps every trial (MindEye2; average the test repeats when
evaluating). ``mindeye1-averaged`` (MindEye1/MindBridge) averages the z-scored repetitions of
each image: train = every non-shared image with the repeats it has, test = the shared images
the subject saw all 3 times in the imported sessions (982 for subj01 in the first 37
sessions); shared images seen fewer times are dropped. Subjects are named ``sub-XX``.
"""

from __future__ import annotations

import re
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import scipy.io
from nibabel.affines import apply_affine
from PIL import Image
from pydantic import BaseModel, ConfigDict, field_validator, model_validator
from tqdm.auto import tqdm

from mindzoo.errors import UserInputError
from mindzoo.pipelines.fmri import PreparedFMRI, SubjectBetas, zscore_by_session

EXPDESIGN = "nsddata/experiments/nsd/nsd_expdesign.mat"
STIM_INFO = "nsddata/experiments/nsd/nsd_stim_info_merged.csv"
STIMULI = "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5"
FSAVERAGE = "nsddata/freesurfer/fsaverage"
HEMISPHERES = ("lh", "rh")
VOLUME_SPACES = ("func1pt8mm", "func1mm")
# NSD showed each image at most 3 times; the CSV has subjectN_rep0..2.
MAX_REPEATS = 3
# int16 betas are percent signal change x 300 (NSD data manual, "Functional data (NSD)").
INT16_BETA_SCALE = 300.0
_IMAGE_BATCH = 64
_DEFAULT_FORMAT = {"func1pt8mm": "nifti", "func1mm": "nifti", "fsaverage": "mgh"}
_EXTENSIONS = {"nifti": "nii.gz", "hdf5": "hdf5", "mgh": "mgh"}


def _subject_number(value: object) -> int:
    """1, "1", "01", "subj01" and "sub-01" all name NSD subject 1."""
    text = str(value).strip().lower().removeprefix("sub-").removeprefix("subj")
    if not text.isdigit():
        raise ValueError(f"NSD subjects are numbers 1-8 (or subj01 / sub-01), got {value!r}")
    return int(text)


def _session_number(value: object) -> int:
    text = str(value).strip().lower().removeprefix("ses-").removeprefix("session")
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"NSD sessions are numbers from 1 (or ses-01), got {value!r}")
    return int(text)


class NSDConfig(BaseModel):
    """Options of the NSD-mirror import (all names as ``--set pipeline.key=value`` takes them)."""

    model_config = ConfigDict(extra="forbid")

    subjects: list[int] | None = None
    """NSD subjects (1-8; ``subj01``/``sub-01`` accepted); ``None``: all with betas on disk."""
    sessions: list[int] | None = None
    """1-based session numbers; ``None``: every session file on disk for each subject."""
    space: Literal["func1pt8mm", "func1mm", "fsaverage"] = "func1pt8mm"
    """Volume preparation (subject-native 1.8 or 1 mm) or fsaverage surface (Brain-IT)."""
    betas_format: Literal["nifti", "hdf5", "mgh"] | None = None
    """Volume betas: ``nifti`` or ``hdf5``; fsaverage: ``mgh``; ``None``: nifti / mgh."""
    betas_version: Literal["betas_fithrf_GLMdenoise_RR", "betas_fithrf", "betas_assumehrf"] = (
        "betas_fithrf_GLMdenoise_RR"
    )
    roi: str = "nsdgeneral"
    """NSD ROI file name without extension; voxels (vertices) with a value > 0 are kept."""
    surface_coordinates: str | None = "white"
    """fsaverage surface giving vertex positions (mm); ``None`` leaves them NaN."""
    convention: Literal["single-trial", "mindeye1-averaged"] = "single-trial"
    zscore: Literal["session", "none"] = "session"
    label_column: str | None = None
    """Column of nsd_stim_info_merged.csv used as stimulus label (e.g. ``cocoId``)."""
    load_images: bool = True
    image_size: int | None = None
    """Side (pixels) the 425 x 425 images are resized to; ``None`` keeps them."""

    @field_validator("subjects", mode="before")
    @classmethod
    def _parse_subjects(cls, value: object) -> object:
        if value is None:
            return None
        values = value if isinstance(value, list | tuple) else [value]
        if not values:
            raise ValueError("subjects must name at least one subject, or be null for all")
        return sorted({_subject_number(item) for item in values})

    @field_validator("sessions", mode="before")
    @classmethod
    def _parse_sessions(cls, value: object) -> object:
        if value is None:
            return None
        values = value if isinstance(value, list | tuple) else [value]
        if not values:
            raise ValueError("sessions must name at least one session, or be null for all")
        return sorted({_session_number(item) for item in values})

    @field_validator("image_size")
    @classmethod
    def _positive_size(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError(f"image_size must be a positive number of pixels, got {value}")
        return value

    @model_validator(mode="after")
    def _format_fits_space(self) -> NSDConfig:
        allowed = ("mgh",) if self.space == "fsaverage" else ("nifti", "hdf5")
        if self.betas_format is not None and self.betas_format not in allowed:
            raise ValueError(
                f"betas_format {self.betas_format!r} does not exist for space {self.space}; "
                f"use {' or '.join(allowed)}"
            )
        return self

    @property
    def resolved_format(self) -> str:
        return self.betas_format or _DEFAULT_FORMAT[self.space]


def prepare_nsd_mirror(root: Path | str, config: NSDConfig, progress: bool = True) -> PreparedFMRI:
    """Z-scored NSD betas of the chosen subjects and sessions from the NSD mirror at ``root``.

    Checks every file the import needs (and that the design, the stimulus table and the beta
    files agree) before reading any betas, so a bad mirror fails in seconds with a one-line
    :class:`UserInputError` naming the NSD path it expects.
    """
    mirror = _Mirror(Path(root))
    design = _read_expdesign(mirror)
    info = _read_stim_info(mirror, design, config.label_column)
    subjects = _select_subjects(mirror, design, config)
    plans = [_plan_subject(mirror, design, info, subject, config) for subject in subjects]
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
    plan: _SubjectPlan, config: NSDConfig, bar: tqdm
) -> tuple[np.ndarray, pd.DataFrame]:
    """float32 betas ``[row, voxel]`` of one subject, z-scored and in the chosen convention,
    with their trial rows."""
    betas = _load_betas(plan, config, bar)
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


class _Mirror:
    """Paths inside an NSD mirror; ``require`` turns a missing file into a clear error."""

    def __init__(self, root: Path) -> None:
        if not root.is_dir():
            raise UserInputError(f"NSD mirror {root} is not a directory; check --source")
        self.root = root
        self.sources: list[Path] = []

    def require(self, relative: str, why: str = "") -> Path:
        path = self.root / relative
        if not path.is_file():
            raise UserInputError(
                f"NSD mirror {self.root} lacks {relative}{why}; copy it from the NSD release "
                "to that path (same layout as the NSD S3 bucket) or fix --source"
            )
        self.sources.append(path)
        return path


# --- experiment design and stimulus table ---------------------------------------------------


@dataclass
class _Design:
    """``nsd_expdesign.mat``, 0-based: the image (10k index) of each trial, the 73k image of
    each subject's 10k index, and the shared images."""

    masterordering: np.ndarray  # int64 [n_trials], 0-based index into subjectim columns
    subjectim: np.ndarray  # int64 [n_subjects, n_images], 0-based nsdId
    shared_ids: np.ndarray  # int64 [n_shared], 0-based nsdId

    @property
    def n_subjects(self) -> int:
        return self.subjectim.shape[0]


def _read_expdesign(mirror: _Mirror) -> _Design:
    path = mirror.require(EXPDESIGN)
    fields = ("masterordering", "subjectim", "sharedix")
    arrays = _load_mat(path, fields)
    missing = [name for name in fields if name not in arrays]
    if missing:
        raise UserInputError(
            f"{EXPDESIGN} lacks {', '.join(missing)}; use the nsd_expdesign.mat of the NSD release"
        )
    order = _one_based(arrays["masterordering"], "masterordering").ravel()
    subjectim = _one_based(arrays["subjectim"], "subjectim")
    shared = _one_based(arrays["sharedix"], "sharedix").ravel()
    if subjectim.ndim != 2 or order.max() > subjectim.shape[1]:
        raise UserInputError(
            f"{EXPDESIGN}: masterordering indexes {order.max()} images but subjectim has shape "
            f"{subjectim.shape}; use the nsd_expdesign.mat of the NSD release"
        )
    return _Design(order - 1, subjectim - 1, shared - 1)


def _load_mat(path: Path, fields: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The named arrays of a MATLAB file, v5 (scipy) or v7.3 (HDF5, read with h5py)."""
    try:
        try:
            content = scipy.io.loadmat(path, variable_names=list(fields))
        except NotImplementedError:  # scipy's answer to v7.3 files, which are HDF5
            with h5py.File(path, "r") as mat:
                # HDF5 holds MATLAB's column-major arrays with their axes reversed.
                return {name: np.asarray(mat[name]).T for name in fields if name in mat}
    except (ValueError, OSError) as err:
        raise UserInputError(f"Cannot read {EXPDESIGN} ({err}); the file is damaged") from err
    return {name: value for name, value in content.items() if name in fields}


def _one_based(values: np.ndarray, name: str) -> np.ndarray:
    as_int = np.rint(values).astype(np.int64)
    if values.size == 0 or not np.array_equal(as_int, values) or as_int.min() < 1:
        raise UserInputError(
            f"{EXPDESIGN}: {name} must hold positive integers (1-based MATLAB indices); "
            "use the nsd_expdesign.mat of the NSD release"
        )
    return as_int


def _read_stim_info(mirror: _Mirror, design: _Design, label_column: str | None) -> pd.DataFrame:
    """``nsd_stim_info_merged.csv`` indexed by ``nsdId``; its shared images must match the
    design's."""
    path = mirror.require(STIM_INFO)
    info = pd.read_csv(path)
    for column in ("nsdId", "shared1000", label_column):
        if column is not None and column not in info.columns:
            fix = (
                "choose label_column from " + ", ".join(map(str, info.columns[:12]))
                if column == label_column
                else "use the nsd_stim_info_merged.csv of the NSD release"
            )
            raise UserInputError(f"{STIM_INFO} has no column {column!r}; {fix}")
    info = info.set_index("nsdId", drop=False)
    shared = info["shared1000"].astype(str).str.strip().str.lower().isin(["true", "1"])
    listed = np.sort(info.index[shared.to_numpy()].to_numpy())
    if not np.array_equal(listed, np.sort(design.shared_ids)):
        raise UserInputError(
            f"{STIM_INFO} marks {len(listed)} images shared1000 but {EXPDESIGN} lists "
            f"{len(design.shared_ids)} others in sharedix; use both files from one NSD release"
        )
    return info


# --- subjects, sessions and their trials -----------------------------------------------------


def _betas_dir(subject: int, config: NSDConfig) -> str:
    return f"nsddata_betas/ppdata/subj{subject:02d}/{config.space}/{config.betas_version}"


def _betas_names(session: int, config: NSDConfig) -> list[str]:
    name = f"betas_session{session:02d}.{_EXTENSIONS[config.resolved_format]}"
    if config.space == "fsaverage":
        return [f"{hemi}.{name}" for hemi in HEMISPHERES]
    return [name]


def _select_subjects(mirror: _Mirror, design: _Design, config: NSDConfig) -> list[int]:
    known = range(1, design.n_subjects + 1)
    if config.subjects is not None:
        for subject in config.subjects:
            if subject not in known:
                raise UserInputError(
                    f"Unknown NSD subject {subject}: {EXPDESIGN} has subjects 1-"
                    f"{design.n_subjects}; fix subjects"
                )
        return list(config.subjects)
    present = [s for s in known if (mirror.root / _betas_dir(s, config)).is_dir()]
    if not present:
        raise UserInputError(
            f"NSD mirror {mirror.root} has no {config.betas_version} betas in space "
            f"{config.space} (expected e.g. {_betas_dir(1, config)}/); fix --source or space"
        )
    return present


def _sessions_on_disk(mirror: _Mirror, subject: int, config: NSDConfig) -> list[int]:
    """Session numbers with a beta file (the lh one on fsaverage); at least one."""
    folder = mirror.root / _betas_dir(subject, config)
    prefix = "lh." if config.space == "fsaverage" else ""
    extension = _EXTENSIONS[config.resolved_format]
    pattern = re.compile(rf"{re.escape(prefix)}betas_session(\d+)\.{re.escape(extension)}")
    sessions = sorted(
        int(match.group(1))
        for path in (folder.iterdir() if folder.is_dir() else [])
        if (match := pattern.fullmatch(path.name))
    )
    if not sessions:
        first = f"{_betas_dir(subject, config)}/{_betas_names(1, config)[0]}"
        raise UserInputError(
            f"NSD mirror {mirror.root} lacks {first} (no session of subject {subject}); "
            "copy the betas from the NSD release or choose other subjects"
        )
    return sessions


@dataclass
class _Region:
    """The voxels (vertices) kept, with positions. Surface: ijk = (hemisphere 0/1, vertex, 0)."""

    ijk: np.ndarray  # int32 [voxel, 3]
    xyz: np.ndarray  # float32 [voxel, 3], mm
    roi_labels: np.ndarray
    affine: np.ndarray
    shape: tuple[int, int, int]
    hemisphere_masks: list[np.ndarray]  # surface: kept vertices of lh and rh; volume: []


@dataclass
class _SubjectPlan:
    subject: int
    files: list[list[Path]]  # per session: one file, or lh and rh
    trials: pd.DataFrame
    region: _Region


def _plan_subject(
    mirror: _Mirror, design: _Design, info: pd.DataFrame, subject: int, config: NSDConfig
) -> _SubjectPlan:
    """Everything about one subject that can be checked without reading betas."""
    on_disk = _sessions_on_disk(mirror, subject, config)
    folder = _betas_dir(subject, config)
    reference = mirror.root / folder / _betas_names(on_disk[0], config)[0]
    n_trials = _trials_in_file(reference)
    n_sessions = len(design.masterordering) // n_trials
    sessions = config.sessions or on_disk
    for session in sessions:
        if session > n_sessions:
            raise UserInputError(
                f"Session {session} of subject {subject} is out of range: {EXPDESIGN} has "
                f"{len(design.masterordering)} trials = {n_sessions} sessions of {n_trials}; "
                "fix sessions"
            )
    files = [
        [mirror.require(f"{folder}/{name}") for name in _betas_names(session, config)]
        for session in sessions
    ]
    for path in (path for session_files in files for path in session_files):
        if (count := _trials_in_file(path)) != n_trials:
            raise UserInputError(
                f"{path.relative_to(mirror.root)} has {count} trials but {reference.name} has "
                f"{n_trials}; every NSD session has the same number"
            )
    trials = _design_trials(design, subject, sessions, n_trials)
    _check_stim_info(info, subject, trials)
    trials["run"] = _runs(mirror, subject, trials, n_trials)
    region = (
        _surface_region(mirror, config)
        if config.space == "fsaverage"
        else _volume_region(mirror, subject, config)
    )
    return _SubjectPlan(subject, files, trials, region)


def _trials_in_file(path: Path) -> int:
    """Number of trials in a beta file, from its header only."""
    try:
        if path.suffix == ".hdf5":
            with h5py.File(path, "r") as file:
                if "betas" not in file:
                    raise UserInputError(f"{path} has no dataset 'betas'; it is not NSD betas")
                return int(file["betas"].shape[0])
        return int(nib.load(path).shape[-1])
    except (OSError, EOFError, nib.filebasedimages.ImageFileError) as err:
        raise UserInputError(
            f"Cannot read {path} ({err}); download it again from the NSD release"
        ) from err


def _design_trials(
    design: _Design, subject: int, sessions: list[int], trials_per_session: int
) -> pd.DataFrame:
    """The subject's trials in the chosen sessions, chronological, with NSD's repetition index."""
    image = design.subjectim[subject - 1, design.masterordering]
    repetition = pd.Series(image).groupby(image).cumcount().to_numpy()
    nsd_trial = np.arange(1, len(image) + 1)
    session = (nsd_trial - 1) // trials_per_session + 1
    keep = np.isin(session, sessions)
    return pd.DataFrame(
        {
            "nsd_trial": nsd_trial[keep],
            "session": session[keep],
            "nsd_id": image[keep],
            "repetition": repetition[keep],
            "split": np.where(np.isin(image[keep], design.shared_ids), "test", "train"),
        }
    )


def _check_stim_info(info: pd.DataFrame, subject: int, trials: pd.DataFrame) -> None:
    """The CSV's ``subjectN_repM`` must name the same trial as the design for every trial."""
    columns = [f"subject{subject}_rep{rep}" for rep in range(MAX_REPEATS)]
    missing = [column for column in columns if column not in info.columns]
    if missing:
        raise UserInputError(
            f"{STIM_INFO} has no column {missing[0]!r}; use the file of the NSD release"
        )
    if trials["repetition"].max() >= MAX_REPEATS:
        raise UserInputError(
            f"{EXPDESIGN} shows an image more than {MAX_REPEATS} times to subject {subject}; "
            "use the nsd_expdesign.mat of the NSD release"
        )
    listed = info.reindex(trials["nsd_id"].to_numpy())[columns].to_numpy()
    expected = listed[np.arange(len(trials)), trials["repetition"].to_numpy()]
    wrong = expected != trials["nsd_trial"].to_numpy()
    if wrong.any():
        row = trials[wrong].iloc[0]
        listed_trial = expected[wrong][0]
        says = "has no such row" if pd.isna(listed_trial) else f"says trial {int(listed_trial)}"
        raise UserInputError(
            f"{EXPDESIGN} has subject {subject} see nsdId {row['nsd_id']} (repetition "
            f"{row['repetition']}) at trial {row['nsd_trial']} but {STIM_INFO} {says}; "
            "use both files from one NSD release"
        )


def _runs(mirror: _Mirror, subject: int, trials: pd.DataFrame, per_session: int) -> np.ndarray:
    """Run numbers from ``responses.tsv`` (its rows are the trials in order); 0 without it."""
    relative = f"nsddata/ppdata/subj{subject:02d}/behav/responses.tsv"
    if not (mirror.root / relative).is_file():
        return np.zeros(len(trials), dtype=np.int64)
    path = mirror.require(relative)
    try:
        responses = pd.read_csv(path, sep="\t", usecols=["SESSION", "RUN", "73KID"])
    except ValueError as err:
        raise UserInputError(f"{relative}: {err}; use the file of the NSD release") from err
    responses["index"] = responses.groupby("SESSION").cumcount()
    wanted = pd.DataFrame(
        {"SESSION": trials["session"], "index": (trials["nsd_trial"] - 1) % per_session}
    )
    found = wanted.merge(responses, on=["SESSION", "index"], how="left")
    shown = found["73KID"].to_numpy() - 1
    wrong = shown != trials["nsd_id"].to_numpy()  # NaN (no such row) is wrong too
    if wrong.any():
        row = trials[wrong].iloc[0]
        raise UserInputError(
            f"{relative} does not list nsdId {row['nsd_id']} + 1 as trial {row['nsd_trial']} "
            f"(session {row['session']}) like {EXPDESIGN}; use both files from one NSD release"
        )
    return found["RUN"].to_numpy(dtype=np.int64)


# --- ROI voxels and vertices -----------------------------------------------------------------


def _volume_region(mirror: _Mirror, subject: int, config: NSDConfig) -> _Region:
    relative = f"nsddata/ppdata/subj{subject:02d}/{config.space}/roi/{config.roi}.nii.gz"
    image = nib.load(mirror.require(relative))
    codes = np.rint(np.asanyarray(image.dataobj)).astype(np.int32)
    if codes.ndim != 3:
        raise UserInputError(f"{relative} has shape {codes.shape}, expected a 3D ROI volume")
    ijk = np.argwhere(codes > 0).astype(np.int32)
    if not len(ijk):
        raise UserInputError(f"{relative} marks no voxel (> 0); choose another roi")
    return _Region(
        ijk=ijk,
        xyz=apply_affine(image.affine, ijk).astype(np.float32),
        roi_labels=_roi_names(mirror, config.roi, codes[tuple(ijk.T)]),
        affine=image.affine.copy(),
        shape=tuple(int(n) for n in codes.shape),
        hemisphere_masks=[],
    )


def _surface_region(mirror: _Mirror, config: NSDConfig) -> _Region:
    codes, positions = [], []
    for hemi in HEMISPHERES:
        relative = f"{FSAVERAGE}/label/{hemi}.{config.roi}.mgz"
        values = np.asanyarray(nib.load(mirror.require(relative)).dataobj).reshape(-1)
        codes.append(np.rint(values).astype(np.int32))
        positions.append(_vertex_positions(mirror, hemi, len(values), config))
    if codes[0].shape != codes[1].shape:
        raise UserInputError(
            f"{FSAVERAGE}/label/lh.{config.roi}.mgz and rh.{config.roi}.mgz have different "
            "vertex counts; use the fsaverage labels of the NSD release"
        )
    masks = [hemi_codes > 0 for hemi_codes in codes]
    ijk = np.concatenate(
        [
            np.column_stack([np.full(mask.sum(), h), np.flatnonzero(mask), np.zeros(mask.sum())])
            for h, mask in enumerate(masks)
        ]
    ).astype(np.int32)
    if not len(ijk):
        raise UserInputError(f"{FSAVERAGE}/label/*.{config.roi}.mgz mark no vertex (> 0)")
    return _Region(
        ijk=ijk,
        xyz=np.concatenate([pos[mask] for pos, mask in zip(positions, masks, strict=True)]),
        roi_labels=_roi_names(
            mirror, config.roi, np.concatenate([c[m] for c, m in zip(codes, masks, strict=True)])
        ),
        affine=np.eye(4),
        shape=(len(HEMISPHERES), len(codes[0]), 1),
        hemisphere_masks=masks,
    )


def _vertex_positions(mirror: _Mirror, hemi: str, n_vertices: int, config: NSDConfig) -> np.ndarray:
    """float32 ``[vertex, 3]`` mm positions on the chosen fsaverage surface (NaN without one)."""
    if config.surface_coordinates is None:
        return np.full((n_vertices, 3), np.nan, dtype=np.float32)
    relative = f"{FSAVERAGE}/surf/{hemi}.{config.surface_coordinates}"
    path = mirror.require(relative, why=" (vertex positions; or set surface_coordinates=null)")
    positions = nib.freesurfer.read_geometry(str(path))[0].astype(np.float32)
    if len(positions) != n_vertices:
        raise UserInputError(
            f"{relative} has {len(positions)} vertices but the {hemi} ROI labels have "
            f"{n_vertices}; use fsaverage files of the NSD release"
        )
    return positions


def _roi_names(mirror: _Mirror, roi: str, codes: np.ndarray) -> np.ndarray:
    """Label of each kept code: the ctab name when NSD ships one, else ``roi`` or ``roi-<code>``."""
    names: dict[int, str] = {}
    relative = f"{FSAVERAGE}/label/{roi}.mgz.ctab"
    if (mirror.root / relative).is_file():
        for line in mirror.require(relative).read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].lstrip("-").isdigit():
                names[int(parts[0])] = parts[1]
    if not names and set(np.unique(codes).tolist()) == {1}:
        names = {1: roi}
    return np.array([names.get(int(code), f"{roi}-{code}") for code in codes])


# --- betas -----------------------------------------------------------------------------------


def _load_betas(plan: _SubjectPlan, config: NSDConfig, bar: tqdm) -> np.ndarray:
    """Percent-signal-change betas ``[trial, voxel]`` of all planned sessions, in trial order."""
    per_session = []
    for session_files in plan.files:
        parts = []
        for hemi_index, path in enumerate(session_files):
            bar.set_postfix_str(f"subj{plan.subject:02d} {path.name}", refresh=False)
            try:
                if config.space == "fsaverage":
                    parts.append(
                        _read_surface_betas(path, plan.region.hemisphere_masks[hemi_index])
                    )
                elif path.suffix == ".hdf5":
                    parts.append(_read_hdf5_betas(path, plan.region))
                else:
                    parts.append(_read_nifti_betas(path, plan.region))
            except (OSError, EOFError, zlib.error) as err:  # e.g. an interrupted download
                raise UserInputError(
                    f"Cannot read {path} ({err}); download it again from the NSD release"
                ) from err
            bar.update()
        per_session.append(np.hstack(parts))
    return np.concatenate(per_session)


def _percent_signal_change(values: np.ndarray, stored: np.dtype) -> np.ndarray:
    values = values.astype(np.float32, copy=False)
    return values / np.float32(INT16_BETA_SCALE) if np.issubdtype(stored, np.integer) else values


def _read_nifti_betas(path: Path, region: _Region) -> np.ndarray:
    image = nib.load(path)
    if image.ndim != 4 or tuple(image.shape[:3]) != region.shape:
        raise UserInputError(
            f"{path.name} has shape {tuple(image.shape)} but the ROI grid is {region.shape}; "
            "use betas and ROI of one NSD space"
        )
    if not np.allclose(image.affine, region.affine, atol=1e-3):
        # One message for all sessions (warnings shows each distinct text once).
        warnings.warn(
            "NSD beta files and ROI files have different NIfTI affines; voxel positions come "
            "from the ROI files (both are on NSD's grid of the space)",
            stacklevel=2,
        )
    proxy = image.dataobj
    raw = proxy.get_unscaled() if nib.is_proxy(proxy) else np.asanyarray(proxy)
    i, j, k = region.ijk.T
    values = raw[i, j, k].T  # [trial, voxel]
    slope, inter = (float(proxy.slope), float(proxy.inter)) if nib.is_proxy(proxy) else (1, 0)
    if slope != 1.0 or inter != 0.0:
        values = values * np.float32(slope) + np.float32(inter)
    return _percent_signal_change(values, image.get_data_dtype())


def _read_hdf5_betas(path: Path, region: _Region) -> np.ndarray:
    with h5py.File(path, "r") as file:
        data = file["betas"]
        if data.ndim != 4 or tuple(data.shape[:0:-1]) != region.shape:
            raise UserInputError(
                f"{path.name} has betas of shape {data.shape} ([trial, z, y, x]) but the ROI grid "
                f"is {region.shape} (x, y, z); use betas and ROI of one NSD space"
            )
        # NSD's files are chunked one voxel (all trials) per chunk: reading the ROI's bounding
        # box touches only those chunks instead of the whole ~1 GB session.
        low = region.ijk.min(axis=0)
        high = region.ijk.max(axis=0) + 1
        box = data[:, low[2] : high[2], low[1] : high[1], low[0] : high[0]]
        dtype = data.dtype
    i, j, k = (region.ijk - low).T
    return _percent_signal_change(box[:, k, j, i], dtype)


def _read_surface_betas(path: Path, mask: np.ndarray) -> np.ndarray:
    image = nib.load(path)
    if image.shape[0] != len(mask) or int(np.prod(image.shape[1:-1])) != 1:
        raise UserInputError(
            f"{path.name} has shape {tuple(image.shape)}, expected ({len(mask)}, 1, 1, trials) "
            "like the fsaverage ROI labels"
        )
    raw = np.asanyarray(image.dataobj).reshape(len(mask), -1)
    return _percent_signal_change(raw[mask].T, image.get_data_dtype())


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
