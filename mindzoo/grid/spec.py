"""A grid file (YAML) and its plan: the train tasks and the cells, each keyed by its inputs.

A grid names stores, runs (an existing run directory, or a train config trained here once per
store it names), subjects, reconstruction backends and metric sets::

    name: synthetic-baselines
    stores:
      synthetic: stores/synthetic          # a store directory or URL (s3://bucket/store)
    runs:
      ridge: {train: {model: ridge, sets: [alpha=1000]}}   # trained on every store listed
      mlp: {path: runs/mindeye-mlp}        # an existing run (scored on its own store)
    subjects: all                          # or [sub-01, sub-02]
    backends: [none, embedded]             # none: no images, only the feature metrics
    metrics: [features, images]            # features: identification/retrieval/correlation
                                           # (classification for ephys runs); images:
                                           # reconstruction metrics (backends other than none)
    reconstruct: {steps: 10, guidance: 1.0, batch_size: 8}

Relative paths are read from the directory the command runs in. A cell is one (run, store,
subject, backend); its key is a hash of the run's identity (a train config's settings and its
store version, or an existing run's file hashes), the store version, the subject, the backend,
the metric sets and the generation settings, so a finished cell is found again by its inputs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mindzoo.config import config_hash, validate
from mindzoo.datasets.remote import is_url
from mindzoo.datasets.store import TensorStore
from mindzoo.errors import UserInputError
from mindzoo.reconstruction.base import GenerationSettings

GRID_VERSION = 1  # bumped when what a cell computes changes: old cells are then not reused
METRIC_SETS = ("features", "images")


class TrainSpec(BaseModel):
    """A train config: ``train MODEL --store S --set ...`` for each store ``S`` of ``stores``."""

    model_config = ConfigDict(extra="forbid")

    model: str
    stores: list[str] | None = None  # names in the grid's stores; default: all of them
    sets: list[str] = Field(default_factory=list)
    subjects: list[str] = Field(default_factory=list)


class RunEntry(BaseModel):
    """One run of a grid: an existing run directory (``path``) or a train config (``train``)."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = None
    train: TrainSpec | None = None

    @model_validator(mode="after")
    def _one_of(self) -> RunEntry:
        if (self.path is None) == (self.train is None):
            raise ValueError("give exactly one of path (a run directory) or train (a config)")
        return self


class ReconstructSpec(BaseModel):
    """Generation settings of the image cells and the backends' weights (optional)."""

    model_config = ConfigDict(extra="forbid")

    steps: int = GenerationSettings.steps
    guidance: float = GenerationSettings.guidance
    seed: int = GenerationSettings.seed
    strength: float = GenerationSettings.strength
    batch_size: int = GenerationSettings.batch_size
    weights: dict[str, str] = Field(default_factory=dict)  # backend -> weights directory


class GridSpec(BaseModel):
    """A whole grid file (the module docstring shows one)."""

    model_config = ConfigDict(extra="forbid")

    name: str = "grid"
    stores: dict[str, str] = Field(default_factory=dict)
    runs: dict[str, RunEntry]
    subjects: list[str] | Literal["all"] = "all"
    backends: list[str] = Field(default_factory=lambda: ["none"])
    metrics: list[Literal["features", "images"]] = Field(default_factory=lambda: ["features"])
    reconstruct: ReconstructSpec = Field(default_factory=ReconstructSpec)


@dataclass(frozen=True)
class TrainTask:
    """One train config on one store, trained into ``run_dir`` (a job of the train stage)."""

    key: str
    run: str
    model: str
    store: str  # store name in the grid
    store_path: str
    sets: list[str]
    subjects: list[str]
    run_dir: str


@dataclass(frozen=True)
class Cell:
    """One (run, store, subject, backend) of a grid, scored by one job."""

    key: str
    run: str
    model: str
    store: str
    store_path: str
    subject: str
    backend: str
    metrics: list[str]
    run_dir: str
    reconstruct: dict[str, Any] = field(default_factory=dict)
    train_key: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GridPlan:
    """What a grid runs: its train tasks, then its cells."""

    spec: GridSpec
    out: Path
    trains: list[TrainTask]
    cells: list[Cell]


def load_grid(path: Path) -> GridSpec:
    """Read and check a grid file (one-line errors name the file and the setting)."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"Grid file {path} does not exist; see configs/experiments/")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserInputError(f"{path} is not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(data, dict):
        raise UserInputError(f"{path} must hold a mapping with at least `runs:`")
    spec = validate(GridSpec, data, f"grid {path}")
    if not spec.runs:
        raise UserInputError(f"grid {path}: runs is empty; name at least one run")
    if "images" in spec.metrics and spec.backends == ["none"]:
        raise UserInputError(
            f"grid {path}: metrics lists images but backends is [none]; add a backend "
            "(e.g. embedded) or drop images"
        )
    return spec


def check_train(run: str, train: TrainSpec) -> None:
    """Resolve a train config's settings as `train` would (bad ``sets``: one line, now, before
    any job starts). Diffusion models are trained per store, not as grid runs."""
    from mindzoo.config import resolve_preset
    from mindzoo.models import get_model_info
    from mindzoo.training.decoders import TrainSettings, resolve_train_settings
    from mindzoo.training.ephys import resolve_ephys_settings

    info = get_model_info(train.model)
    try:
        if info.kind == "estimator":
            resolve_preset(train.model, train.sets, {"model": info.config_cls}, TrainSettings)
        elif info.kind == "decoder":
            resolve_train_settings(train.model, train.sets)
        elif info.kind == "ephys":
            resolve_ephys_settings(train.model, train.sets)
        else:
            raise UserInputError(
                f"{train.model} is a {info.kind} model, not a decoder to score; train it with "
                "`braindecode-cli train` and name its weights under reconstruct.weights"
            )
    except UserInputError as exc:
        raise UserInputError(f"grid run {run}: {exc}") from exc


def _location(text: str) -> str:
    return text if is_url(text) else str(Path(text).expanduser().resolve())


def _file_hash(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _existing_run(name: str, path: str) -> tuple[dict[str, Any], str]:
    """An existing run's config.json and its identity (hash of config and predictions)."""
    run_dir = Path(path).expanduser().resolve()
    config_path = run_dir / "config.json"
    predictions = run_dir / "predictions.safetensors"
    if not config_path.is_file():
        raise UserInputError(
            f"grid run {name}: {config_path} is missing; give the --out of `braindecode-cli train`"
        )
    config = json.loads(config_path.read_text())
    files = [config_path, *([predictions] if predictions.is_file() else [])]
    return config, _file_hash(*files)


def _subjects_of(spec: GridSpec, available: list[str], run: str) -> list[str]:
    if spec.subjects == "all":
        return list(available)
    chosen = [s if s.startswith("sub-") else f"sub-{s}" for s in spec.subjects]
    missing = [s for s in chosen if s not in available]
    if missing:
        raise UserInputError(
            f"grid run {run} has no subject {missing[0]} (it has {', '.join(available)}); fix "
            "subjects"
        )
    return chosen


def plan_grid(spec: GridSpec, out: Path) -> GridPlan:
    """The train tasks and cells of ``spec`` with output under ``out`` (reads stores' manifests)."""
    out = Path(out).resolve()
    stores = {name: _location(location) for name, location in spec.stores.items()}
    opened: dict[str, TensorStore] = {}

    def store(name: str) -> TensorStore:
        if name not in opened:
            opened[name] = TensorStore.open(stores[name])
        return opened[name]

    generation = spec.reconstruct.model_dump()
    trains: list[TrainTask] = []
    cells: list[Cell] = []
    for run, entry in spec.runs.items():
        targets: list[tuple[str, str, str, list[str], str, str | None]] = []
        if entry.train is not None:
            check_train(run, entry.train)
            names = entry.train.stores or list(stores)
            unknown = [n for n in names if n not in stores]
            if not names or unknown:
                raise UserInputError(
                    f"grid run {run}: store {unknown[0] if unknown else '(none)'} is not in the "
                    f"grid's stores ({', '.join(stores) or 'none'}); add it under stores:"
                )
            for name in names:
                version = store(name).manifest["config_hash"]
                key = config_hash(
                    {
                        "grid": GRID_VERSION,
                        **entry.train.model_dump(exclude={"stores"}),
                        "store": version,
                    }
                )[:16]
                run_dir = str(out / "runs" / f"{run}-{name}-{key[:8]}")
                trains.append(
                    TrainTask(
                        key,
                        run,
                        entry.train.model,
                        name,
                        stores[name],
                        list(entry.train.sets),
                        list(entry.train.subjects),
                        run_dir,
                    )
                )
                chosen = store(name).pick_subjects(entry.train.subjects)
                targets.append((name, stores[name], version, chosen, run_dir, key))
        else:
            config, identity = _existing_run(run, entry.path)
            location = str(config["store"])
            name = next((n for n, loc in stores.items() if loc == _location(location)), None)
            targets.append(
                (
                    name or Path(location).name,
                    location,
                    config.get("store_config_hash", ""),
                    list(config["subjects"]),
                    str(Path(entry.path).expanduser().resolve()),
                    None,
                )
            )
            model = config.get("model", run)
        for name, location, version, available, run_dir, train_key in targets:
            model = entry.train.model if entry.train is not None else model
            identity_key = train_key or identity
            for subject in _subjects_of(spec, available, run):
                for backend in spec.backends:
                    sets = [m for m in spec.metrics if (m == "images") == (backend != "none")]
                    if not sets:
                        continue
                    key = config_hash(
                        {
                            "grid": GRID_VERSION,
                            "run": identity_key,
                            "store": version,
                            "subject": subject,
                            "backend": backend,
                            "metrics": sets,
                            "reconstruct": generation if backend != "none" else None,
                        }
                    )[:16]
                    cells.append(
                        Cell(
                            key,
                            run,
                            model,
                            name,
                            location,
                            subject,
                            backend,
                            sets,
                            run_dir,
                            generation if backend != "none" else {},
                            train_key,
                        )
                    )
    if not cells:
        raise UserInputError("the grid has no cells; check runs, subjects, backends and metrics")
    return GridPlan(spec, out, trains, cells)
