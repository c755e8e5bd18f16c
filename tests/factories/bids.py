"""Write tiny BIDS fMRI datasets with known single-trial betas, for the fMRI pipeline tests.

Generative model, per subject, run and voxel::

    bold(t) = baseline + sum_trials beta[trial] * hrf_regressor[trial](t) + drift(t) + noise(t)

- ``hrf_regressor`` comes from ``nilearn.glm.first_level.compute_regressor`` (glover HRF, a
  boxcar of each trial's duration), an implementation independent of the pipeline's own;
- ``beta`` ~ N(0, beta_sd) per trial and voxel (these are the true betas returned);
- ``drift`` is a random mix of the cosines below ``high_pass_hz`` (what the pipeline's drift
  basis spans), ``noise`` is white with sd ``noise_sd``.

Stimuli: ``n_test`` shared test images that every subject sees in every run, plus
``n_train_per_run`` new training images per run and subject; every image is a small random PNG
under ``stimuli/``. The layout is that of the synthetic simulator (see the fMRI pipeline
docstring): sidecars at the top and per run, events with stim_file/stim_id/category/split,
``derivatives/masks`` with a brain mask and a two-ROI dseg.

``write_fmriprep`` adds fMRIPrep outputs for those runs under fMRIPrep's real names
(``*_space-T1w_desc-preproc_bold.nii.gz`` + ``.json``, ``*_space-T1w_desc-brain_mask.nii.gz``,
``*_desc-confounds_timeseries.tsv`` with its column names and ``n/a`` first rows): the same
signal on another grid, plus a motion artefact that only the confounds explain.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from nilearn.glm.first_level import compute_regressor
from nilearn.glm.first_level.design_matrix import create_cosine_drift
from PIL import Image

TASK = "images"
ROI_NAMES = {1: "V1", 2: "LOC"}
MOTION = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")


@dataclass
class FactoryTruth:
    """What the factory wrote, for comparison with the pipeline's output.

    ``trials[subject]`` is chronological (columns session, run, onset, stim_id, stim_file,
    split, category, repetition) and ``betas[subject]`` ``[trial, x, y, z]`` matches its rows.
    ``signal_roi[subject]`` is the boolean volume of dseg > 0 inside the brain mask.
    """

    trials: dict[str, pd.DataFrame]
    betas: dict[str, np.ndarray]
    signal_roi: dict[str, np.ndarray]
    dseg: dict[str, np.ndarray]
    affine: np.ndarray
    tr: float


def tilted_affine(voxel_mm: float = 2.5) -> np.ndarray:
    """A voxel-to-mm affine with a rotation about z and an offset, so xyz != ijk * size."""
    angle = math.radians(10.0)
    rotation = np.array(
        [
            [math.cos(angle), -math.sin(angle), 0.0],
            [math.sin(angle), math.cos(angle), 0.0],
            [0, 0, 1],
        ]
    )
    affine = np.eye(4)
    affine[:3, :3] = rotation * np.array([voxel_mm, voxel_mm, voxel_mm * 1.2])
    affine[:3, 3] = [-14.0, -18.5, -9.0]
    return affine


def write_bids_fmri(
    root: Path,
    *,
    n_subjects: int = 2,
    n_sessions: int = 2,
    n_runs: int = 2,
    shape: tuple[int, int, int] = (12, 12, 8),
    tr: float = 1.5,
    n_test: int = 3,
    n_train_per_run: int = 6,
    trial_spacing_s: float = 8.0,
    duration_s: float = 2.0,
    n_frames: int | None = None,
    beta_sd: float = 2.0,
    noise_sd: float = 0.05,
    high_pass_hz: float = 0.01,
    with_sessions: bool = True,
    extension: str = ".nii.gz",
    dtype: str = "float32",
    image_px: int = 8,
    seed: int = 0,
) -> FactoryTruth:
    """Write a BIDS fMRI dataset under ``root`` and return its ground truth."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    affine = tilted_affine()
    n_trials = n_test + n_train_per_run
    needed = math.ceil((4.0 + n_trials * trial_spacing_s + 24.0) / tr)
    n_frames = n_frames or needed
    if n_frames < needed:
        raise ValueError(f"n_frames={n_frames} is too short for {n_trials} trials ({needed})")

    write_json(root / "dataset_description.json", {"Name": "factory", "BIDSVersion": "1.8.0"})
    write_json(root / f"task-{TASK}_bold.json", {"TaskName": TASK, "RepetitionTime": tr})
    subjects = [f"{i + 1:02d}" for i in range(n_subjects)]
    pd.DataFrame({"participant_id": [f"sub-{s}" for s in subjects]}).to_csv(
        root / "participants.tsv", sep="\t", index=False
    )

    stimuli = _StimulusWriter(root / "stimuli", rng, image_px)
    test_files = [stimuli.new("test") for _ in range(n_test)]
    truth_trials, truth_betas, rois, dsegs = {}, {}, {}, {}
    for subject in subjects:
        brain, dseg = _masks(shape, rng)
        _write_masks(root, subject, brain, dseg, affine, extension)
        rois[subject] = brain & (dseg > 0)
        dsegs[subject] = dseg
        counts: dict[str, int] = {}
        subject_trials, subject_betas = [], []
        # dark outside the brain, as EPI is, so nilearn's EPI mask finds the brain
        baseline = np.where(brain, rng.uniform(80.0, 120.0, shape), rng.uniform(0.0, 5.0, shape))
        for session in range(1, n_sessions + 1):
            for run in range(1, n_runs + 1):
                files = test_files + [stimuli.new("train") for _ in range(n_train_per_run)]
                files = [files[i] for i in rng.permutation(len(files))]
                onsets = 4.0 + np.arange(n_trials) * trial_spacing_s
                onsets += rng.uniform(-1.0, 1.0, size=n_trials)
                betas = rng.normal(0.0, beta_sd, size=(n_trials, *shape)).astype(np.float32)
                bold = simulate_bold(
                    baseline, betas, onsets, duration_s, n_frames, tr, high_pass_hz, noise_sd, rng
                )
                stem = _stem(subject, session if with_sessions else None, run)
                func = _func_dir(root, subject, session if with_sessions else None)
                write_bold_image(func / f"{stem}_bold{extension}", bold, affine, tr, dtype)
                write_json(func / f"{stem}_bold.json", {"RepetitionTime": tr, "TaskName": TASK})
                events = _events(files, onsets, duration_s, stimuli)
                events.to_csv(func / f"{stem}_events.tsv", sep="\t", index=False, na_rep="n/a")
                for file, onset, beta in zip(files, onsets, betas, strict=True):
                    subject_trials.append(
                        {
                            "session": session if with_sessions else 1,
                            "run": run,
                            "onset": float(onset),
                            "stim_file": file,
                            "stim_id": stimuli.ids[file],
                            "split": stimuli.splits[file],
                            "category": stimuli.categories[file],
                            "repetition": counts.get(file, 0),
                        }
                    )
                    counts[file] = counts.get(file, 0) + 1
                    subject_betas.append(beta)
        truth_trials[subject] = pd.DataFrame(subject_trials)
        truth_betas[subject] = np.stack(subject_betas)
    stimuli.write_table()
    return FactoryTruth(truth_trials, truth_betas, rois, dsegs, affine, tr)


def _stem(subject: str, session: int | None, run: int) -> str:
    session_part = f"_ses-{session:02d}" if session is not None else ""
    return f"sub-{subject}{session_part}_task-{TASK}_run-{run:02d}"


def _func_dir(root: Path, subject: str, session: int | None) -> Path:
    folder = root / f"sub-{subject}"
    if session is not None:
        folder = folder / f"ses-{session:02d}"
    folder = folder / "func"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def bold_path(root: Path, subject: str = "01", session: int | None = 1, run: int = 1) -> Path:
    """Path of a run the factory wrote (whatever its NIfTI extension)."""
    folder = _func_dir(root, subject, session)
    return next(folder.glob(f"{_stem(subject, session, run)}_bold.nii*"))


def simulate_bold(
    baseline: np.ndarray,
    betas: np.ndarray,
    onsets: np.ndarray,
    duration_s: float,
    n_frames: int,
    tr: float,
    high_pass_hz: float,
    noise_sd: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """float32 ``[x, y, z, frame]``: baseline + HRF-convolved trial betas + drift + noise."""
    frame_times = np.arange(n_frames) * tr
    regressors = np.column_stack(
        [
            compute_regressor(np.array([[onset], [duration_s], [1.0]]), "glover", frame_times)[0][
                :, 0
            ]
            for onset in onsets
        ]
    )
    shape = baseline.shape
    signal = regressors @ betas.reshape(len(onsets), -1)
    cosines = create_cosine_drift(high_pass_hz, frame_times)[:, :-1]
    drift = cosines @ rng.normal(0.0, 3.0, size=(cosines.shape[1], signal.shape[1]))
    noise = rng.normal(0.0, noise_sd, size=signal.shape)
    series = baseline.reshape(1, -1).astype(np.float32) + signal + drift + noise
    return np.moveaxis(series.reshape(n_frames, *shape), 0, -1).astype(np.float32)


def write_bold_image(
    path: Path, bold: np.ndarray, affine: np.ndarray, tr: float, dtype: str = "float32"
) -> None:
    """A 4D NIfTI with the TR in pixdim[4] (seconds), stored as ``dtype``."""
    image = nib.Nifti1Image(bold, affine)
    image.header.set_xyzt_units("mm", "sec")
    image.header.set_zooms((*image.header.get_zooms()[:3], tr))
    # int16 makes nibabel store a scale slope/intercept: the pipeline must apply them.
    image.set_data_dtype(np.dtype(dtype))
    nib.save(image, path)


def _masks(shape: tuple[int, int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A box brain mask and a dseg with two ROIs that leaves part of the brain unlabelled."""
    brain = np.zeros(shape, dtype=bool)
    brain[1:-1, 1:-1, 1:-1] = True
    dseg = np.zeros(shape, dtype=np.int16)
    x_start = int(rng.integers(2, 4))
    half = shape[2] // 2
    dseg[x_start:-2, 2:-2, 1:half] = 1
    dseg[x_start:-2, 2:-2, half:-1] = 2
    dseg[0, :, :] = 1  # outside the brain mask: must be dropped
    return brain, dseg


def _write_masks(
    root: Path, subject: str, brain: np.ndarray, dseg: np.ndarray, affine: np.ndarray, ext: str
) -> None:
    folder = root / "derivatives" / "masks" / f"sub-{subject}" / "func"
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"sub-{subject}_space-native"
    nib.save(
        nib.Nifti1Image(brain.astype(np.uint8), affine), folder / f"{stem}_desc-brain_mask{ext}"
    )
    nib.save(nib.Nifti1Image(dseg, affine), folder / f"{stem}_dseg{ext}")
    pd.DataFrame({"index": list(ROI_NAMES), "name": list(ROI_NAMES.values())}).to_csv(
        folder / f"{stem}_dseg.tsv", sep="\t", index=False
    )


def _events(
    files: list[str], onsets: np.ndarray, duration_s: float, stimuli: _StimulusWriter
) -> pd.DataFrame:
    rows = [
        {
            "onset": round(float(onset), 3),
            "duration": duration_s,
            "trial_type": "image",
            "stim_file": file,
            "stim_id": stimuli.ids[file],
            "category": stimuli.categories[file],
            "split": stimuli.splits[file],
        }
        for file, onset in zip(files, onsets, strict=True)
    ]
    # A response row without a stimulus: the pipeline must not model it as a trial.
    rows.append(
        {
            "onset": float(onsets[0]) + 1.0,
            "duration": 0.0,
            "trial_type": "response",
            "stim_file": None,
            "stim_id": None,
            "category": None,
            "split": None,
        }
    )
    return pd.DataFrame(rows).sort_values("onset", kind="stable")


class _StimulusWriter:
    """Writes small random PNGs under ``stimuli/`` and remembers their id, category, split."""

    def __init__(self, folder: Path, rng: np.random.Generator, image_px: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.rng, self.image_px = folder, rng, image_px
        self.ids: dict[str, str] = {}
        self.categories: dict[str, str] = {}
        self.splits: dict[str, str] = {}

    def new(self, split: str) -> str:
        number = len(self.ids) + 1
        name = f"stim-{number:05d}.png"
        pixels = self.rng.integers(0, 256, size=(self.image_px, self.image_px, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(self.folder / name)
        self.ids[name] = f"s{number:05d}"
        self.categories[name] = ("animal", "tool", "place")[number % 3]
        self.splits[name] = split
        return name

    def write_table(self) -> None:
        names = list(self.ids)
        pd.DataFrame(
            {
                "stim_file": names,
                "stim_id": [self.ids[n] for n in names],
                "category": [self.categories[n] for n in names],
                "split": [self.splits[n] for n in names],
            }
        ).to_csv(self.folder / "stimuli.tsv", sep="\t", index=False)


def write_json(path: Path, content: dict) -> None:
    """``content`` as an indented JSON file (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2))


def t1w_affine() -> np.ndarray:
    """The grid fMRIPrep's ``space-T1w`` outputs are written on: not the raw bold's grid."""
    affine = np.diag([2.5, 2.5, 3.0, 1.0])
    affine[:3, 3] = [-20.0, -24.0, -12.0]
    return affine


def write_fmriprep(
    root: Path,
    *,
    space: str = "T1w",
    motion_scale: float = 5.0,
    pad_runs: bool = True,
    seed: int = 0,
) -> list[Path]:
    """fMRIPrep outputs for every raw run under ``root``; returns the preprocessed bold paths.

    Each preprocessed bold is the raw series on :func:`t1w_affine`'s grid plus
    ``motion_scale * trans_x(t) * pattern(voxel)``; ``trans_x`` is in the confounds TSV.
    ``pad_runs=False`` writes ``run-1`` where the raw file has ``run-01`` (as NOD's do).
    """
    rng = np.random.default_rng(seed)
    written = []
    for raw in sorted(root.glob("sub-*/**/func/*_bold.nii*")):
        prefix = raw.name.split("_bold.nii")[0]
        if not pad_runs:
            prefix = re.sub(r"run-0*(\d+)", r"run-\1", prefix)
        folder = root / "derivatives" / "fmriprep" / raw.parent.relative_to(root)
        folder.mkdir(parents=True, exist_ok=True)
        image = nib.load(raw)
        data = image.get_fdata(dtype=np.float32)
        tr = float(image.header.get_zooms()[3])
        motion = rng.normal(size=data.shape[3]).cumsum()
        pattern = rng.normal(size=data.shape[:3])
        data += motion_scale * motion[None, None, None, :] * pattern[..., None]
        bold = folder / f"{prefix}_space-{space}_desc-preproc_bold.nii.gz"
        write_bold_image(bold, data, t1w_affine(), tr)
        task = re.search(r"task-([^_]+)", prefix).group(1)
        write_json(
            bold.with_name(bold.name.replace(".nii.gz", ".json")),
            {"RepetitionTime": tr, "SkullStripped": False, "TaskName": task},
        )
        subject = re.search(r"sub-([^_]+)", prefix).group(1)
        brain = next(
            (root / "derivatives" / "masks" / f"sub-{subject}").rglob("*_desc-brain_mask*")
        )
        mask = np.asanyarray(nib.load(brain).dataobj).astype(np.uint8)
        nib.save(
            nib.Nifti1Image(mask, t1w_affine()),
            folder / f"{prefix}_space-{space}_desc-brain_mask.nii.gz",
        )
        _confounds_table(motion, rng).to_csv(
            folder / f"{prefix}_desc-confounds_timeseries.tsv", sep="\t", index=False, na_rep="n/a"
        )
        written.append(bold)
    return written


def _confounds_table(trans_x: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    """A confounds TSV with fMRIPrep's column names; derivatives and FD start with n/a."""
    n = len(trans_x)
    table = {"global_signal": rng.normal(100.0, 1.0, n), "csf": rng.normal(90.0, 1.0, n)}
    table["white_matter"] = rng.normal(80.0, 1.0, n)
    motion = {"trans_x": trans_x, **{name: 0.01 * rng.normal(size=n) for name in MOTION[1:]}}
    for name, values in motion.items():
        table[name] = values
        table[f"{name}_derivative1"] = np.r_[np.nan, np.diff(values)]
    table["framewise_displacement"] = np.r_[np.nan, np.abs(np.diff(trans_x))]
    table["std_dvars"] = np.r_[np.nan, rng.uniform(0.8, 1.2, n - 1)]
    return pd.DataFrame(table)
