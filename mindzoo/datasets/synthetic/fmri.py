"""`synthetic-fmri`: a seeded brain simulator for an NSD-like image experiment, written as BIDS.

Generative model
================
Everything is drawn from ``numpy.random.default_rng`` streams spawned from one seed: one stream
for the stimuli, one for the population (what all subjects share) and one per subject.

Stimuli and experiment (NSD-like).
    Colour images (``mindzoo.datasets.stimuli``: crops of bundled photos and drawn objects).
    ``n_test_images`` test images are seen by every subject ``test_repeats`` times; each subject
    also sees ``n_train_images`` images of its own, and the remaining trial slots repeat some of
    them, in a random order per subject. A trial is ``stimulus_duration`` (3 s) of image and
    ``interstimulus_interval`` (1 s) of blank; a run has ``trials_per_run`` image trials and
    ``blank_trials_per_run`` blank 4 s slots, one at a random place in each equal stretch of
    the run (as in NSD, blanks make single-trial responses estimable), with rest before and
    after; TR 1.6 s.

Stimulus descriptors.
    (a) Low-level maps on a ``image_size // 4`` grid: local RMS luminance contrast, and
    colour-opponent energy of R-G and of B-Y (local RMS of each opponent signal).
    (b) Semantic features: EfficientNet-Lite0 ImageNet ``global`` features
    (``mindzoo.features``) of every stimulus, reduced by PCA to ``n_semantic_components``
    dimensions and scaled by the SD of the first component, so dominant feature directions
    dominate.

Functional clusters (shared by all subjects; the premise of Brain-IT).
    Each of 22 clusters belongs to a region: V1 (5), V2 (4), V3 (3), hV4 (3), LO (3),
    FFA (2), PPA (2). A cluster has a population receptive field (centre and Gaussian size in
    the visual field, sizes growing along the hierarchy), channel weights over the three
    low-level maps (hV4 prefers colour), a unit direction in semantic PCA space, and a
    semantic weight ``s`` (V1 0.05 ... FFA/PPA 0.85). Clusters with ``s < 0.5`` are
    retinotopic, the others semantic. The tuning of a voxel to image ``i`` is

        retinotopic(i) = (sum_c w_c sum_xy RF(x, y) map_c(i, x, y)) ** 0.5   (compressive)
        semantic(i)    = softplus(2 * direction . z(i)) / 2
        tuning(i)      = (1 - s) * zscore(retinotopic)(i) + s * zscore(semantic)(i),
                         z-scored again over all stimuli

    where the voxel's parameters are its cluster's plus jitter (RF centre, log size, channel
    weights, semantic direction, semantic weight).

Anatomy (different for every subject).
    A volume of about ``volume_shape`` voxels of ``voxel_size`` mm (each axis +-2 voxels), an
    ellipsoidal brain with subject-specific radii, offset and a smooth surface deformation,
    a 3-voxel cortical ribbon, and bilateral ROI blobs placed on it (V1/V2/V3 at the occipital
    pole, hV4 ventral, LO lateral, FFA/PPA ventral-anterior) with subject-specific sizes, so
    every subject has its own number of signal-ROI voxels. Within each ROI a subject draws its
    cluster proportions from a Dirichlet distribution and lays clusters out as spatially
    contiguous patches (nearest of random seed voxels). Brain voxels outside the ROIs carry no
    signal, only noise.

Responses.
    The amplitude (peak % signal change of a single 3 s trial) of voxel v on trial t showing
    image i is

        a[t, v] = (evoked_v + gain_v * tuning_v(i)) * (1 + g[t]) + e[t, cluster(v)]

    with ``evoked_v ~ evoked_psc * LogNormal``, ``gain_v ~ signal_psc * LogNormal``, a
    trial gain ``g[t] ~ N(0, trial_gain_sd)`` shared by all voxels (arousal), and neural noise
    ``e ~ N(0, neural_noise_psc)`` shared by a cluster's voxels.

BOLD.
    Each trial is a boxcar convolved with the Glover HRF (nilearn) on a 0.1 s grid, shifted by
    a per-voxel delay ``~ N(0, hrf_delay_sd)`` s, sampled at the TR. Per run and voxel, in %
    signal change, the noise is the sum of: slow drift (a linear trend and cosines with
    periods of 2, 1 and 2/3 run lengths, SD about ``drift_psc``); cardiac (~1.1 Hz) and
    respiratory (~0.27 Hz) oscillations simulated on the fine grid so that they alias at the
    TR like real physiological noise (SD ``physio_noise_psc``, voxel-specific loading and
    phase); a global fluctuation shared by
    all brain voxels (AR(1), phi 0.9, SD ``global_noise_psc``); regional fluctuations shared
    by nearby voxels (8 smooth spatial components, AR(1) phi 0.7, SD ``regional_noise_psc``);
    and AR(1) voxel noise (phi ``ar_coefficient``, SD ``thermal_noise_psc``). All BOLD noise SDs
    of a subject are scaled by one ``LogNormal(0, subject_noise_jitter)`` factor. The image is
    ``baseline_v * session_scale * (1 + (signal + noise) / 100)``, with a smooth baseline
    (brighter in the cortical ribbon) and a per-session intensity scale, stored as scaled
    int16 NIfTI. Shared fluctuations mean that averaging voxels does not average noise away.

With the defaults, a plain least-squares-all GLM gives a median noise ceiling (3-repeat
average, NSD definition) of about 0.3-0.45 in the signal ROIs, and ridge regression from
single-trial betas to EfficientNet-Lite0 features retrieves 30-50 % of the 50 test images
(top-1): a benchmark with headroom. ``thermal_noise_psc`` is the main knob for the former.

The simulator reads only its own config and the packaged images and feature extractor; it never
reads anything a decoding model produces. A ``derivatives/simulation`` dataset records the
true cluster of every voxel.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

import mindzoo
from mindzoo.atomic import reclaim_stale, temp_sibling
from mindzoo.datasets.stimuli import make_stimuli
from mindzoo.datasets.synthetic.fmri_anatomy import Anatomy
from mindzoo.datasets.synthetic.fmri_bold import Subject, draw_subject, run_onsets, simulate_run
from mindzoo.datasets.synthetic.fmri_config import SyntheticFMRIConfig
from mindzoo.datasets.synthetic.fmri_tuning import (
    REGIONS,
    Population,
    draw_clusters,
    low_level_maps,
    semantic_components,
)
from mindzoo.errors import UserInputError
from mindzoo.features import compute_features

TASK = "images"
GENERATOR_NAME = "mindzoo synthetic-fmri"


def simulate_bids(out_dir: Path, config: SyntheticFMRIConfig, progress: bool = True) -> Path:
    """Simulate the dataset and write it as BIDS under ``out_dir``; return the dataset root.

    ``out_dir`` must not exist or be empty. The dataset is built in a temporary sibling
    directory and renamed at the end, so a failed run leaves nothing behind.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserInputError(
            f"Output directory {out_dir} already exists and is not empty; "
            "remove it or choose another directory"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    reclaim_stale(out_dir.parent)  # what a killed simulation left
    tmp = temp_sibling(out_dir)
    tmp.mkdir()  # mode from the umask: the dataset is meant to be shared
    try:
        _write_dataset(tmp, config, progress)
        if out_dir.exists():
            out_dir.rmdir()
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _write_dataset(root: Path, config: SyntheticFMRIConfig, progress: bool) -> None:
    stimulus_seq, population_seq, *subject_seqs = np.random.SeedSequence(config.seed).spawn(
        2 + config.n_subjects
    )
    n_stimuli = config.n_test_images + config.n_subjects * config.n_train_images
    images, categories = make_stimuli(
        n_stimuli, config.image_size, seed=int(stimulus_seq.generate_state(1)[0])
    )
    splits = np.where(np.arange(n_stimuli) < config.n_test_images, "test", "train")
    stimuli = pd.DataFrame(
        {
            "stim_file": [f"stim-{i + 1:05d}.png" for i in range(n_stimuli)],
            "stim_id": np.arange(1, n_stimuli + 1),
            "category": categories,
            "split": splits,
        }
    )
    _write_top_level(root, config, stimuli, images)

    features = compute_features("efficientnet-lite0", images, progress=progress)["global"]
    semantic = semantic_components(features.astype(np.float64), config.n_semantic_components)
    population_rng = np.random.default_rng(population_seq)
    cluster_region, clusters = draw_clusters(population_rng, semantic.shape[1])
    population = Population(
        cluster_region=cluster_region,
        clusters=clusters,
        low_level=low_level_maps(images, grid=max(4, config.image_size // 4)),
        semantic=semantic,
    )
    test_ids = np.arange(config.n_test_images)
    bar = tqdm(
        total=config.n_subjects * config.n_runs, desc="synthetic-fmri runs", disable=not progress
    )
    for s, seq in enumerate(subject_seqs):
        rng = np.random.default_rng(seq)
        first = config.n_test_images + s * config.n_train_images
        train_ids = np.arange(first, first + config.n_train_images)
        subject = draw_subject(rng, config, population, test_ids, train_ids)
        _write_subject(root, f"{s + 1:02d}", rng, config, subject, stimuli, bar)
    bar.close()


def _write_top_level(
    root: Path, config: SyntheticFMRIConfig, stimuli: pd.DataFrame, images: np.ndarray
) -> None:
    generated_by = [
        {
            "Name": GENERATOR_NAME,
            "Version": mindzoo.__version__,
            "Description": "Seeded simulator; configuration in code/synthetic_fmri_config.json",
        }
    ]
    _write_json(
        root / "dataset_description.json",
        {
            "Name": "mindzoo synthetic-fmri",
            "BIDSVersion": "1.9.0",
            "DatasetType": "raw",
            "License": "CC0",
            "Authors": ["mindzoo synthetic-fmri simulator"],
            "GeneratedBy": generated_by,
        },
    )
    participants = [f"sub-{s + 1:02d}" for s in range(config.n_subjects)]
    pd.DataFrame({"participant_id": participants}).to_csv(
        root / "participants.tsv", sep="\t", index=False
    )
    (root / "README").write_text(_readme(config))
    _write_json(root / f"task-{TASK}_bold.json", {"TaskName": TASK, "RepetitionTime": config.tr})
    (root / "code").mkdir()
    _write_json(root / "code" / "synthetic_fmri_config.json", config.model_dump(mode="json"))
    stimulus_dir = root / "stimuli"
    stimulus_dir.mkdir()
    for file_name, image in zip(stimuli["stim_file"], images, strict=True):
        Image.fromarray(image).save(stimulus_dir / file_name)
    stimuli.to_csv(stimulus_dir / "stimuli.tsv", sep="\t", index=False)
    for name in ("masks", "simulation"):
        derivative = root / "derivatives" / name
        derivative.mkdir(parents=True)
        _write_json(
            derivative / "dataset_description.json",
            {
                "Name": f"mindzoo synthetic-fmri {name}",
                "BIDSVersion": "1.9.0",
                "DatasetType": "derivative",
                "GeneratedBy": generated_by,
            },
        )


def _readme(config: SyntheticFMRIConfig) -> str:
    settings = "\n".join(f"    {k}: {v}" for k, v in config.model_dump(mode="json").items())
    return (
        "mindzoo synthetic-fmri\n======================\n\n"
        "A simulated NSD-like image-viewing fMRI experiment written by the mindzoo package\n"
        "(mindzoo.datasets.synthetic.fmri). Images are in stimuli/, brain and ROI masks in\n"
        "derivatives/masks, the true functional cluster of every voxel in\n"
        "derivatives/simulation.\n\nConfiguration:\n"
        f"{settings}\n\n{__doc__}"
    )


def _write_subject(
    root: Path,
    label: str,
    rng: np.random.Generator,
    config: SyntheticFMRIConfig,
    subject: Subject,
    stimuli: pd.DataFrame,
    bar: tqdm,
) -> None:
    anatomy = subject.anatomy
    runs = subject.trials.reshape(config.n_sessions, config.runs_per_session, -1)
    for session in range(config.n_sessions):
        session_scale = float(np.exp(rng.normal(0.0, 0.05)))
        func = root / f"sub-{label}" / f"ses-{session + 1:02d}" / "func"
        func.mkdir(parents=True)
        for run in range(config.runs_per_session):
            stem = f"sub-{label}_ses-{session + 1:02d}_task-{TASK}_run-{run + 1:02d}"
            run_trials = runs[session, run]
            onsets = run_onsets(rng, config)
            volume = simulate_run(rng, config, subject, run_trials, onsets, session_scale)
            _save_bold(func / f"{stem}_bold.nii.gz", volume, anatomy.affine, config)
            _write_json(func / f"{stem}_bold.json", {"TaskName": TASK, "RepetitionTime": config.tr})
            _events(config, stimuli, run_trials, onsets).to_csv(
                func / f"{stem}_events.tsv", sep="\t", index=False, float_format="%.3f"
            )
            bar.update()
    _write_masks(root, label, anatomy)


def _save_bold(
    path: Path, volume: np.ndarray, affine: np.ndarray, config: SyntheticFMRIConfig
) -> None:
    image = nib.Nifti1Image(volume, affine)
    # scaled int16 like scanner output; nibabel picks slope/intercept to use the full range
    image.header.set_data_dtype(np.int16)
    image.header.set_xyzt_units("mm", "sec")
    image.header.set_zooms((config.voxel_size,) * 3 + (config.tr,))
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.to_filename(path)


def _events(
    config: SyntheticFMRIConfig, stimuli: pd.DataFrame, run_trials: np.ndarray, onsets: np.ndarray
) -> pd.DataFrame:
    rows = stimuli.iloc[run_trials]
    return pd.DataFrame(
        {
            "onset": onsets,
            "duration": config.stimulus_duration,
            "trial_type": "image",
            "stim_file": rows["stim_file"].to_numpy(),
            "stim_id": rows["stim_id"].to_numpy(),
            "category": rows["category"].to_numpy(),
            "split": rows["split"].to_numpy(),
        }
    )


def _write_masks(root: Path, label: str, anatomy: Anatomy) -> None:
    masks = root / "derivatives" / "masks" / f"sub-{label}" / "func"
    masks.mkdir(parents=True)
    prefix = f"sub-{label}_space-native"
    _save_label_image(masks / f"{prefix}_desc-brain_mask.nii.gz", anatomy.brain, np.uint8, anatomy)
    _save_label_image(masks / f"{prefix}_dseg.nii.gz", anatomy.roi, np.int16, anatomy)
    pd.DataFrame(
        {"index": np.arange(1, len(REGIONS) + 1), "name": [r.name for r in REGIONS]}
    ).to_csv(masks / f"{prefix}_dseg.tsv", sep="\t", index=False)
    truth = root / "derivatives" / "simulation" / f"sub-{label}" / "func"
    truth.mkdir(parents=True)
    _save_label_image(
        truth / f"{prefix}_desc-clusters_dseg.nii.gz", anatomy.cluster, np.int16, anatomy
    )
    names = [f"{region.name}-c{i + 1}" for region in REGIONS for i in range(region.n_clusters)]
    pd.DataFrame({"index": np.arange(1, len(names) + 1), "name": names}).to_csv(
        truth / f"{prefix}_desc-clusters_dseg.tsv", sep="\t", index=False
    )


def _save_label_image(path: Path, labels: np.ndarray, dtype: type, anatomy: Anatomy) -> None:
    image = nib.Nifti1Image(labels.astype(dtype), anatomy.affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(anatomy.affine, code=1)
    image.set_sform(anatomy.affine, code=1)
    image.to_filename(path)


def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=2) + "\n")
