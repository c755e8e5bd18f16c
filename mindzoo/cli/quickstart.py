"""`braindecode-cli quickstart`: synthetic fMRI -> store -> ridge -> evaluation report, offline."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.console import Console

from mindzoo.cli.evaluate import metrics_table
from mindzoo.cli.prepare import run_prepare
from mindzoo.evaluation.run import evaluate_run
from mindzoo.training.run import train_model

console = Console()


def run_quickstart(out: Path, seed: int | None, sets: list[str]) -> dict:
    """Run the three steps; write `out/metrics.json` with timings and the evaluation means."""
    timings = {}
    start = time.perf_counter()
    console.rule("1/3 prepare synthetic-fmri")
    run_prepare("synthetic-fmri", out / "store", None, seed, sets)
    timings["prepare_seconds"] = time.perf_counter() - start
    console.rule("2/3 train ridge")
    step = time.perf_counter()
    run_dir = train_model("ridge", out / "store", out / "runs" / "ridge", overwrite=True)
    timings["train_seconds"] = time.perf_counter() - step
    console.rule("3/3 evaluate")
    step = time.perf_counter()
    metrics = evaluate_run(run_dir)
    timings["evaluate_seconds"] = time.perf_counter() - step
    timings["total_seconds"] = time.perf_counter() - start
    console.print(metrics_table(metrics))
    summary = {
        "dataset": metrics["dataset"],
        "model": metrics["model"],
        **{k: round(v, 2) for k, v in timings.items()},
        "subjects": metrics["subjects"],
        "mean": metrics["mean"],
        "report": str(run_dir / "eval" / "report.md"),
    }
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    console.print(f"done in {timings['total_seconds']:.0f} s; report: {summary['report']}")
    return summary


def register(app: typer.Typer) -> None:
    @app.command()
    def quickstart(
        out: Path = typer.Option(Path("mindzoo-quickstart"), help="Working directory."),
        seed: int | None = typer.Option(None, help="Seed of the simulator."),
        sets: list[str] = typer.Option([], "--set", help="Override a dataset setting: KEY=VALUE."),
    ) -> None:
        """Prepare the embedded synthetic fMRI dataset, train ridge, evaluate, write a report."""
        run_quickstart(out, seed, sets)
