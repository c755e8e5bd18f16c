"""Write a tiny fake NSD mirror in NSD's release layout and file formats, for the NSD tests.

Same paths, file types, array layouts and conventions as the real release, only smaller:
``trials_per_session`` trials per session instead of 750, a ``shape`` grid instead of 81 x 104
x 83, ``n_vertices`` per hemisphere instead of 163842, ``n_images`` instead of 73,000 (each
``image_px`` square), each subject's ``images_per_subject`` instead of 10,000 (the first
``n_shared`` shared by all, as in ``subjectim``).

- ``nsd_expdesign.mat`` (scipy.io.savemat, MATLAB doubles; or a v7.3/HDF5 file) with
  ``masterordering`` ``[1, design_sessions * trials_per_session]``, ``subjectim`` ``[8,
  images_per_subject]`` and ``sharedix`` ``[1, n_shared]``, all 1-based;
- ``nsd_stim_info_merged.csv`` (pandas index column first, like the release) with ``nsdId``,
  ``cocoId``, ``shared1000`` and ``subjectN``/``subjectN_repM`` for the 8 subjects, computed
  from the design over all ``design_sessions``;
- per subject with data and session: int16 NIfTI ``[X, Y, Z, T]`` and HDF5 ``betas`` ``[T, Z, Y,
  X]`` (chunks of one voxel) holding 300 x percent signal change, zero outside the brain, and
  float32 fsaverage ``.mgh`` ``[V, 1, 1, T]`` in percent signal change;
- the ``nsdgeneral`` ROI (-1 outside the brain, 0, 1 inside), the fsaverage labels
  ``{lh,rh}.nsdgeneral.mgz`` and ``{lh,rh}.white`` surfaces;
- ``responses.tsv`` (SUBJECT, SESSION, RUN, TRIAL, 73KID) for subject 1 only, so both the run
  numbers and their absence are exercised;
- ``nsd_stimuli.hdf5`` with ``imgBrick`` uint8 ``[n_images, image_px, image_px, 3]``.

Betas differ between sessions by a per-voxel offset and scale, so z-scoring per session matters.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import scipy.io

N_NSD_SUBJECTS = 8
RUNS_PER_SESSION = 3
EXPDESIGN = "nsddata/experiments/nsd/nsd_expdesign.mat"
STIM_INFO = "nsddata/experiments/nsd/nsd_stim_info_merged.csv"
STIMULI = "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5"
VERSION = "betas_fithrf_GLMdenoise_RR"


@dataclass
class NSDTruth:
    """What the factory wrote.

    ``trials[subject]``: every design trial of the subject over ``design_sessions`` (columns
    nsd_trial 1-based, session, nsd_id 0-based, repetition, shared, run).
    ``volume_betas[subject][session]``: int16 ``[X, Y, Z, T]`` as stored;
    ``surface_betas[subject][session]``: float32 ``[2, V, T]`` (lh, rh) as stored.
    """

    trials: dict[int, pd.DataFrame]
    volume_betas: dict[int, dict[int, np.ndarray]]
    surface_betas: dict[int, dict[int, np.ndarray]]
    roi: dict[int, np.ndarray]
    affine: np.ndarray
    surface_roi: np.ndarray  # int [2, V]
    surface_positions: np.ndarray  # float32 [2, V, 3]
    images: np.ndarray
    shared_ids: np.ndarray  # 0-based
    trials_per_session: int


def betas_path(subject: int, session: int, extension: str = "nii.gz", hemi: str = "") -> str:
    space = "fsaverage" if hemi else "func1pt8mm"
    prefix = f"{hemi}." if hemi else ""
    return (
        f"nsddata_betas/ppdata/subj{subject:02d}/{space}/{VERSION}/"
        f"{prefix}betas_session{session:02d}.{extension}"
    )


def roi_path(subject: int) -> str:
    return f"nsddata/ppdata/subj{subject:02d}/func1pt8mm/roi/nsdgeneral.nii.gz"


def write_nsd_mirror(
    root: Path,
    subjects: tuple[int, ...] = (1, 2),
    n_sessions: int = 2,
    design_sessions: int = 3,
    trials_per_session: int = 30,
    shape: tuple[int, int, int] = (8, 9, 7),
    n_vertices: int = 40,
    n_images: int = 300,
    images_per_subject: int = 40,
    n_shared: int = 6,
    image_px: int = 12,
    mat_v73: bool = False,
    seed: int = 0,
) -> NSDTruth:
    """Write the mirror under ``root`` (data for ``subjects`` x sessions 1..``n_sessions``)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    n_trials = design_sessions * trials_per_session
    # Each of a subject's images 3 times in random order, cut to the design's length: images
    # are seen 1-3 times, repeats fall in one session or across sessions.
    masterordering = rng.permutation(np.repeat(np.arange(1, images_per_subject + 1), 3))
    masterordering = masterordering[:n_trials]
    shared = rng.choice(n_images, n_shared, replace=False)
    others = rng.permutation(np.setdiff1d(np.arange(n_images), shared))
    per_subject = images_per_subject - n_shared
    subjectim = np.stack(
        [
            np.concatenate([shared, others[s * per_subject : (s + 1) * per_subject]])
            for s in range(N_NSD_SUBJECTS)
        ]
    )  # 0-based here, written 1-based
    trials = {
        subject: _subject_trials(subject, masterordering, subjectim, shared, trials_per_session)
        for subject in range(1, N_NSD_SUBJECTS + 1)
    }
    _write_expdesign(root / EXPDESIGN, masterordering, subjectim + 1, shared + 1, mat_v73)
    _write_stim_info(root / STIM_INFO, n_images, shared, trials, rng)
    images = rng.integers(0, 256, (n_images, image_px, image_px, 3), dtype=np.uint8)
    _write_hdf5(root / STIMULI, "imgBrick", images)

    affine = _affine()
    surface_roi = (rng.random((2, n_vertices)) < 0.4).astype(np.int32)
    surface_positions = rng.normal(0, 50, (2, n_vertices, 3)).astype(np.float32)
    _write_surface_files(root, surface_roi, surface_positions)
    volume_betas: dict[int, dict[int, np.ndarray]] = {}
    surface_betas: dict[int, dict[int, np.ndarray]] = {}
    rois = {}
    for subject in subjects:
        rois[subject] = _roi(shape, rng)
        _write_nifti(root / roi_path(subject), rois[subject].astype(np.int16), affine)
        volume_betas[subject], surface_betas[subject] = {}, {}
        for session in range(1, n_sessions + 1):
            volume = _volume_betas(rois[subject] >= 0, trials_per_session, rng)
            _write_nifti(root / betas_path(subject, session), volume, affine)
            _write_hdf5(
                root / betas_path(subject, session, "hdf5"),
                "betas",
                volume.transpose(3, 2, 1, 0),  # MATLAB's X x Y x Z x T, as h5py sees it
                chunks=(trials_per_session, 1, 1, 1),
            )
            volume_betas[subject][session] = volume
            surface = _surface_betas(n_vertices, trials_per_session, rng)
            for h, hemi in enumerate(("lh", "rh")):
                path = root / betas_path(subject, session, "mgh", hemi)
                path.parent.mkdir(parents=True, exist_ok=True)
                nib.save(nib.MGHImage(surface[h][:, None, None, :], np.eye(4)), path)
            surface_betas[subject][session] = surface
    _write_responses(root, 1, trials[1], n_sessions)
    return NSDTruth(
        trials=trials,
        volume_betas=volume_betas,
        surface_betas=surface_betas,
        roi=rois,
        affine=affine,
        surface_roi=surface_roi,
        surface_positions=surface_positions,
        images=images,
        shared_ids=np.sort(shared),
        trials_per_session=trials_per_session,
    )


def _subject_trials(
    subject: int,
    masterordering: np.ndarray,
    subjectim: np.ndarray,
    shared: np.ndarray,
    trials_per_session: int,
) -> pd.DataFrame:
    nsd_id = subjectim[subject - 1, masterordering - 1]
    rows = []
    seen: dict[int, int] = {}
    for t, image in enumerate(nsd_id):
        rows.append(
            {
                "nsd_trial": t + 1,
                "session": t // trials_per_session + 1,
                "nsd_id": int(image),
                "repetition": seen.get(int(image), 0),
                "shared": bool(np.isin(image, shared)),
                "run": (t % trials_per_session) * RUNS_PER_SESSION // trials_per_session + 1,
            }
        )
        seen[int(image)] = seen.get(int(image), 0) + 1
    return pd.DataFrame(rows)


def _write_expdesign(
    path: Path, order: np.ndarray, subjectim: np.ndarray, sharedix: np.ndarray, v73: bool
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        "masterordering": order[None, :].astype(np.float64),
        "subjectim": subjectim.astype(np.float64),
        "sharedix": sharedix[None, :].astype(np.float64),
        "basiccnt": np.zeros((3, 40)),
    }
    if not v73:
        scipy.io.savemat(path, arrays)
        return
    # A v7.3 MAT file: HDF5 behind a 512-byte MATLAB header, arrays with reversed axes.
    with h5py.File(path, "w", userblock_size=512) as mat:
        for name, value in arrays.items():
            mat.create_dataset(name, data=value.T)
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5"
    with path.open("r+b") as file:
        file.write(header.ljust(116) + b"\0" * 8 + b"\x00\x02" + b"IM")


def _write_stim_info(
    path: Path,
    n_images: int,
    shared: np.ndarray,
    trials: dict[int, pd.DataFrame],
    rng: np.random.Generator,
) -> None:
    table = pd.DataFrame(
        {
            "cocoId": rng.choice(600_000, n_images, replace=False),
            "cocoSplit": np.where(rng.random(n_images) < 0.5, "train2017", "val2017"),
            "cropBox": "(0, 0, 0.1, 0.1)",
            "loss": 0.0,
            "nsdId": np.arange(n_images),
            "flagged": False,
            "BOLD5000": False,
            "shared1000": np.isin(np.arange(n_images), shared),
        }
    )
    for subject, subject_trials in trials.items():
        table[f"subject{subject}"] = np.isin(table["nsdId"], subject_trials["nsd_id"]).astype(int)
    for subject, subject_trials in trials.items():
        for rep in range(3):
            column = np.zeros(n_images, dtype=np.int64)
            shown = subject_trials[subject_trials["repetition"] == rep]
            column[shown["nsd_id"].to_numpy()] = shown["nsd_trial"].to_numpy()
            table[f"subject{subject}_rep{rep}"] = column
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path)


def _write_hdf5(path: Path, name: str, data: np.ndarray, chunks: tuple | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as file:
        file.create_dataset(name, data=data, chunks=chunks)


def _write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(data, affine)
    image.header.set_data_dtype(data.dtype)
    nib.save(image, path)


def _affine() -> np.ndarray:
    """1.8 mm voxels, a rotation about z and an offset, so xyz != ijk * 1.8."""
    angle = np.radians(12.0)
    affine = np.eye(4)
    affine[:3, :3] = 1.8 * np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    affine[:3, 3] = [-70.0, -90.5, -60.25]
    return affine


def _roi(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """-1 outside a brain box, 0 in the brain, 1 on about a third of the brain."""
    roi = np.full(shape, -1, dtype=np.int16)
    roi[1:-1, 1:-1, 1:-1] = 0
    brain = roi == 0
    roi[brain & (rng.random(shape) < 0.35)] = 1
    return roi


def _volume_betas(brain: np.ndarray, n_trials: int, rng: np.random.Generator) -> np.ndarray:
    """int16 ``[X, Y, Z, T]`` = 300 x percent signal change, with a per-session offset/scale."""
    offset = rng.normal(0.0, 1.0, brain.shape)[..., None]
    scale = rng.uniform(0.5, 2.0, brain.shape)[..., None]
    psc = offset + scale * rng.normal(0.0, 1.0, (*brain.shape, n_trials))
    return np.where(brain[..., None], np.rint(300 * psc), 0).astype(np.int16)


def _surface_betas(n_vertices: int, n_trials: int, rng: np.random.Generator) -> np.ndarray:
    offset = rng.normal(0.0, 1.0, (2, n_vertices, 1))
    return (offset + rng.normal(0.0, 1.5, (2, n_vertices, n_trials))).astype(np.float32)


def _write_surface_files(root: Path, roi: np.ndarray, positions: np.ndarray) -> None:
    label = root / "nsddata/freesurfer/fsaverage/label"
    surf = root / "nsddata/freesurfer/fsaverage/surf"
    label.mkdir(parents=True, exist_ok=True)
    surf.mkdir(parents=True, exist_ok=True)
    faces = np.array([[0, 1, 2]], dtype=np.int32)
    for h, hemi in enumerate(("lh", "rh")):
        nib.save(
            nib.MGHImage(roi[h][:, None, None].astype(np.float32), np.eye(4)),
            label / f"{hemi}.nsdgeneral.mgz",
        )
        nib.freesurfer.write_geometry(str(surf / f"{hemi}.white"), positions[h], faces)


def _write_responses(root: Path, subject: int, trials: pd.DataFrame, n_sessions: int) -> None:
    done = trials[trials["session"] <= n_sessions]
    table = pd.DataFrame(
        {
            "SUBJECT": subject,
            "SESSION": done["session"],
            "RUN": done["run"],
            "TRIAL": done.groupby(["session", "run"]).cumcount() + 1,
            "73KID": done["nsd_id"] + 1,
            "ISOLD": (done["repetition"] > 0).astype(int),
        }
    )
    path = root / f"nsddata/ppdata/subj{subject:02d}/behav/responses.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, sep="\t", index=False)
