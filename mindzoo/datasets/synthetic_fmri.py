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
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from nilearn.glm.first_level import glover_hrf
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy import ndimage, signal
from tqdm.auto import tqdm

import mindzoo
from mindzoo.datasets.stimuli import make_stimuli
from mindzoo.errors import UserInputError
from mindzoo.features import compute_features

TASK = "images"
GENERATOR_NAME = "mindzoo synthetic-fmri"
FINE_OVERSAMPLING = 16  # fine time grid = TR / 16 (0.1 s at TR 1.6 s)
HRF_LENGTH_S = 32.0
HRF_DELAY_STEP_S = 0.4  # per-voxel HRF delays are rounded to this step so voxels share regressors
RIBBON_DEPTH_VOXELS = 3.0
ROI_SIZE = 1.75  # scales every ROI blob (sets the signal-voxel count)
N_REGIONAL_COMPONENTS = 8
REGIONAL_SMOOTHNESS_VOXELS = 3.0


class SyntheticFMRIConfig(BaseModel):
    """Everything that defines a synthetic-fmri dataset; same config and seed, same data.

    Amplitudes and noise levels are in percent signal change (psc) of the voxel baseline.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 0
    n_subjects: int = Field(4, ge=1, le=99)
    image_size: int = Field(64, ge=16, le=512)
    n_test_images: int = Field(50, ge=2, description="shared by all subjects")
    test_repeats: int = Field(3, ge=1, description="presentations of each test image")
    n_train_images: int = Field(500, ge=1, description="each subject's own training images")
    n_sessions: int = Field(2, ge=1)
    runs_per_session: int = Field(5, ge=1)
    trials_per_run: int = Field(75, ge=1, description="image trials per run")
    blank_trials_per_run: int = Field(
        12, ge=0, description="blank 4 s slots, one per equal stretch of the run, as in NSD"
    )
    tr: float = Field(1.6, gt=0.0, description="repetition time, s")
    stimulus_duration: float = Field(3.0, gt=0.0, description="s")
    interstimulus_interval: float = Field(1.0, ge=0.0, description="s")
    run_lead_in: float = Field(4.0, ge=0.0, description="rest before the first trial, s")
    run_tail: float = Field(14.0, ge=0.0, description="rest after the last trial, s")
    volume_shape: tuple[int, int, int] = (24, 28, 24)
    voxel_size: float = Field(2.5, gt=0.0, description="mm, isotropic")
    n_semantic_components: int = Field(32, ge=1)
    evoked_psc: float = Field(1.5, ge=0.0, description="mean response common to all images")
    signal_psc: float = Field(0.8, ge=0.0, description="SD of the image-specific response")
    trial_gain_sd: float = Field(0.1, ge=0.0, description="trial-to-trial gain shared by voxels")
    neural_noise_psc: float = Field(0.15, ge=0.0, description="trial noise shared in a cluster")
    thermal_noise_psc: float = Field(1.25, ge=0.0, description="AR(1) noise per voxel")
    ar_coefficient: float = Field(0.4, ge=0.0, lt=1.0, description="of the voxel noise, at TR")
    physio_noise_psc: float = Field(0.5, ge=0.0, description="cardiac + respiratory")
    global_noise_psc: float = Field(0.4, ge=0.0, description="fluctuation shared by all voxels")
    regional_noise_psc: float = Field(0.5, ge=0.0, description="fluctuations of nearby voxels")
    drift_psc: float = Field(2.0, ge=0.0, description="slow drift")
    hrf_delay_sd: float = Field(0.5, ge=0.0, description="per-voxel HRF delay, s")
    subject_noise_jitter: float = Field(0.1, ge=0.0, description="log-SD of subject noise scale")

    @model_validator(mode="after")
    def _check_design(self) -> SyntheticFMRIConfig:
        needed = self.n_test_images * self.test_repeats + self.n_train_images
        if needed > self.n_trial_slots:
            raise ValueError(
                f"{self.n_test_images} test images x {self.test_repeats} repeats + "
                f"{self.n_train_images} train images = {needed} trials, but n_sessions x "
                f"runs_per_session x trials_per_run = {self.n_trial_slots}; add runs or trials"
            )
        if min(self.volume_shape) < 12:
            raise ValueError(f"volume_shape {self.volume_shape} is too small; use >= 12 per axis")
        return self

    @property
    def n_trial_slots(self) -> int:
        """Trials per subject."""
        return self.n_sessions * self.runs_per_session * self.trials_per_run

    @property
    def n_runs(self) -> int:
        """Runs per subject."""
        return self.n_sessions * self.runs_per_session

    @property
    def trial_period(self) -> float:
        """Stimulus onset asynchrony, s."""
        return self.stimulus_duration + self.interstimulus_interval

    @property
    def n_volumes(self) -> int:
        """Volumes per run."""
        n_slots = self.trials_per_run + self.blank_trials_per_run
        run_length = self.run_lead_in + n_slots * self.trial_period + self.run_tail
        return math.ceil(run_length / self.tr)


# ---------------------------------------------------------------------------------------------
# Regions and functional clusters


@dataclass(frozen=True)
class RegionSpec:
    """A signal ROI: its clusters' tuning ranges and where it sits on the brain.

    Positions are in brain-normalised coordinates (x: right, y: anterior, z: superior; the
    brain ellipsoid spans -1..1 on each axis); the ROI is mirrored across x = 0.
    """

    name: str
    n_clusters: int
    eccentricity: tuple[float, float]  # RF centre distance from fixation, image half-widths
    rf_size: tuple[float, float]  # Gaussian RF SD, image half-widths
    channel_alpha: tuple[float, float, float]  # Dirichlet over (contrast, R-G, B-Y)
    semantic_weight: float
    centre: tuple[float, float, float]
    radii: tuple[float, float, float]


# fmt: off
REGIONS = (
    RegionSpec("V1", 5, (0.0, 0.6), (0.08, 0.14), (6.0, 1.5, 1.5), 0.05,
               (0.12, -0.92, 0.05), (0.22, 0.22, 0.35)),
    RegionSpec("V2", 4, (0.0, 0.7), (0.12, 0.2), (5.0, 2.0, 2.0), 0.15,
               (0.3, -0.82, 0.1), (0.22, 0.2, 0.38)),
    RegionSpec("V3", 3, (0.1, 0.7), (0.18, 0.28), (4.0, 2.0, 2.0), 0.25,
               (0.5, -0.7, 0.2), (0.2, 0.2, 0.3)),
    RegionSpec("hV4", 3, (0.1, 0.6), (0.25, 0.4), (1.5, 3.0, 3.0), 0.35,
               (0.35, -0.6, -0.5), (0.22, 0.2, 0.2)),
    RegionSpec("LO", 3, (0.0, 0.5), (0.35, 0.55), (2.0, 1.0, 1.0), 0.6,
               (0.82, -0.5, -0.05), (0.2, 0.25, 0.3)),
    RegionSpec("FFA", 2, (0.0, 0.3), (0.5, 0.8), (2.0, 1.0, 1.0), 0.85,
               (0.5, -0.3, -0.62), (0.2, 0.22, 0.18)),
    RegionSpec("PPA", 2, (0.0, 0.4), (0.6, 0.9), (2.0, 1.0, 1.0), 0.85,
               (0.22, -0.25, -0.55), (0.16, 0.22, 0.18)),
)
# fmt: on


@dataclass(frozen=True)
class Tuning:
    """Tuning parameters of a set of clusters or voxels (first axis: cluster or voxel)."""

    rf_centre: np.ndarray  # [n, 2] (x, y) in image half-widths, y up
    rf_size: np.ndarray  # [n]
    channel_weights: np.ndarray  # [n, 3]
    semantic_direction: np.ndarray  # [n, k], unit norm
    semantic_weight: np.ndarray  # [n]


@dataclass(frozen=True)
class Population:
    """What every subject shares: the functional clusters and the stimulus descriptors."""

    cluster_region: np.ndarray  # [n_clusters] index into REGIONS
    clusters: Tuning
    low_level: np.ndarray  # [n_stimuli, 3, grid, grid]
    semantic: np.ndarray  # [n_stimuli, k]


def draw_clusters(rng: np.random.Generator, n_semantic: int) -> tuple[np.ndarray, Tuning]:
    """The functional clusters shared by all subjects: (region index per cluster, tuning)."""
    regions, centres, sizes, channels, directions, weights = [], [], [], [], [], []
    for region_index, region in enumerate(REGIONS):
        for _ in range(region.n_clusters):
            regions.append(region_index)
            eccentricity = rng.uniform(*region.eccentricity)
            angle = rng.uniform(0.0, 2 * np.pi)
            centres.append(eccentricity * np.array([np.cos(angle), np.sin(angle)]))
            sizes.append(rng.uniform(*region.rf_size))
            channels.append(rng.dirichlet(region.channel_alpha))
            direction = rng.normal(size=n_semantic)
            directions.append(direction / np.linalg.norm(direction))
            weights.append(region.semantic_weight)
    tuning = Tuning(
        rf_centre=np.array(centres),
        rf_size=np.array(sizes),
        channel_weights=np.array(channels),
        semantic_direction=np.array(directions),
        semantic_weight=np.array(weights),
    )
    return np.array(regions), tuning


def low_level_maps(images: np.ndarray, grid: int) -> np.ndarray:
    """Local contrast and colour-opponent energy, float32 [n, 3, grid, grid], of uint8 images.

    Channels: RMS luminance contrast around the local mean, RMS of R-G, RMS of B-(R+G)/2, each
    over a Gaussian window of 1/32 of the image width, then block-averaged onto the grid.
    """
    rgb = images.astype(np.float32) / 255.0
    size = images.shape[1]
    sigma = (0, size / 32, size / 32)
    luminance = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    local_mean = ndimage.gaussian_filter(luminance, sigma)
    contrast = np.sqrt(ndimage.gaussian_filter((luminance - local_mean) ** 2, sigma))
    red_green = rgb[..., 0] - rgb[..., 1]
    blue_yellow = rgb[..., 2] - 0.5 * (rgb[..., 0] + rgb[..., 1])
    energies = [np.sqrt(ndimage.gaussian_filter(c**2, sigma)) for c in (red_green, blue_yellow)]
    maps = np.stack([contrast, *energies], axis=1)
    block = size // grid
    maps = maps[..., : grid * block, : grid * block]
    return maps.reshape(len(images), 3, grid, block, grid, block).mean(axis=(3, 5))


def semantic_components(features: np.ndarray, n_components: int) -> np.ndarray:
    """PCA scores [n, k] of feature vectors, all divided by the SD of the first component.

    k = n_components, or n - 1 for fewer stimuli than that.
    """
    centred = features - features.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    k = min(n_components, len(features) - 1)  # centring leaves at most n - 1 components
    scores = u[:, :k] * s[:k]
    return scores / scores[:, 0].std()


def voxel_tuning_responses(population: Population, voxels: Tuning) -> np.ndarray:
    """Noise-free tuning of every voxel to every stimulus, z-scored per voxel: [n_stimuli, V]."""
    grid = population.low_level.shape[-1]
    # grid cell centres in image half-widths, x right and y up (row 0 is the top of the image)
    coords = (np.arange(grid) + 0.5) / grid * 2 - 1
    xx, yy = np.meshgrid(coords, -coords)
    dx = xx.ravel()[None, :] - voxels.rf_centre[:, :1]
    dy = yy.ravel()[None, :] - voxels.rf_centre[:, 1:]
    rf = np.exp(-(dx**2 + dy**2) / (2 * voxels.rf_size[:, None] ** 2))
    rf /= rf.sum(axis=1, keepdims=True)
    maps = population.low_level.reshape(len(population.low_level), 3, grid * grid)
    drive = sum((maps[:, c] @ rf.T) * voxels.channel_weights[:, c] for c in range(3))
    retinotopic = _zscore(np.sqrt(drive))
    semantic = _zscore(np.logaddexp(0.0, 2.0 * population.semantic @ voxels.semantic_direction.T))
    w = voxels.semantic_weight
    return _zscore((1 - w) * retinotopic + w * semantic)


def _zscore(x: np.ndarray) -> np.ndarray:
    sd = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


# ---------------------------------------------------------------------------------------------
# Anatomy


@dataclass(frozen=True)
class Anatomy:
    """One subject's volume: brain, ROI labels, cluster labels, baseline intensity, affine."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    brain: np.ndarray  # bool volume
    roi: np.ndarray  # int16 volume, 0 outside signal ROIs, else 1 + index into REGIONS
    cluster: np.ndarray  # int16 volume, 0 outside signal ROIs, else 1 + cluster index
    baseline: np.ndarray  # float32 volume, scanner intensity at rest (0 outside the brain)


def draw_anatomy(
    rng: np.random.Generator, config: SyntheticFMRIConfig, cluster_region: np.ndarray
) -> Anatomy:
    """A subject's brain, ribbon, ROIs and cluster patches (see the module docstring)."""
    shape = tuple(int(n) for n in np.array(config.volume_shape) + rng.integers(-2, 3, size=3))
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    centre = (np.array(shape) - 1) / 2 + rng.uniform(-1.0, 1.0, size=3)
    radii = (np.array(shape) / 2 - 1.5) * rng.uniform(0.9, 1.0, size=3)
    normalised = (grid - centre) / radii
    deformation = ndimage.gaussian_filter(rng.normal(size=shape), sigma=4.0)
    deformation *= 0.06 / (deformation.std() + 1e-12)
    radius = np.linalg.norm(normalised, axis=-1) - deformation
    brain = radius < 1.0
    # depth below the surface in voxels, approximated through the normalised radius
    depth = (1.0 - radius) * radii.min()
    ribbon = brain & (depth < RIBBON_DEPTH_VOXELS)
    roi = _place_rois(rng, normalised, ribbon)
    cluster = _place_clusters(rng, roi, cluster_region)
    smooth = ndimage.gaussian_filter(rng.normal(size=shape), sigma=3.0)
    smooth /= smooth.std() + 1e-12
    baseline = np.where(brain, 800.0 + 200.0 * ribbon + 40.0 * smooth, 0.0).astype(np.float32)
    offset_mm = rng.uniform(-5.0, 5.0, size=3)
    affine = np.diag([config.voxel_size] * 3 + [1.0])
    affine[:3, 3] = -centre * config.voxel_size + offset_mm
    return Anatomy(shape, affine, brain, roi, cluster, baseline)


def _place_rois(rng: np.random.Generator, normalised: np.ndarray, ribbon: np.ndarray) -> np.ndarray:
    """Label ribbon voxels with the bilateral ROI blob they fall in (nearest blob on overlap)."""
    best = np.full(ribbon.shape, np.inf)
    roi = np.zeros(ribbon.shape, dtype=np.int16)
    for index, region in enumerate(REGIONS, start=1):
        scale = np.exp(rng.normal(0.0, 0.1))  # subject-specific ROI size
        centre = np.array(region.centre) + rng.normal(0.0, 0.03, size=3)
        radii = np.array(region.radii) * scale * ROI_SIZE
        for side in (1.0, -1.0):
            mirrored = centre * np.array([side, 1.0, 1.0])
            distance = np.linalg.norm((normalised - mirrored) / radii, axis=-1)
            inside = ribbon & (distance < 1.0) & (distance < best)
            roi[inside] = index
            best[inside] = distance[inside]
    return roi


def _place_clusters(
    rng: np.random.Generator, roi: np.ndarray, cluster_region: np.ndarray
) -> np.ndarray:
    """Within each ROI, contiguous cluster patches in subject-specific (Dirichlet) proportions."""
    cluster = np.zeros(roi.shape, dtype=np.int16)
    for index in range(1, len(REGIONS) + 1):
        positions = np.argwhere(roi == index)
        if len(positions) == 0:
            continue
        members = np.flatnonzero(cluster_region == index - 1)
        proportions = rng.dirichlet(np.full(len(members), 2.0))
        n_seeds = min(max(len(members), len(positions) // 15), len(positions))
        seeds = positions[rng.choice(len(positions), size=n_seeds, replace=False)]
        # every cluster keeps at least one patch; the other patches follow the proportions
        extra = rng.choice(members, size=max(n_seeds - len(members), 0), p=proportions)
        seed_cluster = rng.permutation(np.concatenate([members, extra]))[:n_seeds]
        distances = np.linalg.norm(positions[:, None, :] - seeds[None, :, :], axis=-1)
        nearest = seed_cluster[distances.argmin(axis=1)]
        cluster[tuple(positions.T)] = nearest + 1
    return cluster


def jitter_voxel_tuning(
    rng: np.random.Generator, clusters: Tuning, voxel_cluster: np.ndarray
) -> Tuning:
    """Each voxel's tuning: its cluster's parameters plus voxel-level jitter."""
    n = len(voxel_cluster)
    size = clusters.rf_size[voxel_cluster] * np.exp(rng.normal(0.0, 0.2, size=n))
    centre = clusters.rf_centre[voxel_cluster] + rng.normal(size=(n, 2)) * 0.3 * size[:, None]
    channel = clusters.channel_weights[voxel_cluster] * np.exp(rng.normal(0.0, 0.3, size=(n, 3)))
    direction = clusters.semantic_direction[voxel_cluster]
    direction = direction + rng.normal(0.0, 0.5 / np.sqrt(direction.shape[1]), direction.shape)
    weight = np.clip(clusters.semantic_weight[voxel_cluster] + rng.normal(0.0, 0.05, n), 0.0, 1.0)
    return Tuning(
        rf_centre=centre,
        rf_size=size,
        channel_weights=channel / channel.sum(axis=1, keepdims=True),
        semantic_direction=direction / np.linalg.norm(direction, axis=1, keepdims=True),
        semantic_weight=weight,
    )


# ---------------------------------------------------------------------------------------------
# Trials and BOLD


def trial_order(
    rng: np.random.Generator,
    config: SyntheticFMRIConfig,
    test_ids: np.ndarray,
    train_ids: np.ndarray,
) -> np.ndarray:
    """Stimulus index of every trial slot, in presentation order: [n_trial_slots]."""
    n_extra = config.n_trial_slots - config.n_test_images * config.test_repeats - len(train_ids)
    extra = rng.choice(train_ids, size=n_extra, replace=n_extra > len(train_ids))
    trials = np.concatenate([np.repeat(test_ids, config.test_repeats), train_ids, extra])
    return rng.permutation(trials)


def run_onsets(rng: np.random.Generator, config: SyntheticFMRIConfig) -> np.ndarray:
    """Onsets (s) of a run's image trials: every trial slot except the blanks.

    One blank falls at a random slot of each of ``blank_trials_per_run`` equal stretches of the
    run, so that no run has a long unbroken stretch of trials (which makes single-trial betas
    poorly estimable).
    """
    n_slots = config.trials_per_run + config.blank_trials_per_run
    stretches = np.array_split(np.arange(n_slots), config.blank_trials_per_run or 1)
    blanks = [rng.choice(stretch) for stretch in stretches] if config.blank_trials_per_run else []
    slots = np.setdiff1d(np.arange(n_slots), blanks)
    return config.run_lead_in + slots * config.trial_period


def trial_regressors(config: SyntheticFMRIConfig, onsets: np.ndarray, delay: float) -> np.ndarray:
    """BOLD time course of every trial of a run for a given HRF delay: [n_volumes, n_trials].

    Scaled so that one trial with the canonical (zero-delay) HRF peaks at 1 (amplitudes are in
    peak % signal change).
    """
    dt = config.tr / FINE_OVERSAMPLING
    boxcar = np.ones(round(config.stimulus_duration / dt))
    kernel = np.convolve(boxcar, glover_hrf(config.tr, FINE_OVERSAMPLING, HRF_LENGTH_S, delay))
    canonical = np.convolve(boxcar, glover_hrf(config.tr, FINE_OVERSAMPLING, HRF_LENGTH_S))
    kernel /= canonical.max()
    onset_samples = np.round(onsets / dt).astype(int)
    lag = np.arange(config.n_volumes)[:, None] * FINE_OVERSAMPLING - onset_samples[None, :]
    valid = (lag >= 0) & (lag < len(kernel))
    return np.where(valid, kernel[np.clip(lag, 0, len(kernel) - 1)], 0.0)


def _ar1(rng: np.random.Generator, n_times: int, n_series: int, phi: float) -> np.ndarray:
    """Stationary unit-variance AR(1) series [n_times, n_series]."""
    white = rng.normal(size=(n_times, n_series))
    white[0] /= np.sqrt(1 - phi**2)  # start from the stationary distribution
    return signal.lfilter([np.sqrt(1 - phi**2)], [1.0, -phi], white, axis=0)


@dataclass(frozen=True)
class Subject:
    """Everything drawn for one subject before its runs are simulated."""

    anatomy: Anatomy
    voxel_cluster: np.ndarray  # [V_signal] cluster index of each signal voxel (brain order)
    responses: np.ndarray  # [n_stimuli, V_signal] amplitude without trial noise, psc
    evoked: np.ndarray  # [V_signal]
    hrf_delay: np.ndarray  # [V_signal] s, on the HRF_DELAY_STEP_S grid
    physio_loading: np.ndarray  # [V_brain, 4] cardiac/respiratory cos/sin loadings
    regional_loading: np.ndarray  # [V_brain, N_REGIONAL_COMPONENTS]
    global_loading: np.ndarray  # [V_brain]
    noise_scale: float
    trials: np.ndarray  # [n_trial_slots] stimulus index


def draw_subject(
    rng: np.random.Generator,
    config: SyntheticFMRIConfig,
    population: Population,
    test_ids: np.ndarray,
    train_ids: np.ndarray,
) -> Subject:
    """Anatomy, voxel tuning, HRF delays, noise loadings and trial order of one subject."""
    anatomy = draw_anatomy(rng, config, population.cluster_region)
    signal_mask = anatomy.roi[anatomy.brain] > 0
    voxel_cluster = anatomy.cluster[anatomy.brain][signal_mask].astype(int) - 1
    voxels = jitter_voxel_tuning(rng, population.clusters, voxel_cluster)
    tuning = voxel_tuning_responses(population, voxels)
    n_signal = len(voxel_cluster)
    # log-normal with mean 1: exp(N(-0.3**2 / 2, 0.3))
    gain = config.signal_psc * np.exp(rng.normal(-0.045, 0.3, n_signal))
    evoked = config.evoked_psc * np.exp(rng.normal(-0.045, 0.3, n_signal))
    delay = np.clip(rng.normal(0.0, config.hrf_delay_sd, n_signal), -1.5, 1.5)
    n_brain = int(anatomy.brain.sum())
    physio = rng.normal(size=(n_brain, 4)) / 2.0  # unit expected power over the 4 components
    regional = _regional_loadings(rng, anatomy)
    return Subject(
        anatomy=anatomy,
        voxel_cluster=voxel_cluster,
        responses=(gain * tuning).astype(np.float32),
        evoked=evoked,
        hrf_delay=np.round(delay / HRF_DELAY_STEP_S) * HRF_DELAY_STEP_S,
        physio_loading=physio,
        regional_loading=regional,
        global_loading=np.exp(rng.normal(0.0, 0.3, n_brain)),
        noise_scale=float(np.exp(rng.normal(0.0, config.subject_noise_jitter))),
        trials=trial_order(rng, config, test_ids, train_ids),
    )


def _regional_loadings(rng: np.random.Generator, anatomy: Anatomy) -> np.ndarray:
    """Smooth spatial maps, normalised so every voxel gets unit total regional variance."""
    positions = np.argwhere(anatomy.brain)
    centres = positions[rng.choice(len(positions), N_REGIONAL_COMPONENTS, replace=False)]
    d2 = ((positions[:, None, :] - centres[None, :, :]) ** 2).sum(axis=-1)
    loading = np.exp(-d2 / (2 * REGIONAL_SMOOTHNESS_VOXELS**2)) + 0.05
    return loading / np.linalg.norm(loading, axis=1, keepdims=True)


def simulate_run(
    rng: np.random.Generator,
    config: SyntheticFMRIConfig,
    subject: Subject,
    run_trials: np.ndarray,
    onsets: np.ndarray,
    session_scale: float,
) -> np.ndarray:
    """One run's 4D image, float32 [*shape, n_volumes], in scanner intensity units."""
    n_vols = config.n_volumes
    noise = _run_noise(rng, config, subject) * subject.noise_scale
    n_trials = len(run_trials)
    trial_gain = 1.0 + rng.normal(0.0, config.trial_gain_sd, size=(n_trials, 1))
    n_clusters = int(subject.voxel_cluster.max(initial=-1)) + 1
    neural = rng.normal(0.0, config.neural_noise_psc, size=(n_trials, n_clusters))
    amplitude = (subject.evoked + subject.responses[run_trials]) * trial_gain
    amplitude += neural[:, subject.voxel_cluster]
    evoked_bold = np.zeros((n_vols, len(subject.voxel_cluster)))
    for delay in np.unique(subject.hrf_delay):
        columns = subject.hrf_delay == delay
        evoked_bold[:, columns] = trial_regressors(config, onsets, delay) @ amplitude[:, columns]
    signal_mask = subject.anatomy.roi[subject.anatomy.brain] > 0
    noise[:, signal_mask] += evoked_bold
    anatomy = subject.anatomy
    baseline = anatomy.baseline[anatomy.brain] * session_scale
    volume = np.zeros((*anatomy.shape, n_vols), dtype=np.float32)
    volume[anatomy.brain] = (baseline * (1.0 + noise / 100.0)).T
    return volume


def _run_noise(
    rng: np.random.Generator, config: SyntheticFMRIConfig, subject: Subject
) -> np.ndarray:
    """All noise of one run in psc, [n_volumes, V_brain]."""
    n_vols = config.n_volumes
    n_brain = len(subject.global_loading)
    times = np.arange(n_vols) * config.tr
    duration = n_vols * config.tr
    # voxel noise
    noise = config.thermal_noise_psc * _ar1(rng, n_vols, n_brain, config.ar_coefficient)
    # slow drift: a linear trend and cosines of period 2, 1 and 2/3 run lengths, weaker with order
    orders = np.arange(1, 4)
    basis = np.cos(np.pi * np.outer(times / duration, orders))
    basis = np.column_stack([basis, times / duration - 0.5])
    coefficients = rng.normal(size=(4, n_brain)) / np.append(orders, 1.0)[:, None]
    noise += config.drift_psc * (basis @ coefficients) / np.sqrt(basis.shape[1] / 2)
    # global and regional shared fluctuations
    noise += config.global_noise_psc * np.outer(
        _ar1(rng, n_vols, 1, 0.9)[:, 0], subject.global_loading
    )
    regional = _ar1(rng, n_vols, N_REGIONAL_COMPONENTS, 0.7)
    noise += config.regional_noise_psc * regional @ subject.regional_loading.T
    noise += config.physio_noise_psc * _physiological(rng, config) @ subject.physio_loading.T
    return noise


def _physiological(rng: np.random.Generator, config: SyntheticFMRIConfig) -> np.ndarray:
    """Cardiac and respiratory quadrature pairs sampled at the TR (aliased): [n_volumes, 4]."""
    dt = config.tr / FINE_OVERSAMPLING
    n_fine = config.n_volumes * FINE_OVERSAMPLING
    series = []
    for mean_hz, spread_hz in ((1.1, 0.1), (0.27, 0.04)):
        # the rate differs between runs and wanders slowly within a run
        rate = mean_hz + spread_hz * rng.uniform(-1, 1)
        wander = ndimage.gaussian_filter1d(rng.normal(size=n_fine), sigma=10.0 / dt)
        wander *= 0.05 * rate / (wander.std() + 1e-12)
        phase = 2 * np.pi * np.cumsum(rate + wander) * dt + rng.uniform(0, 2 * np.pi)
        series += [np.cos(phase), np.sin(phase)]
    return np.stack(series, axis=1)[::FINE_OVERSAMPLING] * np.sqrt(2)


# ---------------------------------------------------------------------------------------------
# Writing BIDS


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
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the dataset is meant to be shared
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
        "(mindzoo.datasets.synthetic_fmri). Images are in stimuli/, brain and ROI masks in\n"
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
