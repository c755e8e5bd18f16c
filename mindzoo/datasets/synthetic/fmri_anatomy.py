"""`synthetic-fmri` anatomy: each subject's volume, brain, cortical ribbon, ROIs and cluster patches.

See "Anatomy" in :mod:`mindzoo.datasets.synthetic.fmri`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from mindzoo.datasets.synthetic.fmri_config import SyntheticFMRIConfig
from mindzoo.datasets.synthetic.fmri_tuning import REGIONS

RIBBON_DEPTH_VOXELS = 3.0
ROI_SIZE = 1.75  # scales every ROI blob (sets the signal-voxel count)


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
