"""`train --executor slurm`: one Slurm job that runs the same `train` command, under
``accelerate launch`` across the job's GPUs when it has more than one.

The job is a submitit ``Checkpointable``: on preemption or time-out Slurm signals it, submitit
calls :meth:`TrainJob.checkpoint`, and the job is requeued with ``--resume``, so it continues
from the run's last checkpoint (torch models; ridge starts again). The training itself runs in a
child process that ignores SIGTERM (Slurm's first preemption signal), so it keeps writing
checkpoints until the requeue ends the job.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import submitit

from mindzoo.errors import UserInputError
from mindzoo.executors import ExecutorSettings, slurm_executor


def train_command(argv: list[str], gpus: int) -> list[str]:
    """The command a train job runs: ``python -m mindzoo train ARGV``, or with more than one GPU
    ``accelerate launch --multi_gpu --num_processes GPUS -m mindzoo train ARGV``."""
    if gpus > 1:
        return [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            str(gpus),
            "-m",
            "mindzoo",
            "train",
            *argv,
        ]
    return [sys.executable, "-m", "mindzoo", "train", *argv]


def _ignore_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class TrainJob(submitit.helpers.Checkpointable):
    """What the Slurm job runs (see the module docstring); returns the run directory."""

    def __call__(self, argv: list[str], gpus: int, run_dir: str) -> str:
        command = train_command(argv, gpus)
        print("running:", " ".join(command), flush=True)
        done = subprocess.run(command, preexec_fn=_ignore_sigterm, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"train exited with status {done.returncode}; see this job's log")
        return run_dir

    def checkpoint(self, argv: list[str], gpus: int, run_dir: str) -> Any:
        """Requeue with ``--resume`` (once) so the next start continues the last checkpoint."""
        resumed = argv if "--resume" in argv else [*argv, "--resume"]
        print("preempted or timed out: requeued with --resume", flush=True)
        return submitit.helpers.DelayedSubmission(TrainJob(), resumed, gpus, run_dir)


def submit_training(
    argv: list[str], run_dir: Path, settings: ExecutorSettings, log_dir: Path
) -> Any:
    """Submit ``train ARGV`` (which writes ``run_dir``) as one Slurm job; the submitit job."""
    if settings.kind != "slurm":
        raise UserInputError("submit_training runs on Slurm; use --executor slurm")
    executor = slurm_executor(settings, Path(log_dir), 1, "mindzoo-train")
    if settings.gpus:
        # one task per node holds all GPUs; accelerate starts one process per GPU inside it
        executor.update_parameters(tasks_per_node=1)
    return executor.submit(TrainJob(), list(argv), settings.gpus, str(run_dir))
