"""`braindecode-cli evaluate RUN_DIR`: metrics.json + report.md with figures."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from mindzoo.cli import cluster
from mindzoo.cli.console import make_console
from mindzoo.datasets import remote
from mindzoo.datasets.paths import check_output
from mindzoo.errors import UserInputError
from mindzoo.executors import ExecutorSettings
from mindzoo.runconfig import read_run_config

console = make_console()


def metrics_table(metrics: dict) -> Table:
    """Subjects x main metrics as a rich table (the feature space goes in the title)."""
    from mindzoo.evaluation.classification import EPHYS_KINDS, ephys_table

    if metrics.get("kind") in EPHYS_KINDS:
        return ephys_table(metrics)
    if metrics.get("kind") == "spikes":
        from mindzoo.evaluation.spike_run import spike_table

        return spike_table(metrics)
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


def _same(a: Path, b: Path) -> bool:
    """Whether two paths name one directory."""
    return a.expanduser().resolve() == b.expanduser().resolve()


def run_grid_command(
    grid: Path, out: Path | None, settings: ExecutorSettings, dry_run: bool
) -> None:
    """`evaluate --grid`: run (or with ``dry_run`` list and estimate) a grid; print a summary.
    Exits 1 when a cell failed after its retries (each is listed with its log)."""
    from mindzoo.grid.run import dry_run as plan_only
    from mindzoo.grid.run import run_grid

    if dry_run:
        listing = plan_only(grid, out, settings)
        table = Table(title=f"grid {listing['plan'].spec.name}: {listing['plan'].out}")
        for column in ("job", "status"):
            table.add_column(column)
        for row in [*listing["trains"], *listing["cells"]]:
            table.add_row(row["name"], row["status"])
        console.print(table)
        est = listing["estimate"]
        if est["todo"] == 0:
            console.print(f"all {est['cells']} cells finished")
        elif est["job_seconds"] is None:
            console.print(f"{est['todo']} cells to run; no finished cell to estimate from yet")
        else:
            console.print(
                f"{est['todo']} of {est['cells']} cells to run: about {est['job_seconds']:.0f} s "
                f"of job time, {est['wall_seconds']:.0f} s wall at {settings.workers} in "
                f"parallel, peak memory about {est['peak_rss_mb']:.0f} MiB per job (from "
                f"{est['from_cells']} finished cells)"
            )
        return
    summary = run_grid(grid, out, settings)
    console.print(
        f"grid {summary.plan.spec.name}: {summary.ran} cells run, {summary.skipped} already "
        f"finished, {len(summary.failures)} failed; results: {summary.outputs['md']}"
    )
    for failure in summary.failures:
        console.print(
            f"  failed {failure['name']}: {failure['error']} (log: {failure['log']})",
            soft_wrap=True,
        )
    if summary.failures:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    @app.command()
    def evaluate(
        run_dir: str | None = typer.Argument(
            None, help="Run directory written by `train`, or its URL (s3://bucket/runs/x)."
        ),
        out: Path | None = typer.Option(
            None, help="Output directory (default RUN_DIR/eval; with --grid grids/NAME)."
        ),
        grid: Path | None = typer.Option(
            None,
            help="A grid file (configs/experiments/*.yaml): runs x stores x subjects x "
            "backends, one job per cell, gathered into results.csv/.parquet/.md.",
        ),
        dry_run: bool = typer.Option(
            False, help="With --grid: list the cells and estimate the rest; run nothing."
        ),
        store: str | None = typer.Option(
            None,
            help="The store the run was trained on, where it is now (default: the path the run "
            "recorded); its config hash must match the run's.",
        ),
        executor: str = cluster.EXECUTOR,
        jobs: int = cluster.JOBS,
        cpus: int | None = cluster.CPUS,
        gpus: int = cluster.GPUS,
        mem: float | None = cluster.MEM,
        time: int = cluster.TIME,
        partition: str | None = cluster.PARTITION,
        max_parallel: int | None = cluster.MAX_PARALLEL,
        slurm_set: list[str] = cluster.SLURM_SET,
        retries: int = cluster.RETRIES,
    ) -> None:
        """Score a run on the test split (metrics.json, report.md, figures), or a whole grid."""
        if out is not None:
            check_output(out, store_ok=False)
        settings = cluster.executor_settings(  # checked with or without --grid
            executor, jobs, cpus, gpus, mem, time, partition, max_parallel, slurm_set, retries
        )
        if grid is not None:
            if run_dir is not None:
                raise UserInputError("Give either RUN_DIR or --grid, not both")
            if store is not None:
                raise UserInputError("--store goes with RUN_DIR; a grid file names its stores")
            run_grid_command(grid, out, settings, dry_run)
            return
        if run_dir is None:
            raise UserInputError(
                "Missing RUN_DIR: the --out of `braindecode-cli train` (or --grid)"
            )
        if out is not None and not remote.is_url(run_dir) and _same(out, Path(run_dir)):
            raise UserInputError(
                f"--out {out} is the run directory itself (its metrics.json would be "
                f"overwritten); leave --out out to write {Path(run_dir) / 'eval'}"
            )
        local = remote.fetch_run(run_dir) if remote.is_url(run_dir) else Path(run_dir)
        from mindzoo.evaluation.run import evaluate_run, run_store  # torch: not for --help

        run_store(read_run_config(local), local, store)  # refused before anything is written
        metrics = evaluate_run(local, out, store=store)
        report = (out or local / "eval") / "report.md"
        if remote.is_url(run_dir) and out is None:  # the report goes back beside the run
            report = remote.upload_dir(local / "eval", f"{run_dir.rstrip('/')}/eval") / "report.md"
        console.print(metrics_table(metrics))
        console.print(f"report: {report}")
