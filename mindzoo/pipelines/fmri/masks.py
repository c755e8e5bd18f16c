"""Voxel grids and the signal ROI: which voxels of a subject's bold the betas keep.

The signal ROI is the intersection of fMRIPrep's per-run brain masks (when there are any) and of
the ``roi_mask`` folder's brain mask and ``dseg > 0``; with neither, nilearn's EPI mask of the
subject's first run. Every run of a subject must lie on one voxel grid; a mask on another grid
is refused unless ``mask_resample=nearest``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from nilearn.image import resample_img
from nilearn.masking import compute_epi_mask

from mindzoo.errors import UserInputError
from mindzoo.pipelines.fmri.bids import parse_entities, require_content, strip_bold_extension
from mindzoo.pipelines.fmri.config import FMRIPipelineConfig, under_root
from mindzoo.pipelines.fmri.runs import RunPlan
from mindzoo.pipelines.fmri.sources import SourceFiles

# Tolerance between mask and bold affines, in mm: sform/qform round-trips differ by ~1e-6.
_AFFINE_TOLERANCE_MM = 1e-3
# A resampled mask must keep this share of its volume inside the bold field of view; less
# means the two images are not in the same space, and nearest-neighbour would silently crop.
_MIN_RESAMPLED_VOLUME = 0.5


def grid_difference(reference: nib.Nifti1Image, other: nib.Nifti1Image) -> str | None:
    """How ``other``'s voxel grid differs from ``reference``'s, in words; ``None`` if the same.

    Grids are the same when the shapes (first 3 axes) match and the affines agree within
    ``_AFFINE_TOLERANCE_MM``.
    """
    reference_shape, other_shape = tuple(reference.shape[:3]), tuple(other.shape[:3])
    offset = float(abs(reference.affine - other.affine).max())
    if reference_shape == other_shape and offset <= _AFFINE_TOLERANCE_MM:
        return None
    parts = []
    if reference_shape != other_shape:
        parts.append(f"shape {other_shape} vs {reference_shape}")
    zooms = _voxel_sizes(other.affine), _voxel_sizes(reference.affine)
    if not np.allclose(*zooms, atol=_AFFINE_TOLERANCE_MM):
        parts.append(f"voxel size {_mm(zooms[0])} vs {_mm(zooms[1])} mm")
    shift = float(np.linalg.norm(other.affine[:3, 3] - reference.affine[:3, 3]))
    if shift > _AFFINE_TOLERANCE_MM:
        parts.append(f"origin {shift:.3g} mm apart")
    if not parts:
        parts.append(f"affines differ by up to {offset:.3g}")
    return ", ".join(parts)


def _voxel_sizes(affine: np.ndarray) -> np.ndarray:
    return np.sqrt((affine[:3, :3] ** 2).sum(axis=0))


def _mm(sizes: np.ndarray) -> str:
    return "x".join(f"{size:.3g}" for size in sizes)


def check_same_grid(
    reference: nib.Nifti1Image,
    reference_name: str,
    other: nib.Nifti1Image,
    other_name: str,
    fix: str = "resample the mask to the bold grid",
) -> None:
    """Refuse a mask or run whose voxel grid (shape, affine) differs from the reference grid."""
    difference = grid_difference(reference, other)
    if difference is not None:
        raise UserInputError(
            f"{other_name} is on a different voxel grid than {reference_name} ({difference}); {fix}"
        )


@dataclass(frozen=True)
class MaskFiles:
    """The derivative files that define a subject's voxels (any may be absent)."""

    brain_mask: Path | None
    dseg: Path | None
    dseg_labels: Path | None


def find_subject_masks(mask_root: Path, subject: str) -> MaskFiles:
    """The brain mask and ROI segmentation for ``sub-<subject>`` under ``mask_root``.

    Looks for ``*_desc-brain_mask.nii[.gz]`` and ``*_dseg.nii[.gz]`` (with a ``*_dseg.tsv``
    of ``index``/``name`` beside it) anywhere below ``mask_root/sub-<subject>``.
    """
    subject_dir = mask_root / f"sub-{subject}"
    if not subject_dir.is_dir():
        raise UserInputError(
            f"No mask folder {subject_dir}; add the brain mask/dseg there, set roi_mask to the "
            "folder that holds them, or roi_mask=null (fMRIPrep's brain masks, else an EPI mask)"
        )
    brain = _one_nifti(subject_dir, "*_desc-brain_mask.nii*")
    dseg = _one_nifti(subject_dir, "*_dseg.nii*")
    if brain is None and dseg is None:
        raise UserInputError(
            f"No *_desc-brain_mask.nii[.gz] or *_dseg.nii[.gz] under {subject_dir}; add one or "
            "set roi_mask=null to compute an EPI mask"
        )
    labels = None
    if dseg is not None:
        tsv = dseg.parent / (dseg.name.split(".nii")[0] + ".tsv")
        labels = tsv if tsv.is_file() else None
    return MaskFiles(brain_mask=brain, dseg=dseg, dseg_labels=labels)


def _one_nifti(folder: Path, pattern: str) -> Path | None:
    matches = sorted(p for p in folder.rglob(pattern) if strip_bold_extension(p.name) is not None)
    if len(matches) > 1:
        raise UserInputError(
            f"Several files match {pattern} under {folder} ({', '.join(p.name for p in matches)}); "
            "keep one per subject"
        )
    return matches[0] if matches else None


def read_dseg_labels(path: Path | None) -> dict[int, str]:
    """``index -> name`` from a dseg TSV; empty when there is none."""
    if path is None:
        return {}
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    if not {"index", "name"} <= set(table.columns):
        raise UserInputError(
            f"{path.name} needs columns index and name (has: {', '.join(table.columns)}); "
            "fix the segmentation table"
        )
    try:
        return {int(index): name for index, name in zip(table["index"], table["name"], strict=True)}
    except ValueError as err:
        raise UserInputError(
            f"{path.name}: column index must hold integers ({err}); fix the segmentation table"
        ) from err


@dataclass
class Voxels:
    """The voxels a subject's betas keep, on one bold grid."""

    ijk: np.ndarray  # int32 [voxel, 3], C order of the grid
    roi_labels: np.ndarray
    affine: np.ndarray
    shape: tuple[int, int, int]
    space: str

    def flat_index(self) -> np.ndarray:
        """Index of each voxel in a volume flattened in NIfTI (Fortran) order."""
        return np.ravel_multi_index(tuple(self.ijk.T), self.shape, order="F")


def subject_voxels(
    root: Path,
    subject: str,
    plans: list[RunPlan],
    config: FMRIPipelineConfig,
    sources: SourceFiles,
) -> Voxels | None:
    """Signal-ROI voxels from the masks; ``None`` when an EPI mask is computed later.

    Every run must lie on the grid of the first one; masks are checked against it (and
    resampled onto it with ``mask_resample=nearest``).
    """
    reference = plans[0]
    for plan in plans[1:]:
        check_same_grid(
            reference.image,
            reference.run.name,
            plan.image,
            plan.run.name,
            fix="every run of a subject must be on one grid: use data registered to one space "
            "(e.g. input=fmriprep) or limit sessions",
        )
    inside = np.ones(reference.image.shape[:3], dtype=bool)
    masks = [plan.run.brain_mask for plan in plans if plan.run.brain_mask is not None]
    for path in masks:  # fMRIPrep's: keep voxels inside the brain in every run
        inside &= _mask_on_grid(path, reference, config) > 0
    space = reference.run.entities.get("space")
    segmentation, labels_path = None, None
    if config.roi_mask is not None:
        files = find_subject_masks(under_root(root, config.roi_mask), subject)
        if files.brain_mask is not None:
            inside &= _mask_on_grid(files.brain_mask, reference, config) > 0
            space = space or parse_entities(files.brain_mask.name)[0].get("space")
        if files.dseg is not None:
            segmentation = np.rint(_mask_on_grid(files.dseg, reference, config)).astype(np.int32)
            inside &= segmentation > 0
            space = space or parse_entities(files.dseg.name)[0].get("space")
        masks += [path for path in (files.brain_mask, files.dseg) if path is not None]
        labels_path = files.dseg_labels
    if not masks:
        return None
    sources.add(*masks, labels_path)
    if not inside.any():
        shown = " & ".join(path.name for path in masks)
        raise UserInputError(f"The signal ROI ({shown}) is empty; fix the masks")
    ijk = np.argwhere(inside).astype(np.int32)
    if segmentation is None:
        roi_labels = np.full(len(ijk), "brain")
    else:
        names = read_dseg_labels(labels_path)
        codes = segmentation[tuple(ijk.T)]
        roi_labels = np.array([names.get(int(code), f"roi-{code}") for code in codes])
    return Voxels(
        ijk=ijk,
        roi_labels=roi_labels,
        affine=reference.image.affine.copy(),
        shape=tuple(int(n) for n in reference.image.shape[:3]),
        space=space or "native",
    )


def _mask_on_grid(path: Path, reference: RunPlan, config: FMRIPipelineConfig) -> np.ndarray:
    """A 3D mask's values on the reference run's grid (resampled if allowed and needed)."""
    require_content(path)
    mask = nib.load(path)
    if len(mask.shape) == 4 and mask.shape[3] == 1:
        mask = mask.slicer[..., 0]
    if len(mask.shape) != 3:
        raise UserInputError(
            f"Expected a 3D mask, got shape {tuple(mask.shape)} from {path.name}; pass one volume"
        )
    difference = grid_difference(reference.image, mask)
    if difference is None:
        return np.asanyarray(mask.dataobj)
    if config.mask_resample == "never":
        raise UserInputError(
            f"{path.name} is on a different voxel grid than {reference.run.name} ({difference}); "
            "set mask_resample=nearest to resample the mask to the bold grid (only if both are "
            "in the same space), or resample it yourself"
        )
    return _resample_mask(mask, path.name, reference)


def _resample_mask(mask: nib.Nifti1Image, name: str, reference: RunPlan) -> np.ndarray:
    """Nearest-neighbour resampling onto the bold grid, refused if it crops most of the mask."""
    target_shape = tuple(int(n) for n in reference.image.shape[:3])
    resampled = resample_img(
        nib.Nifti1Image(np.asanyarray(mask.dataobj), mask.affine),
        target_affine=reference.image.affine,
        target_shape=target_shape,
        interpolation="nearest",
        force_resample=True,
        copy_header=True,
    )
    values = np.asanyarray(resampled.dataobj)
    volume_before = np.count_nonzero(np.asanyarray(mask.dataobj)) * _voxel_volume(mask.affine)
    volume_after = np.count_nonzero(values) * _voxel_volume(reference.image.affine)
    if volume_before > 0 and volume_after < _MIN_RESAMPLED_VOLUME * volume_before:
        raise UserInputError(
            f"{name} resampled to the grid of {reference.run.name} keeps "
            f"{100 * volume_after / volume_before:.0f}% of its volume, the rest is outside the "
            "bold field of view; use a mask in the same space as the bold"
        )
    return values


def _voxel_volume(affine: np.ndarray) -> float:
    return float(abs(np.linalg.det(affine[:3, :3])))


def epi_voxels(mean_volume: np.ndarray, plan: RunPlan) -> Voxels:
    """All voxels of nilearn's EPI mask of a run's mean volume (no mask given)."""
    mean_image = nib.Nifti1Image(mean_volume, plan.image.affine)
    mask = np.asanyarray(compute_epi_mask(mean_image).dataobj) > 0
    ijk = np.argwhere(mask).astype(np.int32)
    if len(ijk) == 0:
        raise UserInputError(
            f"nilearn found no brain in {plan.run.name}; pass a mask with roi_mask=FOLDER"
        )
    return Voxels(
        ijk=ijk,
        roi_labels=np.full(len(ijk), "brain"),
        affine=plan.image.affine.copy(),
        shape=tuple(int(n) for n in plan.image.shape[:3]),
        space=plan.run.entities.get("space", "native"),
    )
