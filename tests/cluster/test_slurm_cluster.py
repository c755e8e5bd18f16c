"""Jobs through submitit on the test cluster: one job, a job array, and a cancelled job."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import cloudpickle
import pytest
import submitit
from factories.slurm import SlurmCluster
from submitit.core.utils import UncompletedJobError

pytestmark = pytest.mark.slurm
# The jobs cannot import this test module (pytest put its folder on sys.path, not theirs):
# pickle its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def square_in_job(x: int, hold_s: float = 0) -> dict:
    """What a job reports: its Slurm job id, its array task id, x squared and when it ran."""
    start = time.time()
    time.sleep(hold_s)
    return {
        "job_id": os.environ["SLURM_JOB_ID"],
        "task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
        "value": x * x,
        "ran": (start, time.time()),
    }


def sleep_in_job(seconds: float) -> str:
    """A job that only sleeps, long enough to be cancelled while it runs."""
    time.sleep(seconds)
    return "not cancelled"


def executor(cluster: SlurmCluster, folder: Path) -> submitit.AutoExecutor:
    """A Slurm AutoExecutor for small one-CPU jobs on `cluster`'s partition."""
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
    ex.update_parameters(
        slurm_partition=cluster.partition, timeout_min=5, cpus_per_task=1, mem_gb=1
    )
    return ex


def test_submitit_job_returns_its_value(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """A submitted function runs under Slurm and its return value comes back."""
    start = time.monotonic()
    job = executor(slurm_cluster, tmp_path).submit(square_in_job, 7)
    result = job.result()
    elapsed = time.monotonic() - start
    print(f"trivial submitit job, submit -> result: {elapsed:.1f} s")
    assert result["job_id"] == job.job_id
    assert (result["task_id"], result["value"]) == (None, 49)
    assert elapsed < 60


def test_submitit_job_array(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """`map_array` of 4 items is one Slurm array whose 4 tasks return the right values."""
    jobs = executor(slurm_cluster, tmp_path).map_array(square_in_job, [1, 2, 3, 4], [1.0] * 4)
    results = [job.result() for job in jobs]
    assert [r["value"] for r in results] == [1, 4, 9, 16]
    array_id = jobs[0].job_id.split("_")[0]
    assert [job.job_id for job in jobs] == [f"{array_id}_{i}" for i in range(4)]
    assert sorted(r["task_id"] for r in results) == ["0", "1", "2", "3"]
    assert len({r["job_id"] for r in results}) == 4  # each task is its own job
    if slurm_cluster.cpus >= 2:  # one-CPU tasks share the node: some ran at the same time
        spans = sorted(r["ran"] for r in results)
        assert any(later[0] < earlier[1] for earlier, later in pairwise(spans)), spans
    # Once ended, the tasks show in sacct under their array ids, as submitit reads them (a
    # task's completion record follows its result by a moment).
    deadline = time.monotonic() + 30
    while True:
        states = {job.job_id: job.watcher.get_state(job.job_id, mode="force") for job in jobs}
        if set(states.values()) == {"COMPLETED"} or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert states == {job.job_id: "COMPLETED" for job in jobs}


def test_cancelled_job_is_reported_cancelled(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """A running job cancelled with scancel ends, and submitit says it was cancelled."""
    job = executor(slurm_cluster, tmp_path).submit(sleep_in_job, 60)
    deadline = time.monotonic() + 60
    while not _running(slurm_cluster, job.job_id):
        assert time.monotonic() < deadline, "job never started"
        time.sleep(0.5)
    subprocess.run(["scancel", job.job_id], check=True, env=slurm_cluster.env)
    deadline = time.monotonic() + 30
    while not job.done(force_check=True):
        assert time.monotonic() < deadline, f"still not done after scancel: {job.state}"
        time.sleep(0.5)
    assert job.state.startswith("CANCELLED")
    job._results_timeout_s = 1  # submitit's wait for a result pickle a slow filesystem may show
    with pytest.raises(UncompletedJobError, match="CANCELLED"):
        job.result()


def _running(cluster: SlurmCluster, job_id: str) -> bool:
    """Whether squeue shows job `job_id` running."""
    return cluster.run("squeue", "-h", "-j", job_id, "-o", "%T", check=False).strip() == "RUNNING"
