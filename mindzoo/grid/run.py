"""Drive a grid: plan it, train what is not trained, score what is not scored, gather.

Output directory::

    OUT/grid.json        the checked grid and its plan (cells with their keys)
    OUT/runs/<run>-<store>-<key8>/   runs trained from the grid's train configs
    OUT/cells/<key>/     one finished cell: result.json (its row) and its eval/reconstruct output
    OUT/trains.json      each train task's wall time, peak memory, attempts and log
    OUT/logs/            one log per job (local) or submitit's logs (Slurm)
    OUT/results.csv, results.parquet, results.md, figures/*.png

A re-run with the same grid skips every finished train task and cell (found by key), so a
``scancel``, Ctrl-C or a node failure costs only the jobs that were running. A failed job is
retried ``--retries`` times, then reported with its log.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mindzoo.atomic import write_text
from mindzoo.executors import ExecutorSettings, run_jobs
from mindzoo.grid.jobs import read_result, score_cell, train_finished, train_task
from mindzoo.grid.results import cells_dir, estimate, gather, write_results
from mindzoo.grid.spec import GridPlan, load_grid, plan_grid


@dataclass
class GridSummary:
    """What a grid run did: cells run now / skipped (finished before) / failed, and outputs."""

    plan: GridPlan
    ran: int = 0
    skipped: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    outputs: dict[str, Path] = field(default_factory=dict)


def load_plan(grid_file: Path, out: Path | None) -> GridPlan:
    """Read ``grid_file`` and plan it under ``out`` (default ``grids/<name>``)."""
    spec = load_grid(grid_file)
    return plan_grid(spec, out if out is not None else Path("grids") / spec.name)


def _failure(kind: str, name: str, error: str | None, log: Path | None) -> dict[str, Any]:
    return {"kind": kind, "name": name, "error": error, "log": str(log) if log else None}


def run_grid(
    grid_file: Path,
    out: Path | None,
    executor: ExecutorSettings,
    progress: bool = True,
) -> GridSummary:
    """Run every unfinished train task and cell of ``grid_file`` with ``executor``; gather."""
    plan = load_plan(grid_file, out)
    plan.out.mkdir(parents=True, exist_ok=True)
    record = {
        "spec": plan.spec.model_dump(mode="json"),
        "trains": [asdict(t) for t in plan.trains],
        "cells": [c.as_dict() for c in plan.cells],
    }
    (plan.out / "grid.json").write_text(json.dumps(record, indent=2))
    summary = GridSummary(plan)
    logs = plan.out / "logs"

    trains = [t for t in plan.trains if not train_finished(Path(t.run_dir))]
    failed_trains: set[str] = set()
    if trains:
        outcomes = run_jobs(
            train_task,
            [(asdict(t),) for t in trains],
            [f"train-{t.run}-{t.store}" for t in trains],
            executor,
            logs,
            progress,
            "grid-train",
        )
        _record_trains(plan, trains, outcomes)
        for task, outcome in zip(trains, outcomes, strict=True):
            if not outcome.ok:
                failed_trains.add(task.key)
                summary.failures.append(_failure("train", outcome.name, outcome.error, outcome.log))

    todo, blocked = [], []
    for cell in plan.cells:
        if read_result(cells_dir(plan), cell.key) is not None:
            summary.skipped += 1
        elif cell.train_key in failed_trains:
            blocked.append(cell)
        else:
            todo.append(cell)
    for cell in blocked:
        summary.failures.append(
            _failure("cell", _cell_name(cell), "not run: its train task failed", None)
        )
    if todo:
        outcomes = run_jobs(
            score_cell,
            [(c.as_dict(), str(cells_dir(plan))) for c in todo],
            [_cell_name(c) for c in todo],
            executor,
            logs,
            progress,
            "grid",
        )
        for outcome in outcomes:
            if outcome.ok:
                summary.ran += 1
            else:
                summary.failures.append(_failure("cell", outcome.name, outcome.error, outcome.log))
    frame = gather(plan)
    summary.outputs = write_results(plan, frame, summary.failures)
    return summary


def _record_trains(plan: GridPlan, trains: list[Any], outcomes: list[Any]) -> None:
    """``OUT/trains.json``: each train task's wall time, peak memory, attempts, log and Slurm
    id (merged with the records of earlier runs of the grid)."""
    path = plan.out / "trains.json"
    records = json.loads(path.read_text()) if path.is_file() else {}
    for task, outcome in zip(trains, outcomes, strict=True):
        records[task.key] = {
            "name": outcome.name,
            "run_dir": task.run_dir,
            "ok": outcome.ok,
            "error": outcome.error,
            "wall_s": round(outcome.wall_s, 3),
            "peak_rss_mb": round(outcome.peak_rss_mb, 1),
            "attempts": outcome.attempts,
            "log": str(outcome.log) if outcome.log else None,
            "job_id": outcome.job_id,
        }
    write_text(path, json.dumps(records, indent=2))


def _cell_name(cell: Any) -> str:
    return f"{cell.run}-{cell.store}-{cell.subject}-{cell.backend}-{cell.key[:6]}"


def dry_run(grid_file: Path, out: Path | None, executor: ExecutorSettings) -> dict[str, Any]:
    """The plan (train tasks, cells with status) and the estimate, without running anything."""
    plan = load_plan(grid_file, out)
    cells = [
        {
            "name": _cell_name(c),
            "key": c.key,
            "status": "finished" if read_result(cells_dir(plan), c.key) else "todo",
        }
        for c in plan.cells
    ]
    trains = [
        {
            "name": f"train-{t.run}-{t.store}",
            "status": "finished" if train_finished(Path(t.run_dir)) else "todo",
        }
        for t in plan.trains
    ]
    return {
        "plan": plan,
        "cells": cells,
        "trains": trains,
        "estimate": estimate(plan, executor.workers),
    }
