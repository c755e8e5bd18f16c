"""`synthetic-fmri` functional tuning: regions, clusters, stimulus descriptors, voxel tuning.

The signal ROIs and their functional clusters (shared by all subjects), the low-level and
semantic descriptors of the stimuli, and each voxel's tuning to them (receptive field, channel
weights, semantic direction); see "Stimulus descriptors" and "Functional clusters" in
:mod:`mindzoo.datasets.synthetic.fmri`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


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
