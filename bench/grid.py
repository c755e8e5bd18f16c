"""Cluster-run overheads, measured side by side: a grid's cells in-process, in the local pool
and on Slurm, and `prepare` serial against ``--jobs 2``.

1. Seconds per grid cell. One small grid (ridge with ``model.alphas=[1.0]`` and
   ``model.alphas=[1000.0]``, more penalties when the store has too few subjects for
   ``--cells`` cells; subjects all, backend none, metrics features) on one store. Its train
   tasks are trained once, in this process, and their run directories copied into each way's
   own fresh output directory, so every way times only the cell stage (nothing is skipped):
   (a) in-process: ``score_cell`` for each cell in a loop here; (b) ``run_grid`` with the
   local pool, ``jobs=1`` and ``jobs=2`` (a fresh spawned process per cell); (c) ``run_grid``
   on Slurm (submitit job arrays). Per way: the cell stage's wall seconds (``run_jobs``, timed
   inside ``run_grid``; ``run_grid`` as a whole, with planning and writing the results table
   and figures, is recorded too), seconds per cell, its difference to in-process, and the
   mean ``wall_s`` each cell measured inside its own job (results.csv): outer wall per cell
   minus inner wall per cell is the overhead (start-up, imports, scheduling, polling). With
   more than one worker the outer seconds per cell are divided by the parallelism, so the
   per-worker figure (seconds per cell x workers) is reported as well.
2. ``prepare bids-fmri`` wall time, serial against ``--jobs 2``, on the default synthetic-fmri
   (simulated once into ``WORK/synthetic-store/raw``): each run is a ``braindecode-cli``
   subprocess into a fresh store (start-up and imports included), ``--repeats`` times each,
   alternating; medians, their ratio, whether both stores hold the same bytes (manifest
   checksums) and the parallel store's per-job wall/peak memory (manifest ``jobs``).

The grid's store is the default synthetic-fmri store of step 2 (4 subjects: 2 runs x 4
subjects = 8 cells), or with ``--tiny`` a small one (the simulator settings ``TINY`` of
tests/factories/cli.py: 2 subjects, so 4 penalties).

Slurm: ``--partition P`` submits to the cluster of ``$SLURM_CONF``; ``--start-test-cluster``
starts the tests' single-node cluster (tests/factories/slurm.py; root, slurm-wlm and munge)
under ``WORK/slurm`` and stops it at the end. Without either the Slurm row is skipped.

    python bench/grid.py [--start-test-cluster | --partition P] [--work DIR] [--cells 8]
                         [--repeats 1] [--tiny] [--skip-prepare] [--skip-grid]
                         [--out bench/results/grid.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ALPHAS = [1.0, 1000.0, 10.0, 100.0, 0.1, 10000.0, 0.01, 100000.0]
NOTE = (
    "Wall-clock times on a shared machine: another process (e.g. the test suite) may have run "
    "at the same time, so every number is noisy; compare ways within this one run."
)
_START = time.perf_counter()


def say(message: str) -> None:
    """A progress line with the seconds since start."""
    print(f"[{time.perf_counter() - _START:7.1f} s] {message}", flush=True)


def machine() -> dict[str, Any]:
    import torch

    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def fresh(path: Path) -> Path:
    """``path`` as an empty directory (what was there removed)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def cli_command() -> list[str]:
    exe = shutil.which("braindecode-cli")
    return [exe] if exe else [sys.executable, "-m", "mindzoo"]


# --------------------------------------------------------------------------------- stores
def prepare_store(out: Path, sets: list[str]) -> tuple[Path, float, bool]:
    """``prepare synthetic-fmri`` into ``out`` in-process; (store dir, seconds, cache hit)."""
    from mindzoo.pipelines.prepare import prepare_dataset

    start = time.perf_counter()
    result = prepare_dataset("synthetic-fmri", out, overrides=sets, progress=False)
    return out, time.perf_counter() - start, result.cache_hit


def tiny_sets() -> list[str]:
    sys.path.insert(0, str(ROOT / "tests"))
    from factories.cli import TINY

    return list(TINY)


# -------------------------------------------------------------------------------- prepare
def timed_prepare(raw: Path, out: Path, jobs: int | None) -> float:
    """Seconds of one ``braindecode-cli prepare bids-fmri`` subprocess into a fresh ``out``."""
    if out.exists():
        shutil.rmtree(out)
    cmd = [*cli_command(), "prepare", "bids-fmri", "--source", str(raw), "--out", str(out)]
    if jobs is not None:
        cmd += ["--jobs", str(jobs)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return seconds


def bench_prepare(raw: Path, work: Path, repeats: int) -> dict[str, Any]:
    from mindzoo.datasets.store import TensorStore

    base = fresh(work / "prepare")
    serial, parallel = [], []
    for i in range(repeats):
        say(f"prepare bids-fmri serial, repeat {i + 1}/{repeats}")
        serial.append(timed_prepare(raw, base / f"serial-{i}", None))
        say(f"  serial: {serial[-1]:.1f} s; now --jobs 2")
        parallel.append(timed_prepare(raw, base / f"jobs2-{i}", 2))
        say(f"  --jobs 2: {parallel[-1]:.1f} s")
    a = TensorStore.open(base / "serial-0").manifest
    b = TensorStore.open(base / "jobs2-0").manifest
    same = a["checksums"] == b["checksums"]
    median_serial, median_parallel = statistics.median(serial), statistics.median(parallel)
    say(
        f"prepare: serial {median_serial:.1f} s, --jobs 2 {median_parallel:.1f} s "
        f"(x{median_serial / median_parallel:.2f}), same bytes: {same}"
    )
    bold = sorted(raw.rglob("*_bold.nii*"))
    return {
        "how": "subprocess `braindecode-cli prepare bids-fmri --source RAW --out FRESH "
        "[--jobs 2]`, interpreter start-up and imports included; repeats alternate",
        "source": str(raw),
        "n_subjects": len(a["subjects"]),
        "n_bold_runs": len(bold),
        "bold_megabytes": round(sum(p.stat().st_size for p in bold) / 1e6, 1),
        "serial_median_s": round(median_serial, 2),
        "jobs2_median_s": round(median_parallel, 2),
        "ratio_serial_over_jobs2": round(median_serial / median_parallel, 3),
        "same_bytes": same,
        "serial_s": [round(x, 2) for x in serial],
        "jobs2_s": [round(x, 2) for x in parallel],
        "jobs2_executor": b.get("executor"),
        "jobs2_jobs": b.get("jobs", []),
    }


# ----------------------------------------------------------------------------------- grid
def write_grid(path: Path, store: Path, n_subjects: int, cells: int) -> tuple[Path, list[float]]:
    """A grid of ridge runs (one per penalty) on ``store``, at least ``cells`` cells."""
    import yaml

    n_runs = max(2, math.ceil(cells / n_subjects))
    if n_runs > len(ALPHAS):
        raise SystemExit(f"--cells {cells}: at most {len(ALPHAS) * n_subjects} with this store")
    alphas = ALPHAS[:n_runs]
    runs = {
        f"ridge-{i}": {"train": {"model": "ridge", "sets": [f"model.alphas=[{alpha}]"]}}
        for i, alpha in enumerate(alphas)
    }
    spec = {
        "name": "bench-grid",
        "stores": {"synthetic": str(store)},
        "runs": runs,
        "subjects": "all",
        "backends": ["none"],
        "metrics": ["features"],
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path, alphas


class StageTimer:
    """Wraps ``mindzoo.grid.run.run_jobs`` to time each stage ``run_grid`` runs (by job name)."""

    def __init__(self) -> None:
        import mindzoo.grid.run as grid_run

        self.module, self.original = grid_run, grid_run.run_jobs
        self.stages: dict[str, dict[str, Any]] = {}

    def __enter__(self) -> StageTimer:
        def timed(fn, items, names, settings, log_dir, progress=True, job_name="mindzoo"):
            start = time.perf_counter()
            outcomes = self.original(fn, items, names, settings, log_dir, progress, job_name)
            self.stages[job_name] = {"seconds": time.perf_counter() - start, "outcomes": outcomes}
            return outcomes

        self.module.run_jobs = timed
        return self

    def __exit__(self, *exc: object) -> None:
        self.module.run_jobs = self.original


def inner_walls(out: Path) -> list[float]:
    import pandas as pd

    return [float(x) for x in pd.read_csv(out / "results.csv")["wall_s"]]


def way_row(
    name: str,
    stage_s: float,
    n_cells: int,
    workers: int,
    cpus: int,
    inner: list[float],
    extra: dict[str, Any],
) -> dict[str, Any]:
    per_cell = stage_s / n_cells
    inner_mean = statistics.fmean(inner) if inner else float("nan")
    return {
        "way": name,
        "workers": workers,
        "cpus_per_job": cpus,
        "cells": n_cells,
        "cells_scored": len(inner),
        "cell_stage_s": round(stage_s, 3),
        "s_per_cell": round(per_cell, 3),
        "inner_wall_mean_s": round(inner_mean, 3),
        "overhead_per_cell_s": round(per_cell - inner_mean, 3),
        "worker_s_per_cell": round(per_cell * workers, 3),
        "overhead_per_cell_per_worker_s": round(per_cell * workers - inner_mean, 3),
        **extra,
    }


def bench_grid(
    store: Path,
    work: Path,
    cells: int,
    slurm: dict[str, Any] | None,
    slurm_skip: str | None,
) -> dict[str, Any]:
    from mindzoo.datasets.store import TensorStore
    from mindzoo.executors import ExecutorSettings
    from mindzoo.grid.jobs import score_cell, train_task
    from mindzoo.grid.results import cells_dir
    from mindzoo.grid.run import load_plan, run_grid

    base = fresh(work / "grid")
    n_subjects = len(TensorStore.open(store).subjects)
    grid_file, alphas = write_grid(base / "grid.yaml", store, n_subjects, cells)

    trained = base / "trained"
    plan = load_plan(grid_file, trained)
    n_cells = len(plan.cells)
    say(f"grid: {len(plan.trains)} ridge runs x {n_subjects} subjects = {n_cells} cells")
    start = time.perf_counter()
    for task in plan.trains:
        train_task(asdict(task))
    train_s = time.perf_counter() - start
    say(f"  trained {len(plan.trains)} runs in-process in {train_s:.1f} s")

    def outdir(name: str) -> Path:
        out = base / name
        shutil.copytree(trained / "runs", out / "runs")
        return out

    rows: list[dict[str, Any]] = []

    # (a) in-process
    out = outdir("in-process")
    plan_a = load_plan(grid_file, out)
    walls, inner = [], []
    for cell in plan_a.cells:
        start = time.perf_counter()
        row = score_cell(cell.as_dict(), str(cells_dir(plan_a)))
        walls.append(time.perf_counter() - start)
        inner.append(float(row["wall_s"]))
    import torch

    rows.append(
        way_row(
            "in-process",
            sum(walls),
            n_cells,
            1,
            torch.get_num_threads(),
            inner,
            {"per_cell_s": [round(x, 3) for x in walls]},
        )
    )
    say(f"  in-process: {rows[-1]['s_per_cell']:.2f} s per cell")

    def executor_way(name: str, settings: Any) -> None:
        out = outdir(name)
        with StageTimer() as timer:
            start = time.perf_counter()
            summary = run_grid(grid_file, out, settings, progress=False)
            total = time.perf_counter() - start
        stage = timer.stages.get("grid", {"seconds": float("nan"), "outcomes": []})
        outcomes = stage["outcomes"]
        extra = {
            "run_grid_s": round(total, 3),
            "trained_in_run_grid": "grid-train" in timer.stages,
            "ran": summary.ran,
            "skipped": summary.skipped,
            "failures": summary.failures,
            "job_wall_mean_s": round(statistics.fmean(o.wall_s for o in outcomes), 3)
            if outcomes
            else None,
            "job_peak_rss_mb_max": round(max(o.peak_rss_mb for o in outcomes), 1)
            if outcomes
            else None,
        }
        rows.append(
            way_row(
                name,
                stage["seconds"],
                n_cells,
                settings.workers,
                settings.cpus_per_job,
                inner_walls(out),
                extra,
            )
        )
        say(
            f"  {name}: {rows[-1]['s_per_cell']:.2f} s per cell (stage {stage['seconds']:.1f} s, "
            f"run_grid {total:.1f} s, {summary.ran} ran, {len(summary.failures)} failed)"
        )
        if summary.failures:  # a way whose cells failed measured nothing: say so, loudly
            first = summary.failures[0]
            raise SystemExit(f"{name}: {len(summary.failures)} cells failed, e.g. {first}")

    executor_way("local-jobs1", ExecutorSettings(jobs=1))
    executor_way("local-jobs2", ExecutorSettings(jobs=2))
    if slurm is not None:
        executor_way("slurm", ExecutorSettings(kind="slurm", **slurm))
    baseline = rows[0]["s_per_cell"]
    for row in rows:
        row["s_per_cell_minus_in_process"] = round(row["s_per_cell"] - baseline, 3)
        row["worker_s_per_cell_minus_in_process"] = round(row["worker_s_per_cell"] - baseline, 3)
    return {
        "store": str(store),
        "n_subjects": n_subjects,
        "alphas": alphas,
        "n_cells": n_cells,
        "train_once_s": round(train_s, 2),
        "how": "train tasks trained once in-process, their runs/ copied into each way's fresh "
        "output dir; cell_stage_s: the in-process loop of score_cell, or the cell stage "
        "(run_jobs) inside run_grid; s_per_cell = cell_stage_s / cells; inner_wall_mean_s: "
        "mean wall_s each cell measured inside its job (results.csv); overhead_per_cell_s = "
        "s_per_cell - inner_wall_mean_s (with workers > 1 the outer time is shared, so see "
        "overhead_per_cell_per_worker_s = s_per_cell x workers - inner_wall_mean_s); a cell's "
        "inner wall in a fresh job process exceeds the in-process one (cold imports and caches, "
        "fewer threads with 2 workers), so s_per_cell_minus_in_process (and its per-worker "
        "form) is the whole cost of running a cell as a job",
        "slurm": slurm,
        "slurm_skipped": slurm_skip,
        "ways": rows,
    }


def run_grid_bench(args: argparse.Namespace, store: Path, work: Path) -> dict[str, Any]:
    """The grid bench, with the Slurm cluster the options ask for (started and stopped here)."""
    if not args.start_test_cluster and not args.partition:
        note = "no --partition and no --start-test-cluster: Slurm row skipped"
        return bench_grid(store, work, args.cells, None, note)
    slurm = {
        "time_min": 10,
        "mem_gb": args.mem_gb,
        "max_parallel": args.max_parallel or os.cpu_count() or 1,
    }
    if not args.start_test_cluster:
        slurm["partition"] = args.partition
        return bench_grid(store, work, args.cells, slurm, None)
    sys.path.insert(0, str(ROOT / "tests"))
    from factories.slurm import slurm_available, start_cluster

    reason = slurm_available()
    if reason:
        return bench_grid(store, work, args.cells, None, f"test cluster not started: {reason}")
    say("starting the test Slurm cluster")
    cluster = start_cluster(fresh(work / "slurm"))
    saved = {key: os.environ.get(key) for key in ("SLURM_CONF", "PATH")}
    try:
        os.environ.update({key: cluster.env[key] for key in saved})
        say(f"  cluster up: node {cluster.node}, {cluster.cpus} CPUs, {cluster.partition}")
        slurm["partition"] = args.partition or cluster.partition
        result = bench_grid(store, work, args.cells, slurm, None)
        result["slurm_cluster"] = {"kind": "test cluster", "cpus": cluster.cpus}
        return result
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        cluster.stop()
        say("test Slurm cluster stopped")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="work directory (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "grid.json")
    parser.add_argument("--cells", type=int, default=8, help="at least this many grid cells")
    parser.add_argument("--repeats", type=int, default=1, help="repeats of each prepare")
    parser.add_argument("--skip-prepare", action="store_true")
    parser.add_argument("--skip-grid", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="grid on a small (TINY) store")
    parser.add_argument("--partition", help="Slurm partition of the cluster in $SLURM_CONF")
    parser.add_argument("--start-test-cluster", action="store_true")
    parser.add_argument("--max-parallel", type=int, help="Slurm jobs at once (default: cores)")
    parser.add_argument("--mem-gb", type=float, default=2.0, help="memory per Slurm job")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="mindzoo-bench-grid-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "benchmark": "grid",
        "note": NOTE,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": machine(),
    }
    try:
        default_store = None
        if not args.skip_prepare or not args.tiny:
            say("prepare synthetic-fmri (default settings) into the work store")
            default_store, seconds, hit = prepare_store(work / "synthetic-store", [])
            result["synthetic_store"] = {
                "path": str(default_store),
                "seconds": round(seconds, 2),
                "cache_hit": hit,
            }
            say(f"  {'cache hit' if hit else 'prepared'} in {seconds:.1f} s")
        if not args.skip_prepare:
            raws = sorted((work / "synthetic-store" / "raw").glob("synthetic-fmri-*"))
            result["prepare"] = bench_prepare(raws[-1], work, args.repeats)
        if not args.skip_grid:
            if args.tiny:
                say("prepare a TINY synthetic-fmri store for the grid")
                store, seconds, _ = prepare_store(work / "tiny-store", tiny_sets())
                result["tiny_store_seconds"] = round(seconds, 2)
            else:
                store = default_store
            result["grid"] = run_grid_bench(args, store, work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    result["total_s"] = round(time.perf_counter() - _START, 1)
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    say(f"wrote {args.out}")


if __name__ == "__main__":
    main()
