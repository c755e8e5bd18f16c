"""The grid and a parallel prepare through real Slurm (submitit job arrays on the test cluster):
a grid of 4 cells with one job scancelled mid-way, re-run to finish only what is missing, equal
to the local executor's table; a Slurm prepare writes the serial prepare's bytes."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from factories.cli import TINY, cli, sets
from factories.slurm import SlurmCluster

from mindzoo.datasets.store import TensorStore
from mindzoo.executors import ExecutorSettings
from mindzoo.grid.run import GridSummary, run_grid

pytestmark = pytest.mark.slurm

METRICS = ["two_way_id.efficientnet-lite0", "retrieval_top1.efficientnet-lite0"]


def _grid(path: Path, store: Path) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "name": "slurm-tiny",
                "stores": {"tiny": str(store)},
                "runs": {
                    "ridge-a": {"train": {"model": "ridge", "sets": ["model.alphas=[1.0]"]}},
                    "ridge-b": {"train": {"model": "ridge", "sets": ["model.alphas=[1000.0]"]}},
                },
            }
        )
    )
    return path


def _array_tasks(cluster: SlurmCluster) -> list[tuple[str, str]]:
    """(job id, state) of every task of the grid's cell arrays, one line per task."""
    out = cluster.run("squeue", "-h", "-r", "-n", "grid", "-o", "%i %T")
    return [tuple(line.split()) for line in out.splitlines() if line.strip()]


def test_grid_on_slurm_survives_a_scancel(
    slurm_cluster: SlurmCluster, shared_tiny_store: Path, tmp_path: Path
) -> None:
    grid = _grid(tmp_path / "grid.yaml", shared_tiny_store)
    out = tmp_path / "slurm"
    settings = ExecutorSettings(
        kind="slurm", partition=slurm_cluster.partition, max_parallel=1, time_min=10, mem_gb=2
    )
    result: dict[str, GridSummary] = {}
    driver = threading.Thread(
        target=lambda: result.setdefault("first", run_grid(grid, out, settings, progress=False)),
        daemon=True,  # a failing test must not leave pytest waiting for the driver
    )
    driver.start()
    cancelled = None
    deadline = time.monotonic() + 240
    while cancelled is None and time.monotonic() < deadline and driver.is_alive():
        pending = [job for job, state in _array_tasks(slurm_cluster) if state == "PENDING"]
        if len(pending) >= 2:  # cancel the last cell while the first ones run
            cancelled = pending[-1]
            slurm_cluster.run("scancel", cancelled)
        time.sleep(0.2)
    driver.join(timeout=300)
    assert cancelled is not None, "the cell array never had two pending tasks"
    first = result["first"]
    assert first.ran == 3 and first.skipped == 0
    assert len(first.failures) == 1 and "CANCELLED" in first.failures[0]["error"].upper()
    finished = {p.name for p in (out / "cells").iterdir()}
    assert len(finished) == 3

    second = run_grid(grid, out, settings, progress=False)
    assert (second.ran, second.skipped, second.failures) == (1, 3, [])
    assert len({p.name for p in (out / "cells").iterdir()} - finished) == 1
    on_slurm = pd.read_csv(out / "results.csv")
    assert len(on_slurm) == 4 and on_slurm["peak_rss_mb"].gt(50).all()

    local = run_grid(grid, tmp_path / "local", ExecutorSettings(jobs=2), progress=False)
    assert local.ran == 4
    here = pd.read_csv(tmp_path / "local" / "results.csv")
    columns = ["key", "run", "subject", *METRICS]
    pd.testing.assert_frame_equal(
        on_slurm[columns].sort_values("key").reset_index(drop=True),
        here[columns].sort_values("key").reset_index(drop=True),
    )
    assert on_slurm[METRICS[0]].between(0.5, 1.0).all()


def test_prepare_on_slurm_writes_the_serial_bytes(
    slurm_cluster: SlurmCluster, shared_tiny_store: Path, tmp_path: Path
) -> None:
    out = tmp_path / "store"
    args = ["prepare", "synthetic-fmri", "--out", str(out), "--seed", "3", *sets(TINY)]
    slurm = ["--executor", "slurm", "--partition", slurm_cluster.partition, "--mem", "2"]
    assert cli(*args, *slurm) == 0
    serial = TensorStore.open(shared_tiny_store).manifest
    parallel = TensorStore.open(out).manifest
    assert parallel["config_hash"] == serial["config_hash"]
    assert parallel["checksums"] == serial["checksums"]
    assert parallel["executor"] == "slurm"
    assert all(job["job_id"] for job in parallel["jobs"]) and len(parallel["jobs"]) == 4
