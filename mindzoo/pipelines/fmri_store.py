"""The fMRI store layout, and the two registered pipelines that write it.

Both the BIDS pipeline (:mod:`mindzoo.pipelines.fmri`: GLM betas from bold runs) and the NSD
mirror import (:mod:`mindzoo.pipelines.nsd`: precomputed betas) hand over a
:class:`~mindzoo.pipelines.fmri.PreparedFMRI`; it is written as stimuli (images, ids, labels,
splits), the feature spaces the settings name (computed from the images here), and per subject
betas ``[trial, voxel]`` with a ``voxels`` axis (``ijk``, ``xyz`` in mm, ROI codes; ROI names,
affine, volume shape and space as attributes).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from mindzoo.datasets.store import FEATURE_CHUNK
from mindzoo.errors import UserInputError
from mindzoo.features import compute_features
from mindzoo.pipelines.base import Pipeline, Written
from mindzoo.pipelines.fmri import (
    FMRIPipelineConfig,
    PreparedFMRI,
    SubjectBetas,
    input_files,
    prepare_bids_fmri,
)
from mindzoo.pipelines.fmri.pipeline import (
    FMRIPlan,
    fit_bids_subject,
    plan_bids_fmri,
    stimulus_images,
)
from mindzoo.pipelines.fmri.stimuli import load_images
from mindzoo.pipelines.nsd import NSDConfig, prepare_nsd_mirror


def write_fmri_shared(
    writer: Any, prepared: PreparedFMRI, root: Path, settings: dict[str, Any], progress: bool
) -> None:
    """Stimuli (images, ids, labels, splits) and the ``settings["features"]`` of the images."""
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


def write_fmri_subject(writer: Any, data: SubjectBetas) -> None:
    """One subject's betas ``[trial, voxel]``, trial table and ``voxels`` axis."""
    roi_names = sorted(set(data.roi_labels.tolist()))
    roi_codes = np.searchsorted(roi_names, data.roi_labels).astype(np.int16)
    writer.write_subject(
        data.subject,
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
            # only when runs were left out, so other stores keep their bytes
            **(
                {"runs_without_trials": list(data.runs_without_trials)}
                if data.runs_without_trials
                else {}
            ),
        },
    )


def write_fmri_store(
    writer: Any, prepared: PreparedFMRI, root: Path, settings: dict[str, Any], progress: bool
) -> Written:
    """Write ``prepared`` (and the ``settings["features"]`` of its images) with ``writer``."""
    write_fmri_shared(writer, prepared, root, settings, progress)
    for data in prepared.subjects.values():
        write_fmri_subject(writer, data)
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

    # A parallel prepare: one job per subject (GLM fits), one for the stimulus table and
    # images, and up to ``workers`` for the features (whole chunks of rows each). Every job
    # re-plans from events and headers (seconds), so each sees the same stimulus catalogue.
    def parallel_units(
        self,
        root: Path,
        config: FMRIPipelineConfig,
        settings: dict[str, Any],
        writer: Any,
        workers: int,
    ) -> list[str]:
        plan = plan_bids_fmri(root, config, bool(settings["features"]))
        units = [STIMULI_UNIT, *(f"sub-{s}" for s in plan.subjects)]
        if settings["features"]:
            if plan.catalog.image_paths is None:
                raise UserInputError(
                    f"{root}: the events name stimuli but no image files were found under "
                    "stimuli/; add the images or prepare with --set features=[]"
                )
            n = len(plan.catalog.ids)
            probe = load_images(plan.catalog.image_paths[:1], config.image_size)
            for space in settings["features"]:
                one = compute_features(space, probe, progress=False)
                writer.create_features(
                    space, {k: ((n, *v.shape[1:]), v.dtype.str) for k, v in one.items()}
                )
            # the long feature jobs first, so that the short ones fill the other workers
            units = [f"{FEATURES_UNIT}{a}:{b}" for a, b in feature_slices(n, workers)] + units
        return units

    def write_unit(
        self,
        root: Path,
        config: FMRIPipelineConfig,
        settings: dict[str, Any],
        writer: Any,
        unit: str,
        progress: bool,
    ) -> list[str]:
        plan = _job_plan(str(root), config.model_dump_json(), bool(settings["features"]))
        if unit == STIMULI_UNIT:
            images = stimulus_images(plan)
            catalog = plan.catalog
            writer.write_stimuli(images, catalog.ids, catalog.labels, catalog.splits)
        elif unit.startswith(FEATURES_UNIT):
            start, stop = (int(x) for x in unit.removeprefix(FEATURES_UNIT).split(":"))
            images = load_images(plan.catalog.image_paths[start:stop], config.image_size)
            for space in settings["features"]:
                values = compute_features(space, images, progress=progress)
                for kind, rows in values.items():
                    writer.write_feature_rows(space, kind, start, rows)
        else:
            write_fmri_subject(writer, fit_bids_subject(plan, unit.removeprefix("sub-"), progress))
        if unit in (STIMULI_UNIT,) or unit.startswith(FEATURES_UNIT):
            plan.sources.add(*(plan.catalog.image_paths or []))
        return [str(path) for path in plan.sources.paths()]


@functools.lru_cache(maxsize=2)
def _job_plan(root: str, config_json: str, with_images: bool) -> FMRIPlan:
    """The plan of a parallel prepare, made once per worker process (a worker runs several
    units of the same prepare)."""
    config = FMRIPipelineConfig.model_validate_json(config_json)
    return plan_bids_fmri(Path(root), config, with_images)


STIMULI_UNIT = "stimuli"
FEATURES_UNIT = "features:"


def feature_slices(n: int, workers: int) -> list[tuple[int, int]]:
    """``[start, stop)`` row ranges of whole feature chunks, about one per worker."""
    n_chunks = max(1, -(-n // FEATURE_CHUNK))
    per_job = -(-n_chunks // max(1, min(workers, n_chunks)))
    step = per_job * FEATURE_CHUNK
    return [(start, min(n, start + step)) for start in range(0, n, step)]


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
