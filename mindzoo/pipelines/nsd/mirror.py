"""The NSD mirror: its release layout, the experiment design and the stimulus table.

Paths are relative to the mirror root, exactly as on NSD's S3 bucket (``XX`` = subject 01-08,
``YY`` = session 01-40):

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

:class:`Mirror` resolves these paths and records the files read. This module reads the design
and the stimulus table; the other files are read by :mod:`mindzoo.pipelines.nsd.subjects`,
:mod:`mindzoo.pipelines.nsd.regions`, :mod:`mindzoo.pipelines.nsd.betas` and
:mod:`mindzoo.pipelines.nsd.pipeline`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.io

from mindzoo.errors import UserInputError
from mindzoo.pipelines.nsd.config import NSDConfig

EXPDESIGN = "nsddata/experiments/nsd/nsd_expdesign.mat"
STIM_INFO = "nsddata/experiments/nsd/nsd_stim_info_merged.csv"
STIMULI = "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5"
FSAVERAGE = "nsddata/freesurfer/fsaverage"
HEMISPHERES = ("lh", "rh")
VOLUME_SPACES = ("func1pt8mm", "func1mm")
# NSD showed each image at most 3 times; the CSV has subjectN_rep0..2.
MAX_REPEATS = 3
_EXTENSIONS = {"nifti": "nii.gz", "hdf5": "hdf5", "mgh": "mgh"}


class Mirror:
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


@dataclass
class Design:
    """``nsd_expdesign.mat``, 0-based: the image (10k index) of each trial, the 73k image of
    each subject's 10k index, and the shared images."""

    masterordering: np.ndarray  # int64 [n_trials], 0-based index into subjectim columns
    subjectim: np.ndarray  # int64 [n_subjects, n_images], 0-based nsdId
    shared_ids: np.ndarray  # int64 [n_shared], 0-based nsdId

    @property
    def n_subjects(self) -> int:
        return self.subjectim.shape[0]


def read_expdesign(mirror: Mirror) -> Design:
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
    return Design(order - 1, subjectim - 1, shared - 1)


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


def read_stim_info(mirror: Mirror, design: Design, label_column: str | None) -> pd.DataFrame:
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


def betas_dir(subject: int, config: NSDConfig) -> str:
    return f"nsddata_betas/ppdata/subj{subject:02d}/{config.space}/{config.betas_version}"


def betas_names(session: int, config: NSDConfig) -> list[str]:
    name = f"betas_session{session:02d}.{_EXTENSIONS[config.resolved_format]}"
    if config.space == "fsaverage":
        return [f"{hemi}.{name}" for hemi in HEMISPHERES]
    return [name]


def sessions_on_disk(mirror: Mirror, subject: int, config: NSDConfig) -> list[int]:
    """Session numbers with a beta file (the lh one on fsaverage); at least one."""
    folder = mirror.root / betas_dir(subject, config)
    prefix = "lh." if config.space == "fsaverage" else ""
    extension = _EXTENSIONS[config.resolved_format]
    pattern = re.compile(rf"{re.escape(prefix)}betas_session(\d+)\.{re.escape(extension)}")
    sessions = sorted(
        int(match.group(1))
        for path in (folder.iterdir() if folder.is_dir() else [])
        if (match := pattern.fullmatch(path.name))
    )
    if not sessions:
        first = f"{betas_dir(subject, config)}/{betas_names(1, config)[0]}"
        raise UserInputError(
            f"NSD mirror {mirror.root} lacks {first} (no session of subject {subject}); "
            "copy the betas from the NSD release or choose other subjects"
        )
    return sessions
