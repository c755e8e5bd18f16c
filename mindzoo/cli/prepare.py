"""`braindecode-cli prepare DATASET`: raw data -> tensor store version."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from mindzoo.datasets.store import TensorStore
from mindzoo.errors import UserInputError
from mindzoo.pipelines.prepare import prepare_dataset

console = Console()


_NOT_AXIS = ("n_trials", "n_test_trials", "n_times")


def summarise_store(store: TensorStore) -> dict:
    """Per-subject sizes of a store version, for metrics.json and the console: trials and the
    size of axis 1 under its name (``n_voxels`` for fMRI, ``n_channels`` for iEEG/EEG)."""
    sizes = {}
    for subject in store.subjects:
        shape = store.signals(subject).shape
        axis = store.root[f"subjects/{subject}"].attrs.get("axis", "voxels")
        sizes[subject] = {
            "n_trials": int(shape[0]),
            f"n_{axis}": int(shape[1]),
            "n_test_trials": int((store.trials(subject)["split"] == "test").sum()),
        }
        if len(shape) == 3:
            sizes[subject]["n_times"] = int(shape[2])
    return sizes


def parse_labels(text: str | None, prefix: str) -> list[str] | None:
    """``"01,sub-02"`` -> ``["01", "02"]`` (``prefix`` such as ``sub-`` dropped); ``None`` stays."""
    if text is None:
        return None
    labels = [label.strip().removeprefix(prefix) for label in text.split(",") if label.strip()]
    if not labels:
        raise UserInputError(f"Empty list {text!r}: give labels separated by commas, e.g. 01,02")
    return labels


def run_prepare(
    dataset: str,
    out: Path,
    source: str | Path | None,
    seed: int | None,
    sets: list[str],
    subjects: list[str] | None = None,
    sessions: list[str] | None = None,
) -> TensorStore:
    """Prepare, print what happened and write `out/metrics.json`; returns the opened store."""
    result = prepare_dataset(
        dataset,
        out,
        source=source,
        seed=seed,
        overrides=sets,
        subjects=subjects,
        sessions=sessions,
    )
    store = TensorStore.open(result.version_dir)
    what = "cache hit" if result.cache_hit else "prepared"
    console.print(
        f"{what}: {dataset} -> {result.version_dir} ({result.seconds:.1f} s, "
        f"config {result.config_hash[:12]})"
    )
    sizes = summarise_store(store)
    for subject, size in sizes.items():
        axis, count = next((k[2:], v) for k, v in size.items() if k not in _NOT_AXIS)
        times = f" x {size['n_times']} samples" if "n_times" in size else ""
        console.print(f"  {subject}: {size['n_trials']} trials x {count} {axis}{times}")
    metrics = {
        "dataset": dataset,
        "version": result.version_dir.name,
        "config_hash": result.config_hash,
        "cache_hit": result.cache_hit,
        "seconds": round(result.seconds, 3),
        "subjects": sizes,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return store


def register(app: typer.Typer) -> None:
    @app.command()
    def prepare(
        dataset: str = typer.Argument(..., help="Catalog name (see `braindecode-cli datasets`)."),
        source: str | None = typer.Option(
            None,
            help="Data location overriding the catalog's: a directory, a DataLad dataset, or a "
            "DataLad/RIA URL.",
        ),
        out: Path = typer.Option(Path("stores/default"), help="Store directory (`--store` later)."),
        subjects: str | None = typer.Option(
            None, help="Only these subjects, comma separated (01,02); the rest is not fetched."
        ),
        sessions: str | None = typer.Option(
            None,
            help="Only these sessions, comma separated (01,02; patterns such as perceptionTest*);"
            " the rest is not fetched.",
        ),
        seed: int | None = typer.Option(None, help="Seed of a synthetic dataset's simulator."),
        sets: list[str] = typer.Option([], "--set", help="Override a setting: KEY=VALUE."),
    ) -> None:
        """Prepare DATASET into a tensor store (cached: same settings, no rewrite)."""
        run_prepare(
            dataset,
            out,
            source,
            seed,
            sets,
            subjects=parse_labels(subjects, "sub-"),
            sessions=parse_labels(sessions, "ses-"),
        )
