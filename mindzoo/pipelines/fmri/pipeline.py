"""fMRI pipeline: BIDS bold runs + events -> z-scored single-trial betas per subject.

For each run: load the bold series, keep the voxels of the signal ROI
(:mod:`mindzoo.pipelines.fmri.masks`), build a design of one HRF-convolved regressor per trial
plus a cosine drift basis, an intercept and optional confounds, and fit every voxel at once by
least squares, ``lsa`` or ``lss`` (:mod:`mindzoo.pipelines.fmri.glm`). After all runs, each
session's betas are z-scored per voxel with the statistics of that session's training trials
(:mod:`mindzoo.pipelines.fmri.betas`).

Inputs: the raw ``*_bold.nii[.gz]`` of a BIDS dataset (``input=raw``) or fMRIPrep's
preprocessed bold in one output space (``input=fmriprep``; events still come from the raw
dataset). The whole input (headers, sidecars, events, confounds, masks, stimuli) is checked
before any bold data is loaded.

Test trials keep their repetition index; averaging repeats is left to the views that read the
store. Stimuli and their images: :mod:`mindzoo.pipelines.fmri.stimuli`.
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from nibabel.affines import apply_affine
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from mindzoo.errors import UserInputError
from mindzoo.executors import job_threads
from mindzoo.pipelines.fmri.betas import PreparedFMRI, SubjectBetas, zscore_by_session
from mindzoo.pipelines.fmri.config import FMRIPipelineConfig, under_root
from mindzoo.pipelines.fmri.events import run_trials
from mindzoo.pipelines.fmri.glm import fit_single_trial_betas, nuisance_regressors, trial_regressors
from mindzoo.pipelines.fmri.masks import Voxels, epi_voxels, find_subject_masks, subject_voxels
from mindzoo.pipelines.fmri.runs import (
    RunPlan,
    RunSelection,
    plan_subject,
    runs_without_trials,
    select_runs,
)
from mindzoo.pipelines.fmri.sources import SourceFiles
from mindzoo.pipelines.fmri.stimuli import (
    STIMULI_DIR,
    STIMULI_TABLE,
    ImageFinder,
    StimulusCatalog,
    build_catalog,
    image_name,
    load_images,
    read_stimuli_table,
    stimuli_folder,
)


@dataclass
class FMRIPlan:
    """What every part of a BIDS fMRI prepare needs, found from events and headers only: the
    selected runs, each subject's run plans, the stimulus catalogue and the files read so far."""

    root: Path
    config: FMRIPipelineConfig
    selection: RunSelection
    plans: dict[str, list[RunPlan]]
    catalog: StimulusCatalog
    sources: SourceFiles

    @property
    def subjects(self) -> list[str]:
        """BIDS labels of the chosen subjects (``01``), in order."""
        return list(self.selection.subjects)


def plan_bids_fmri(
    root: Path | str, config: FMRIPipelineConfig, with_images: bool = True
) -> FMRIPlan:
    """Check the whole input (headers, sidecars, events, confounds, stimuli) and plan every run,
    without loading bold data. Cheap enough that each job of a parallel prepare re-plans."""
    root = Path(root)
    sources = SourceFiles()
    selection = select_runs(root, config)
    stimuli_table = read_stimuli_table(root, config, sources)
    plans = {
        subject: plan_subject(subject, selection, config, sources) for subject in selection.subjects
    }
    catalog = build_catalog(
        root, plans, selection.task_runs, stimuli_table, config, sources, with_images
    )
    return FMRIPlan(root, config, selection, plans, catalog, sources)


def subject_voxels_of(plan: FMRIPlan, subject: str) -> Voxels | None:
    """The signal-ROI voxels of ``subject`` (None: found from its first run's mean EPI)."""
    return subject_voxels(plan.root, subject, plan.plans[subject], plan.config, plan.sources)


def fit_bids_subject(plan: FMRIPlan, subject: str, progress: bool = True) -> SubjectBetas:
    """Fit every run of ``subject`` (a BIDS label, ``01``) and assemble its z-scored betas."""
    voxels = subject_voxels_of(plan, subject)
    with (
        threadpool_limits(limits=job_threads(), user_api="blas"),
        tqdm(
            total=len(plan.plans[subject]),
            desc=f"fMRI runs sub-{subject}",
            unit="run",
            disable=not progress,
        ) as bar,
    ):
        betas, trials, fitted_voxels = _fit_subject(plan.plans[subject], voxels, plan.config, bar)
    assembled = _assemble_subject(subject, betas, trials, fitted_voxels, plan.catalog, plan.config)
    return _with_dropped_runs(assembled, plan, subject)


def _with_dropped_runs(data: SubjectBetas, plan: FMRIPlan, subject: str) -> SubjectBetas:
    """``data`` naming the runs of ``subject`` left out for want of trials."""
    dropped = runs_without_trials(subject, plan.selection, plan.plans[subject])
    return dataclasses.replace(data, runs_without_trials=dropped) if dropped else data


def stimulus_images(plan: FMRIPlan) -> np.ndarray | None:
    """The catalogue's stimulus images, uint8 ``[n, size, size, 3]`` (None without images)."""
    if plan.catalog.image_paths is None:
        return None
    plan.sources.add(*plan.catalog.image_paths)
    return load_images(plan.catalog.image_paths, plan.config.image_size)


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
    plan = plan_bids_fmri(root, config, with_images)
    voxels = {subject: subject_voxels_of(plan, subject) for subject in plan.subjects}
    n_runs = sum(len(subject_plans) for subject_plans in plan.plans.values())
    # A run's GLM is small (frames x trials): multithreaded BLAS only adds start-up and
    # contention there (0.3 s instead of 0.5 ms per SVD on a busy 2-core machine), so a serial
    # prepare uses one thread; a job of a parallel prepare uses its --cpus (job_threads()).
    with (
        threadpool_limits(limits=job_threads(), user_api="blas"),
        tqdm(total=n_runs, desc="fMRI runs", unit="run", disable=not progress) as bar,
    ):
        prepared = {}
        for subject in plan.subjects:
            betas, trials, fitted_voxels = _fit_subject(
                plan.plans[subject], voxels[subject], config, bar
            )
            assembled = _assemble_subject(
                subject, betas, trials, fitted_voxels, plan.catalog, config
            )
            prepared[f"sub-{subject}"] = _with_dropped_runs(assembled, plan, subject)
    images = stimulus_images(plan)
    return PreparedFMRI(
        subjects=prepared,
        stimulus_ids=plan.catalog.ids,
        stimulus_labels=plan.catalog.labels,
        stimulus_splits=plan.catalog.splits,
        images=images,
        source_files=plan.sources.paths(),
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
    selection = select_runs(root, config)
    files: list[Path | None] = []
    for run in selection.runs:
        files += [run.bold_path, *run.sidecar_paths, run.events_path, run.brain_mask]
        if config.confounds:
            files.append(run.confounds_path())
    if config.roi_mask is not None:
        for subject in selection.subjects:
            masks = find_subject_masks(under_root(root, config.roi_mask), subject)
            files += [masks.brain_mask, masks.dseg, masks.dseg_labels]
    table_path = root / STIMULI_DIR / STIMULI_TABLE
    files.append(table_path if table_path.is_file() else None)
    if with_images:
        table = read_stimuli_table(root, config, SourceFiles())
        finder = ImageFinder(stimuli_folder(root, config))
        keys = {key for run in selection.runs for key in run_trials(run, config)["stimulus_key"]}
        files += [finder.find(image_name(key, table)) for key in sorted(keys)]
    return list(dict.fromkeys(path for path in files if path is not None))


# --- loading and fitting ---------------------------------------------------------------------


def _read_volumes(image: nib.Nifti1Image) -> tuple[np.ndarray, float, float]:
    """The stored 4D array (no float64 scaling copy) with its scale slope and intercept."""
    proxy = image.dataobj
    if not nib.is_proxy(proxy):
        return np.asanyarray(proxy), 1.0, 0.0
    try:  # a truncated .nii.gz ends in EOFError, which click would report as a Ctrl-C
        return proxy.get_unscaled(), float(proxy.slope), float(proxy.inter)
    except (EOFError, OSError, ValueError, zlib.error) as exc:
        raise UserInputError(
            f"{image.get_filename()} cannot be read ({exc or type(exc).__name__}): the file is "
            "truncated or damaged; copy or download it again"
        ) from None


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


def _fit_run(
    plan: RunPlan, voxels: Voxels | None, config: FMRIPipelineConfig
) -> tuple[np.ndarray, Voxels]:
    """Betas ``[trial, voxel]`` of one run (and the voxels, set from this run if not yet)."""
    volumes, slope, inter = _read_volumes(plan.image)
    if voxels is None:
        mean_volume = volumes.mean(axis=3, dtype=np.float32) * np.float32(slope) + inter
        voxels = epi_voxels(mean_volume, plan)
    bold = _masked_timeseries(volumes, slope, inter, voxels.flat_index())
    del volumes
    not_finite = ~np.isfinite(bold).all(axis=0)
    if not_finite.any():
        i, j, k = voxels.ijk[int(not_finite.argmax())]
        raise UserInputError(
            f"{plan.run.name} has NaN/inf values in {int(not_finite.sum())} ROI voxel(s), "
            f"e.g. voxel ({i}, {j}, {k}); fix the run or exclude those voxels from the mask"
        )
    if bold.size and (bold == bold[:1]).all():
        raise UserInputError(
            f"{plan.run.name} is constant: all {bold.shape[1]} ROI voxels keep one value in "
            f"all {bold.shape[0]} volumes, so its betas would carry no information; check the "
            "file (copy or export it again) or leave the run out"
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
    plans: list[RunPlan], voxels: Voxels | None, config: FMRIPipelineConfig, bar: tqdm
) -> tuple[np.ndarray, pd.DataFrame, Voxels]:
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
    voxels: Voxels,
    catalog: StimulusCatalog,
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
