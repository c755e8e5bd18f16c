"""Reading the released single-trial betas of the ROI, one file (or lh and rh) per session.

Units: int16 betas hold 300 x percent signal change (NSD data manual) and are divided by 300;
float betas (the fsaverage ``.mgh`` files) are percent signal change already.

Formats: ``betas_sessionYY.nii.gz`` (``[X, Y, Z, T]``), ``.hdf5`` (dataset ``betas``,
``[T, Z, Y, X]``) and fsaverage ``{lh,rh}.betas_sessionYY.mgh`` (``[163842, 1, 1, T]``).
"""

from __future__ import annotations

import warnings
import zlib
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
from tqdm.auto import tqdm

from mindzoo.errors import UserInputError
from mindzoo.pipelines.nsd.config import NSDConfig
from mindzoo.pipelines.nsd.regions import Region
from mindzoo.pipelines.nsd.subjects import SubjectPlan

# int16 betas are percent signal change x 300 (NSD data manual, "Functional data (NSD)").
INT16_BETA_SCALE = 300.0


def load_betas(plan: SubjectPlan, config: NSDConfig, bar: tqdm) -> np.ndarray:
    """Percent-signal-change betas ``[trial, voxel]`` of all planned sessions, in trial order."""
    per_session = []
    for session_files in plan.files:
        parts = []
        for hemi_index, path in enumerate(session_files):
            bar.set_postfix_str(f"subj{plan.subject:02d} {path.name}", refresh=False)
            try:
                if config.space == "fsaverage":
                    parts.append(
                        _read_surface_betas(path, plan.region.hemisphere_masks[hemi_index])
                    )
                elif path.suffix == ".hdf5":
                    parts.append(_read_hdf5_betas(path, plan.region))
                else:
                    parts.append(_read_nifti_betas(path, plan.region))
            except (OSError, EOFError, zlib.error) as err:  # e.g. an interrupted download
                raise UserInputError(
                    f"Cannot read {path} ({err}); download it again from the NSD release"
                ) from err
            bar.update()
        per_session.append(np.hstack(parts))
    return np.concatenate(per_session)


def _percent_signal_change(values: np.ndarray, stored: np.dtype) -> np.ndarray:
    values = values.astype(np.float32, copy=False)
    return values / np.float32(INT16_BETA_SCALE) if np.issubdtype(stored, np.integer) else values


def _read_nifti_betas(path: Path, region: Region) -> np.ndarray:
    image = nib.load(path)
    if image.ndim != 4 or tuple(image.shape[:3]) != region.shape:
        raise UserInputError(
            f"{path.name} has shape {tuple(image.shape)} but the ROI grid is {region.shape}; "
            "use betas and ROI of one NSD space"
        )
    if not np.allclose(image.affine, region.affine, atol=1e-3):
        # One message for all sessions (warnings shows each distinct text once).
        warnings.warn(
            "NSD beta files and ROI files have different NIfTI affines; voxel positions come "
            "from the ROI files (both are on NSD's grid of the space)",
            stacklevel=2,
        )
    proxy = image.dataobj
    raw = proxy.get_unscaled() if nib.is_proxy(proxy) else np.asanyarray(proxy)
    i, j, k = region.ijk.T
    values = raw[i, j, k].T  # [trial, voxel]
    slope, inter = (float(proxy.slope), float(proxy.inter)) if nib.is_proxy(proxy) else (1, 0)
    if slope != 1.0 or inter != 0.0:
        values = values * np.float32(slope) + np.float32(inter)
    return _percent_signal_change(values, image.get_data_dtype())


def _read_hdf5_betas(path: Path, region: Region) -> np.ndarray:
    with h5py.File(path, "r") as file:
        data = file["betas"]
        if data.ndim != 4 or tuple(data.shape[:0:-1]) != region.shape:
            raise UserInputError(
                f"{path.name} has betas of shape {data.shape} ([trial, z, y, x]) but the ROI grid "
                f"is {region.shape} (x, y, z); use betas and ROI of one NSD space"
            )
        # NSD's files are chunked one voxel (all trials) per chunk: reading the ROI's bounding
        # box touches only those chunks instead of the whole ~1 GB session.
        low = region.ijk.min(axis=0)
        high = region.ijk.max(axis=0) + 1
        box = data[:, low[2] : high[2], low[1] : high[1], low[0] : high[0]]
        dtype = data.dtype
    i, j, k = (region.ijk - low).T
    return _percent_signal_change(box[:, k, j, i], dtype)


def _read_surface_betas(path: Path, mask: np.ndarray) -> np.ndarray:
    image = nib.load(path)
    if image.shape[0] != len(mask) or int(np.prod(image.shape[1:-1])) != 1:
        raise UserInputError(
            f"{path.name} has shape {tuple(image.shape)}, expected ({len(mask)}, 1, 1, trials) "
            "like the fsaverage ROI labels"
        )
    raw = np.asanyarray(image.dataobj).reshape(len(mask), -1)
    return _percent_signal_change(raw[mask].T, image.get_data_dtype())
