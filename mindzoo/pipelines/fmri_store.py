"""The fMRI store layout, and the two registered pipelines that write it.

Both the BIDS pipeline (:mod:`mindzoo.pipelines.fmri`: GLM betas from bold runs) and the NSD
mirror import (:mod:`mindzoo.pipelines.nsd`: precomputed betas) hand over a
:class:`~mindzoo.pipelines.fmri.PreparedFMRI`; it is written as stimuli (images, ids, labels,
splits), the feature spaces the settings name (computed from the images here), and per subject
betas ``[trial, voxel]`` with a ``voxels`` axis (``ijk``, ``xyz`` in mm, ROI codes; ROI names,
affine, volume shape and space as attributes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mindzoo.errors import UserInputError
from mindzoo.features import compute_features
from mindzoo.pipelines.base import Pipeline, Written
from mindzoo.pipelines.fmri import FMRIPipelineConfig, PreparedFMRI, input_files, prepare_bids_fmri
from mindzoo.pipelines.nsd import NSDConfig, prepare_nsd_mirror


def write_fmri_store(
    writer: Any, prepared: PreparedFMRI, root: Path, settings: dict[str, Any], progress: bool
) -> Written:
    """Write ``prepared`` (and the ``settings["features"]`` of its images) with ``writer``."""
    writer.write_stimuli(
        prepared.images,
        prepared.stimulus_ids,
        prepared.stimulus_labels,
        prepared.stimulus_splits,
    )
    if settings["features"] and prepared.images is None:
        raise UserInputError(
            f"{root}: the events name stimuli but no image files were found under stimuli/; "
            "add the images or prepare with --set features=[]"
        )
    for space in settings["features"]:
        writer.write_features(space, compute_features(space, prepared.images, progress=progress))
    for subject, data in prepared.subjects.items():
        roi_names = sorted(set(data.roi_labels.tolist()))
        roi_codes = np.searchsorted(roi_names, data.roi_labels).astype(np.int16)
        writer.write_subject(
            subject,
            data.betas.astype(np.float32, copy=False),
            data.trials,
            "voxels",
            {
                "ijk": data.voxel_ijk.astype(np.int32),
                "xyz": data.voxel_xyz.astype(np.float32),
                "roi": roi_codes,
            },
            {
                "roi_names": roi_names,
                "affine": np.asarray(data.affine).tolist(),
                "volume_shape": list(data.volume_shape),
                "space": data.space,
            },
        )
    return Written(sorted(prepared.subjects), len(prepared.source_files))


class BidsFMRIPipeline(Pipeline):
    """BIDS bold runs + events -> single-trial GLM betas (:mod:`mindzoo.pipelines.fmri`)."""

    name = "fmri"
    # -2: pixels/lowres features; bumped whenever what a version holds changes, so an old store
    # is rebuilt beside the new one instead of being a cache hit that lacks them.
    version = "fmri-2"
    config_cls = FMRIPipelineConfig

    def input_files(
        self, root: Path, config: FMRIPipelineConfig, settings: dict[str, Any]
    ) -> list[Path]:
        return input_files(root, config, with_images=bool(settings["features"]))

    def write(
        self,
        root: Path,
        config: FMRIPipelineConfig,
        settings: dict[str, Any],
        writer: Any,
        progress: bool,
    ) -> Written:
        with_images = bool(settings["features"])
        prepared = prepare_bids_fmri(root, config, progress=progress, with_images=with_images)
        return write_fmri_store(writer, prepared, root, settings, progress)


class NSDMirrorPipeline(Pipeline):
    """A local NSD mirror's precomputed betas (:mod:`mindzoo.pipelines.nsd`)."""

    name = "nsd-mirror"
    version = "nsd-2"
    config_cls = NSDConfig

    def write(
        self, root: Path, config: NSDConfig, settings: dict[str, Any], writer: Any, progress: bool
    ) -> Written:
        prepared = prepare_nsd_mirror(root, config, progress=progress)
        return write_fmri_store(writer, prepared, root, settings, progress)


BIDS_FMRI = BidsFMRIPipeline()
NSD_MIRROR = NSDMirrorPipeline()
