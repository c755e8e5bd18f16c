"""`prepare`: dataset spec + source -> pipeline -> a new (or cached) tensor store version."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mindzoo import __version__
from mindzoo.config import config_hash
from mindzoo.datasets.catalog import DatasetSpec, get_dataset, resolve_settings
from mindzoo.datasets.store import SCHEMA_VERSION, StoreWriter, find_version, set_current
from mindzoo.errors import UserInputError

PIPELINE_VERSION = "fmri-1"


@dataclass
class PrepareResult:
    """Where the prepared version lives and whether it came from the cache."""

    version_dir: Path
    cache_hit: bool
    seconds: float
    config_hash: str


def fingerprint_tree(root: Path) -> str:
    """Cheap identity of a directory tree: sha256 over (relative path, size, mtime) of its files."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in {".git", ".datalad"})
        for name in sorted(filenames):
            path = Path(dirpath) / name
            stat = path.stat()
            digest.update(
                f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode()
            )
    return digest.hexdigest()


def _simulated_source(
    spec: DatasetSpec, simulator: dict[str, Any], store_dir: Path, progress: bool
) -> Path:
    """The simulator's BIDS output under `store_dir/raw`, generated once per simulator config."""
    from mindzoo.datasets.synthetic_fmri import SyntheticFMRIConfig, simulate_bids

    key = config_hash({"dataset": spec.name, "simulator": simulator})[:12]
    target = store_dir / "raw" / f"{spec.name}-{key}"
    if (target / "dataset_description.json").is_file():
        return target
    tmp = target.with_name(f".tmp-{target.name}-{uuid.uuid4().hex[:8]}")
    try:
        simulate_bids(tmp, SyntheticFMRIConfig(**simulator), progress=progress)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _local_source(spec: DatasetSpec, source: Path | None) -> Path:
    location = source or (Path(spec.location) if spec.location else None)
    if location is None:
        raise UserInputError(
            f"Dataset {spec.name} reads a directory on disk; pass it with --source PATH"
        )
    if not Path(location).is_dir():
        raise UserInputError(f"Source directory {location} does not exist; check --source")
    return Path(location).resolve()


def prepare_dataset(
    name: str,
    out: Path,
    source: Path | None = None,
    seed: int | None = None,
    overrides: list[str] | None = None,
    progress: bool = True,
) -> PrepareResult:
    """Prepare catalog dataset `name` into the store directory `out`.

    The same dataset, source and settings give the same config hash: a cache hit that writes
    nothing. Anything else builds a new version beside the existing ones. On failure nothing
    half-written stays behind (a store directory this call created is removed).
    """
    start = time.perf_counter()
    spec = get_dataset(name)
    if spec.modality != "fmri":
        raise UserInputError(
            f"Dataset {name} ({spec.modality}) has no pipeline in this version yet"
        )
    settings = resolve_settings(spec, overrides or [], seed)
    out = Path(out)
    if spec.source == "synthetic":
        if source is not None:
            raise UserInputError(f"Dataset {name} is generated; drop --source or use bids-fmri")
        source_id: dict[str, Any] = {"kind": "synthetic"}
    else:
        source_path = _local_source(spec, source)
        source_id = {
            "kind": "local",
            "path": str(source_path),
            "tree": fingerprint_tree(source_path),
        }
    key = config_hash(
        {
            "schema": SCHEMA_VERSION,
            "dataset": name,
            "pipeline": PIPELINE_VERSION,
            "settings": settings,
            "source": source_id,
        }
    )
    cached = find_version(out, key)
    if cached is not None:
        set_current(out, cached)
        return PrepareResult(cached, True, time.perf_counter() - start, key)

    created = not out.exists()
    try:
        if spec.source == "synthetic":
            root = _simulated_source(spec, settings["simulator"], out, progress)
        else:
            root = source_path
        version = _build_version(spec, root, settings, source_id, key, out, progress)
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    return PrepareResult(version, False, time.perf_counter() - start, key)


def _build_version(
    spec: DatasetSpec,
    root: Path,
    settings: dict[str, Any],
    source_id: dict[str, Any],
    key: str,
    out: Path,
    progress: bool,
) -> Path:
    from mindzoo.features import compute_features
    from mindzoo.pipelines.fmri import FMRIPipelineConfig, prepare_bids_fmri

    prepared = prepare_bids_fmri(
        root, FMRIPipelineConfig(**settings["pipeline"]), progress=progress
    )
    with StoreWriter(out, key) as writer:
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
            writer.write_features(
                space, compute_features(space, prepared.images, progress=progress)
            )
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
        return writer.commit(
            {
                "dataset": spec.name,
                "modality": spec.modality,
                "source": {
                    **source_id,
                    "root": str(root),
                    "n_files_read": len(prepared.source_files),
                },
                "pipeline": {"name": "fmri", "version": PIPELINE_VERSION},
                "config": settings,
                "subjects": sorted(prepared.subjects),
                "mindzoo_version": __version__,
            }
        )
