"""`braindecode-cli evaluate RUN_DIR`: metrics.json + report.md with figures."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from mindzoo.evaluation.run import evaluate_run

console = Console()


def metrics_table(metrics: dict) -> Table:
    """Subjects x main metrics as a rich table."""
    keys = [k for k in next(iter(metrics["subjects"].values())) if "." in k and "chance" not in k]
    keys.append("noise_ceiling_median")
    table = Table(title=f"{metrics['model']} on {metrics['dataset']}")
    table.add_column("subject")
    for key in keys:
        table.add_column(key.replace(".", "\n"), justify="right")
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
