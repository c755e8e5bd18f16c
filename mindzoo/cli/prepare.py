"""`braindecode-cli prepare DATASET`: raw data -> tensor store version."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from mindzoo.datasets.prepare import prepare_dataset
from mindzoo.datasets.store import TensorStore

console = Console()


def summarise_store(store: TensorStore) -> dict:
    """Per-subject sizes of a store version, for metrics.json and the console."""
    return {
        subject: {
            "n_trials": int(store.signals(subject).shape[0]),
            "n_voxels": int(store.signals(subject).shape[1]),
            "n_test_trials": int((store.trials(subject)["split"] == "test").sum()),
        }
        for subject in store.subjects
    }


def run_prepare(
    dataset: str, out: Path, source: Path | None, seed: int | None, sets: list[str]
) -> TensorStore:
    """Prepare, print what happened and write `out/metrics.json`; returns the opened store."""
    result = prepare_dataset(dataset, out, source=source, seed=seed, overrides=sets)
    store = TensorStore.open(result.version_dir)
    what = "cache hit" if result.cache_hit else "prepared"
    console.print(
        f"{what}: {dataset} -> {result.version_dir} ({result.seconds:.1f} s, "
        f"config {result.config_hash[:12]})"
    )
    sizes = summarise_store(store)
    for subject, size in sizes.items():
        console.print(f"  {subject}: {size['n_trials']} trials x {size['n_voxels']} voxels")
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
        source: Path | None = typer.Option(None, help="Data location overriding the catalog's."),
        out: Path = typer.Option(Path("stores/default"), help="Store directory (`--store` later)."),
        seed: int | None = typer.Option(None, help="Seed of a synthetic dataset's simulator."),
        sets: list[str] = typer.Option([], "--set", help="Override a setting: KEY=VALUE."),
    ) -> None:
        """Prepare DATASET into a tensor store (cached: same settings, no rewrite)."""
        run_prepare(dataset, out, source, seed, sets)
