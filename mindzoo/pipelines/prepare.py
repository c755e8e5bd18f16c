"""`prepare`: dataset spec + source -> pipeline -> a new (or cached) tensor store version.

The same for every pipeline (:mod:`mindzoo.pipelines.base` names what a pipeline provides):
resolve the settings, find the source, key the version by a hash of settings, source identity
and pipeline version, and on a cache miss let the pipeline write into a new version that
:class:`~mindzoo.datasets.store.StoreWriter` publishes atomically.

Sources: the synthetic simulator, a local directory, a DataLad dataset (cloned into
``STORE/raw`` and fetched selectively, see :mod:`mindzoo.datasets.datalad_source`) or a local
NSD mirror. The config hash covers the settings and the source's identity (a local tree's
fingerprint, a DataLad commit), so a cache hit needs no download and no pipeline run.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from mindzoo import __version__
from mindzoo.atomic import missing_dirs, remove_empty
from mindzoo.config import apply_overrides, config_hash, validate
from mindzoo.datasets import catalog, datalad_source
from mindzoo.datasets.catalog import DatasetSpec, get_dataset
from mindzoo.datasets.paths import check_output
from mindzoo.datasets.store import (
    SCHEMA_VERSION,
    StoreWriter,
    find_version,
    finished_versions,
    set_current,
)
from mindzoo.errors import UserInputError
from mindzoo.executors import ExecutorSettings
from mindzoo.features import FEATURE_SPACES
from mindzoo.pipelines.base import PIPELINES, get_pipeline
from mindzoo.pipelines.parallel import job_records, write_in_jobs


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
            # a link to content not fetched (git-annex) is identified by the link itself
            stat = path.stat() if path.exists() else path.lstat()
            digest.update(
                f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode()
            )
    return digest.hexdigest()


@dataclass
class _Source:
    """Where a prepare's raw data comes from.

    ``identity`` enters the config hash (so other data is another version); ``provenance`` is
    recorded in the manifest; ``materialise()`` makes the data readable (simulating, fetching)
    and returns the directory the pipeline reads. It runs only on a cache miss.
    """

    identity: dict[str, Any]
    provenance: dict[str, Any]
    materialise: Callable[[], Path]


def _simulated_source(
    spec: DatasetSpec, simulator: dict[str, Any], store_dir: Path, progress: bool
) -> Path:
    """The simulator's BIDS output under `store_dir/raw`, generated once per simulator config."""
    config_class, simulate_bids = catalog.simulator(spec)
    key = config_hash({"dataset": spec.name, "simulator": simulator})[:12]
    target = store_dir / "raw" / f"{spec.name}-{key}"
    if not (target / "dataset_description.json").is_file():  # simulate_bids renames into place
        simulate_bids(target, config_class(**simulator), progress=progress)
    return target


def _resolve_source(
    spec: DatasetSpec,
    source: str | Path | None,
    settings: dict[str, Any],
    out: Path,
    progress: bool,
) -> _Source:
    """The source of ``spec`` (or ``source``, which overrides the catalog's location)."""
    if spec.source == "synthetic":
        if source is not None:
            raise UserInputError(
                f"Dataset {spec.name} is generated; drop --source or use bids-{spec.modality}"
            )
        return _Source(
            {"kind": "synthetic"},
            {"kind": "synthetic"},
            lambda: _simulated_source(spec, settings["simulator"], out, progress),
        )
    location = str(source) if source is not None else spec.location
    if location is None:
        raise UserInputError(
            f"Dataset {spec.name} has no default location; pass a directory, DataLad dataset or "
            "URL with --source"
        )
    if spec.source != "nsd-mirror" and (
        datalad_source.is_remote(location)
        or datalad_source.is_dataset_directory(datalad_source.local_path(location))
    ):
        return _datalad(spec, location, settings, out, progress)
    path = datalad_source.local_path(location)
    if not path.is_dir():
        raise UserInputError(f"Source directory {location} does not exist; check --source")
    path = path.resolve()
    identity = {"kind": "local", "path": str(path), "tree": fingerprint_tree(path)}
    return _Source(identity, identity, lambda: path)


def _datalad(
    spec: DatasetSpec, location: str, settings: dict[str, Any], out: Path, progress: bool
) -> _Source:
    """A DataLad dataset cloned into ``out/raw``; its content is fetched on a cache miss."""
    clone = datalad_source.clone_dataset(location, out, spec.name)
    provenance: dict[str, Any] = {
        "kind": "datalad",
        "url": clone.location,
        "commit": clone.commit,
        "clone": str(clone.path),
    }

    def materialise() -> Path:
        files = datalad_source.list_files(clone.path)
        folders = datalad_source.folders_in_settings(settings["pipeline"], files)
        metadata = datalad_source.metadata_files(files, folders)
        fetched = datalad_source.fetch(clone, metadata, progress)
        # The pipeline itself says what it will read (and refuses unknown subjects, sessions
        # or tasks, listing the ones there are) from the metadata alone.
        pipeline = get_pipeline(spec.pipeline)
        config = pipeline.config_cls(**settings["pipeline"])
        needed = pipeline.input_files(clone.path, config, settings)
        selected = datalad_source.relative_files(clone.path, needed)
        fetched += datalad_source.fetch(clone, selected, progress)
        provenance["n_files_fetched"] = fetched
        return clone.path

    # The commit, not the URL, identifies the data: a mirror and a local copy at the same
    # commit are the same version; a new commit is a new one.
    return _Source({"kind": "datalad", "commit": clone.commit}, provenance, materialise)


def prepare_dataset(
    name: str,
    out: Path,
    source: str | Path | None = None,
    seed: int | None = None,
    overrides: list[str] | None = None,
    progress: bool = True,
    subjects: list[str] | None = None,
    sessions: list[str] | None = None,
    executor: ExecutorSettings | None = None,
) -> PrepareResult:
    """Prepare catalog dataset `name` into the store directory `out`.

    With a parallel ``executor`` (``--jobs N`` or Slurm) a pipeline that splits by subject runs
    one job per subject and one for stimuli and features (:mod:`mindzoo.pipelines.parallel`;
    logs under ``out/logs``); the arrays are the same bytes as a serial prepare's.

    ``source`` (a directory, a DataLad dataset or URL) overrides the catalog's location;
    ``subjects``/``sessions`` limit what is fetched and prepared. The same dataset, source data
    and settings give the same config hash: a cache hit that writes nothing. Anything else
    builds a new version beside the existing ones. On failure nothing half-written stays
    behind: a store directory this call created is removed, except a DataLad clone inside it
    (downloads are expensive and resume where they stopped). An ``out`` inside a store's
    versions or inside ``source`` is refused before anything is written
    (:func:`~mindzoo.datasets.paths.check_output`).
    """
    start = time.perf_counter()
    spec = get_dataset(name)
    if spec.pipeline not in PIPELINES:
        raise UserInputError(
            f"Dataset {name} ({spec.modality}) has no pipeline in this version yet"
        )
    settings = resolve_settings(spec, overrides or [], seed, subjects, sessions)
    out = Path(out)
    local = source is not None and not datalad_source.is_remote(str(source))
    check_output(out, source=datalad_source.local_path(str(source)) if local else None)
    with store_lock(out):
        return _prepare_locked(spec, out, source, settings, progress, executor, start=start)


@contextmanager
def store_lock(out: Path) -> Iterator[int]:
    """Hold the lock that serialises writers of the store ``out``: ``flock`` on a hidden file
    beside it (so it outlives the removal of a store a failed prepare created). A second
    ``prepare`` of the same store waits for the first, saying so in one line, then finds its
    version or builds the next one. A prepare that leaves no store behind (it was refused or
    failed before publishing anything) removes the lock file again, and the folder above ``out``
    if it made it: a refused command writes nothing. Removing is safe for waiters: whoever gets
    the lock checks that its file is still the one at the path, and retries otherwise."""
    path = out.parent / f".{out.name}.lock"
    made: list[Path] = []  # folders this call created
    try:  # one line for a place that cannot hold the lock file (e.g. under /proc)
        while True:  # (again after a retry: the last holder may have removed them)
            made = [*made, *missing_dirs(out.parent)]
            out.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(
                    f"waiting for another prepare of {out} to finish (lock {path})", file=sys.stderr
                )
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    break  # still the lock file at the path (its last holder did not remove it)
            except FileNotFoundError:
                pass
            os.close(fd)
    except OSError as exc:
        raise UserInputError(
            f"--out {out} cannot be written: {exc.strerror} ({exc.filename}); "
            "choose a writable --out"
        ) from None
    try:
        yield fd
    finally:
        if not out.exists():
            path.unlink(missing_ok=True)  # under the lock: waiters see a removed file, retry
            remove_empty(made)  # only empty folders this call made
        os.close(fd)


def _prepare_locked(
    spec: DatasetSpec,
    out: Path,
    source: str | Path | None,
    settings: dict[str, Any],
    progress: bool,
    executor: ExecutorSettings | None,
    start: float,
) -> PrepareResult:
    """:func:`prepare_dataset` holding the store's lock."""
    name = spec.name
    created = not out.exists()
    try:
        raw = _resolve_source(spec, source, settings, out, progress)
        outside = _outside_folders(settings["pipeline"])
        key = config_hash(
            {
                "schema": SCHEMA_VERSION,
                "dataset": name,
                "pipeline": get_pipeline(spec.pipeline).version,
                "settings": settings,
                "source": raw.identity,
                "folders": {folder: fingerprint_tree(Path(folder)) for folder in outside},
                "feature_weights": _feature_weights(settings.get("features", [])),
            }
        )
        cached = find_version(out, key)
        if cached is not None:
            set_current(out, cached)
            return PrepareResult(cached, True, time.perf_counter() - start, key)
        root = raw.materialise()
        version = _build_version(spec, root, settings, raw.provenance, key, out, progress, executor)
    except BaseException:
        if created:
            _remove_unfinished(out)
        raise
    return PrepareResult(version, False, time.perf_counter() - start, key)


def _feature_weights(features: list[str]) -> dict[str, str]:
    """Identity of the local weights a feature space reads (CLIP: ``$MINDZOO_CLIP_WEIGHTS`` and
    the fingerprint of that directory), so other weights make another store version."""
    if "clip" not in features:
        return {}
    folder = os.environ.get("MINDZOO_CLIP_WEIGHTS", "")
    path = Path(folder).expanduser()
    return {"clip": f"{folder}:{fingerprint_tree(path) if path.is_dir() else 'missing'}"}


def _outside_folders(pipeline: dict[str, Any]) -> list[str]:
    """Absolute folders the settings name (``stimuli_dir``, ``derivatives_dir`` ...): data that
    lives outside the source, so their fingerprints enter the config hash too."""
    folders = set()
    for value in datalad_source.setting_values(pipeline):
        if isinstance(value, str) and value.startswith(("/", "~")):
            path = Path(value).expanduser()
            if path.is_dir():
                folders.add(str(path.resolve()))
    return sorted(folders)


def _remove_unfinished(out: Path) -> None:
    """Remove a store directory a failed prepare created, keeping DataLad clones in its cache
    and never a finished version (one with a manifest) that may have appeared there."""
    cache = out / datalad_source.CACHE_DIR
    clones = [p for p in cache.iterdir() if (p / ".git").exists()] if cache.is_dir() else []
    if finished_versions(out):
        return  # not only ours any more: leave it (the failed version's temp dir is gone)
    if not clones:
        datalad_source.remove_tree(out)
        return
    keep = {cache, *clones}
    for path in [*out.iterdir(), *cache.iterdir()]:
        if path in keep:
            continue
        if path.is_dir():
            datalad_source.remove_tree(path)
        else:
            path.unlink()


def _build_version(
    spec: DatasetSpec,
    root: Path,
    settings: dict[str, Any],
    provenance: dict[str, Any],
    key: str,
    out: Path,
    progress: bool,
    executor: ExecutorSettings | None = None,
) -> Path:
    """Run ``spec``'s pipeline on ``root`` into a new store version (published atomically)."""
    pipeline = get_pipeline(spec.pipeline)
    config = pipeline.config_cls(**settings["pipeline"])
    with StoreWriter(out, key) as writer:
        jobs: dict[str, Any] = {}
        in_jobs = None
        if executor is not None and executor.parallel:
            log_dir = out / "logs" / f"prepare-{key[:12]}"
            in_jobs = write_in_jobs(pipeline, root, settings, writer, executor, log_dir, progress)
        if in_jobs is None:
            written = pipeline.write(root, config, settings, writer, progress)
        else:
            written, outcomes = in_jobs
            jobs = {"executor": executor.kind, "jobs": job_records(outcomes)}
        return writer.commit(
            {
                "dataset": spec.name,
                "modality": spec.modality,
                "source": {**provenance, "root": str(root), "n_files_read": written.n_files_read},
                "pipeline": {"name": pipeline.name, "version": pipeline.version},
                "config": settings,
                "subjects": written.subjects,
                "mindzoo_version": __version__,
                **jobs,
            }
        )


# ------------------------------------------------------------------------------------ settings
class PrepareSettings(BaseModel):
    """What `prepare` runs with (features, pipeline, simulator); the config hash covers it."""

    model_config = ConfigDict(extra="forbid")

    features: list[str]
    pipeline: dict[str, Any]
    simulator: dict[str, Any] | None = None

    @field_validator("features")
    @classmethod
    def _known_spaces(cls, spaces: list[str]) -> list[str]:
        unknown = [s for s in spaces if s not in FEATURE_SPACES]
        if unknown:
            raise ValueError(
                f"unknown feature space {unknown[0]!r}; choose from {sorted(FEATURE_SPACES)}"
            )
        return spaces


def pipeline_config_class(spec: DatasetSpec) -> type[BaseModel]:
    """The pydantic model of the `pipeline.*` settings of ``spec``'s pipeline."""
    return get_pipeline(spec.pipeline).config_cls


def default_settings(spec: DatasetSpec) -> dict[str, Any]:
    """The entry's settings with every pipeline/simulator default filled in."""
    settings = dict(spec.settings)
    pipeline = validate(
        pipeline_config_class(spec), settings.get("pipeline", {}), f"catalog entry {spec.name}"
    ).model_dump(mode="json")
    resolved: dict[str, Any] = {
        "features": list(settings.get("features", [])),
        "pipeline": pipeline,
    }
    if spec.source == "synthetic":
        config_class, _ = catalog.simulator(spec)
        resolved["simulator"] = config_class(**settings.get("simulator", {})).model_dump(
            mode="json"
        )
    return resolved


def resolve_settings(
    spec: DatasetSpec,
    overrides: list[str],
    seed: int | None = None,
    subjects: list[str] | None = None,
    sessions: list[str] | None = None,
) -> dict[str, Any]:
    """Defaults + entry + `--set` overrides (+ `--seed` for simulators), validated.

    ``subjects``/``sessions`` (labels without ``sub-``/``ses-``) become the pipeline's
    ``subjects``/``sessions`` settings, so they enter the config hash like any other setting.
    """
    settings = apply_overrides(default_settings(spec), overrides)
    if seed is not None and settings.get("simulator") is not None:
        settings["simulator"]["seed"] = seed
    for key, labels in (("subjects", subjects), ("sessions", sessions)):
        if labels is not None:
            settings["pipeline"][key] = list(labels)
    validate(PrepareSettings, settings, f"dataset {spec.name}")
    settings["pipeline"] = validate(
        pipeline_config_class(spec), settings["pipeline"], f"dataset {spec.name} (pipeline.*)"
    ).model_dump(mode="json")
    if settings.get("simulator") is not None:
        settings["simulator"] = validate(
            catalog.simulator(spec)[0], settings["simulator"], f"dataset {spec.name} (simulator.*)"
        ).model_dump(mode="json")
    return settings
