"""The ROI: the voxels (volume spaces) or fsaverage vertices kept, with positions and names.

A volume ROI is ``nsddata/ppdata/subjXX/<space>/roi/<roi>.nii.gz``, a surface ROI
``nsddata/freesurfer/fsaverage/label/{lh,rh}.<roi>.mgz`` (-1 outside the brain, 0 outside the
ROI, > 0 inside); codes are named from ``<roi>.mgz.ctab`` when NSD ships it. Vertex positions
come from the fsaverage surface ``surface_coordinates``.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
from nibabel.affines import apply_affine

from mindzoo.errors import UserInputError
from mindzoo.pipelines.nsd.config import NSDConfig
from mindzoo.pipelines.nsd.mirror import FSAVERAGE, HEMISPHERES, Mirror


@dataclass
class Region:
    """The voxels (vertices) kept, with positions. Surface: ijk = (hemisphere 0/1, vertex, 0)."""

    ijk: np.ndarray  # int32 [voxel, 3]
    xyz: np.ndarray  # float32 [voxel, 3], mm
    roi_labels: np.ndarray
    affine: np.ndarray
    shape: tuple[int, int, int]
    hemisphere_masks: list[np.ndarray]  # surface: kept vertices of lh and rh; volume: []


def volume_region(mirror: Mirror, subject: int, config: NSDConfig) -> Region:
    relative = f"nsddata/ppdata/subj{subject:02d}/{config.space}/roi/{config.roi}.nii.gz"
    image = nib.load(mirror.require(relative))
    codes = np.rint(np.asanyarray(image.dataobj)).astype(np.int32)
    if codes.ndim != 3:
        raise UserInputError(f"{relative} has shape {codes.shape}, expected a 3D ROI volume")
    ijk = np.argwhere(codes > 0).astype(np.int32)
    if not len(ijk):
        raise UserInputError(f"{relative} marks no voxel (> 0); choose another roi")
    return Region(
        ijk=ijk,
        xyz=apply_affine(image.affine, ijk).astype(np.float32),
        roi_labels=_roi_names(mirror, config.roi, codes[tuple(ijk.T)]),
        affine=image.affine.copy(),
        shape=tuple(int(n) for n in codes.shape),
        hemisphere_masks=[],
    )


def surface_region(mirror: Mirror, config: NSDConfig) -> Region:
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
    return Region(
        ijk=ijk,
        xyz=np.concatenate([pos[mask] for pos, mask in zip(positions, masks, strict=True)]),
        roi_labels=_roi_names(
            mirror, config.roi, np.concatenate([c[m] for c, m in zip(codes, masks, strict=True)])
        ),
        affine=np.eye(4),
        shape=(len(HEMISPHERES), len(codes[0]), 1),
        hemisphere_masks=masks,
    )


def _vertex_positions(mirror: Mirror, hemi: str, n_vertices: int, config: NSDConfig) -> np.ndarray:
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


def _roi_names(mirror: Mirror, roi: str, codes: np.ndarray) -> np.ndarray:
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
