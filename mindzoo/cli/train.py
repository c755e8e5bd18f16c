"""`braindecode-cli train MODEL --store STORE`: fit a model per subject into a run directory."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console

from mindzoo.training.run import train_model

console = Console()


def split_subjects(values: list[str]) -> list[str]:
    """`--subjects 01,02 --subjects sub-03` -> ["01", "02", "sub-03"]."""
    return [s for v in values for s in v.split(",") if s]


def register(app: typer.Typer) -> None:
    @app.command()
    def train(
        model: str = typer.Argument(..., help="Model name (see `braindecode-cli models`)."),
        store: Path = typer.Option(..., help="Store directory written by `prepare`."),
        subjects: list[str] = typer.Option([], help="Subjects to fit (default: all)."),
        out: Path | None = typer.Option(None, help="Run directory (default runs/MODEL-TIME)."),
        sets: list[str] = typer.Option([], "--set", help="Override a setting: KEY=VALUE."),
    ) -> None:
        """Train MODEL on the store's training split; writes weights, predictions, metrics.json."""
        out = out or Path("runs") / f"{model}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = train_model(model, store, out, split_subjects(subjects), sets)
        console.print(f"trained {model}: {run_dir} (next: braindecode-cli evaluate {run_dir})")
