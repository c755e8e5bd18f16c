"""`braindecode-cli evaluate RUN_DIR`: metrics.json + report.md with figures."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from mindzoo.evaluation.classification import EPHYS_KINDS, ephys_table
from mindzoo.evaluation.run import evaluate_run

console = Console()


def metrics_table(metrics: dict) -> Table:
    """Subjects x main metrics as a rich table (the feature space goes in the title)."""
    if metrics.get("kind") in EPHYS_KINDS:
        return ephys_table(metrics)
    first = next(iter(metrics["subjects"].values()))
    keys = [k for k in first if "." in k and not k.startswith("chance")]
    keys.append("noise_ceiling_median")
    short = {"two_way_id": "2-way id", "retrieval_top1": "top-1", "feature_corr": "feature r"}
    spaces = sorted({k.split(".", 1)[1] for k in keys if "." in k})
    table = Table(title=f"{metrics['model']} on {metrics['dataset']} ({', '.join(spaces)})")
    table.add_column("subject")
    for key in keys:
        name = key.split(".", 1)[0]
        table.add_column(
            short.get(name, "NC median" if key == "noise_ceiling_median" else key), justify="right"
        )
    for name, row in [*metrics["subjects"].items(), ("mean", metrics["mean"])]:
        table.add_row(name, *(f"{row[k]:.3f}" for k in keys))
    return table


def register(app: typer.Typer) -> None:
    @app.command()
    def evaluate(
        run_dir: Path = typer.Argument(..., help="Run directory written by `train`."),
        out: Path | None = typer.Option(None, help="Output directory (default RUN_DIR/eval)."),
    ) -> None:
        """Score a run on the test split; writes metrics.json, report.md and PNG figures."""
        metrics = evaluate_run(run_dir, out)
        console.print(metrics_table(metrics))
        console.print(f"report: {(out or run_dir / 'eval') / 'report.md'}")
