"""The executor options every long command shares (`--executor local|slurm`, `--jobs`, ...).

Each command lists the same typer options (the module-level defaults below) and turns them into
one :class:`~mindzoo.executors.ExecutorSettings` with :func:`executor_settings`.
"""

from __future__ import annotations

import typer

from mindzoo.executors import ExecutorSettings, parse_slurm_set

EXECUTOR = typer.Option(
    "local",
    "--executor",
    help="Where jobs run: local (a process pool of --jobs workers) or slurm (submitit).",
)
JOBS = typer.Option(1, "--jobs", help="Local executor: parallel worker processes.")
CPUS = typer.Option(
    None,
    "--cpus",
    help="CPU cores and BLAS threads per job (default: this machine's cores / --jobs locally, "
    "1 on Slurm).",
)
GPUS = typer.Option(0, "--gpus", help="Slurm: GPUs per job (train: accelerate across them).")
MEM = typer.Option(None, "--mem", help="Slurm: memory per job in GB.")
TIME = typer.Option(60, "--time", help="Slurm: time limit per job in minutes.")
PARTITION = typer.Option(None, "--partition", help="Slurm partition.")
MAX_PARALLEL = typer.Option(
    None, "--max-parallel", help="Slurm: at most this many jobs of an array run at once."
)
SLURM_SET = typer.Option(
    [],
    "--slurm-set",
    help="Slurm: anything else submitit or sbatch takes, KEY=VALUE (qos=high, account=lab).",
)
RETRIES = typer.Option(0, "--retries", help="Re-run a failed job up to this many times.")


def executor_settings(
    executor: str,
    jobs: int,
    cpus: int | None,
    gpus: int,
    mem: float | None,
    time: int,
    partition: str | None,
    max_parallel: int | None,
    slurm_set: list[str],
    retries: int = 0,
) -> ExecutorSettings:
    """The options of one command as settings (bad values: one line, exit 2)."""
    return ExecutorSettings(
        kind=executor,  # type: ignore[arg-type]  # checked in ExecutorSettings
        jobs=jobs,
        cpus=cpus,
        gpus=gpus,
        mem_gb=mem,
        time_min=time,
        partition=partition,
        max_parallel=max_parallel,
        slurm_set=parse_slurm_set(slurm_set),
        retries=retries,
    )
