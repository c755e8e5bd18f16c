"""The local executor: a forkserver pool, retries, logs, threads, each job's own peak memory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mindzoo.executors import ExecutorSettings, parse_slurm_set, run_jobs, slurm_parameters


def square_or_fail(x: int, marker: str) -> dict:
    """Fails on x == 3 until ``marker`` exists (the retry creates it)."""
    if x == 3 and not Path(marker).exists():
        Path(marker).touch()
        raise ValueError("three fails once")
    print(f"job {x} threads {os.environ['OMP_NUM_THREADS']}")
    return {
        "x": x * x,
        "pid": os.getpid(),
        "threads": os.environ["MINDZOO_JOB_THREADS"],
        "marker": os.environ.get("MINDZOO_TEST_MARKER"),
    }


def allocate(mib: int) -> int:
    """Touch ``mib`` MiB, then free them."""
    block = bytearray(mib * 2**20)
    return len(block) // 2**20


def test_each_job_reports_its_own_peak_memory(tmp_path: Path) -> None:
    outcomes = run_jobs(
        allocate, [(400,), (10,)], ["big", "small"], ExecutorSettings(jobs=1), tmp_path, False
    )
    big, small = outcomes
    assert (big.value, small.value) == (400, 10)
    assert big.peak_rss_mb > small.peak_rss_mb + 300  # the same worker, its peak reset per job


def test_local_jobs_run_in_worker_processes_and_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = str(tmp_path / "marker")
    items = [(x, marker) for x in range(1, 5)]
    names = [f"job-{x}" for x in range(1, 5)]
    settings = ExecutorSettings(jobs=2, cpus=1)
    first = run_jobs(square_or_fail, items, names, settings, tmp_path / "logs", progress=False)
    assert [o.ok for o in first] == [True, True, False, True]
    assert first[2].error == "ValueError: three fails once"
    assert "Traceback" in first[2].log.read_text()
    assert [o.value["x"] for o in first if o.ok] == [1, 4, 16]
    pids = {o.value["pid"] for o in first if o.ok}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    assert all(o.value["threads"] == "1" for o in first if o.ok)
    assert "job 2 threads 1" in (tmp_path / "logs" / "job-2.log").read_text()
    (tmp_path / "marker").unlink()
    monkeypatch.setenv("MINDZOO_TEST_MARKER", "set after the first pool")  # after the server
    retried = run_jobs(
        square_or_fail,
        items,
        names,
        ExecutorSettings(jobs=2, cpus=1, retries=1),
        tmp_path / "logs2",
        progress=False,
    )
    assert [o.value["x"] for o in retried] == [1, 4, 9, 16]
    assert [o.attempts for o in retried] == [1, 1, 2, 1]
    assert {o.value["marker"] for o in retried} == {"set after the first pool"}
    assert all(o.wall_s >= 0 and o.peak_rss_mb > 5 for o in retried)


def test_slurm_parameters_map_options_and_extras() -> None:
    settings = ExecutorSettings(
        kind="slurm",
        cpus=4,
        gpus=2,
        mem_gb=16,
        time_min=90,
        partition="gpu",
        max_parallel=3,
        slurm_set=parse_slurm_set(
            ["qos=high", "constraint=a100", "mail-type=END", "reservation=lab"]
        ),
    )
    params = slurm_parameters(settings, n_jobs=10, job_name="grid")
    assert params["cpus_per_task"] == 4
    assert params["gpus_per_node"] == 2
    assert params["mem_gb"] == 16
    assert params["timeout_min"] == 90
    assert params["slurm_partition"] == "gpu"
    assert params["slurm_array_parallelism"] == 3
    assert params["slurm_qos"] == "high"
    assert params["slurm_constraint"] == "a100"
    assert params["slurm_mail_type"] == "END"
    assert params["slurm_additional_parameters"] == {"reservation": "lab"}
    assert ExecutorSettings(kind="slurm").cpus_per_job == 1
    assert ExecutorSettings(jobs=2).cpus_per_job == max(1, (os.cpu_count() or 1) // 2)
