"""`braindecode-cli train MODEL --store STORE`: train a model into a run directory.

Torch decoders train on all chosen subjects at once and can be resumed (`--resume`); for data
parallelism launch the same command under `torchrun --nproc_per_node N -m mindzoo train ...`
(CPU, gloo) or `accelerate launch --multi_gpu -m mindzoo train ...` (GPUs).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import typer

from mindzoo.cli import cluster
from mindzoo.cli.console import make_console
from mindzoo.datasets.paths import check_output
from mindzoo.datasets.remote import is_url
from mindzoo.errors import UserInputError
from mindzoo.executors import ExecutorSettings

console = make_console()


def split_subjects(values: list[str]) -> list[str]:
    """`--subjects 01,02 --subjects sub-03` -> ["01", "02", "sub-03"]; spaces around a label
    (`"01, 02"`) are dropped."""
    return [s.strip() for v in values for s in v.split(",") if s.strip()]


def _submit(
    model: str,
    store: str,
    out: str,
    subjects: list[str],
    sets: list[str],
    resume: bool,
    settings: ExecutorSettings,
    wait: bool,
) -> None:
    """Submit the train command as a Slurm job; with ``wait``, wait and report (exit 1 on a
    failed job, with its log)."""
    from mindzoo.training.cluster import submit_training

    def absolute(location: str) -> str:
        return location if is_url(location) else str(Path(location).expanduser().resolve())

    argv = [model, "--store", absolute(store), "--out", absolute(out)]
    argv += [a for s in split_subjects(subjects) for a in ("--subjects", s)]
    argv += [a for item in sets for a in ("--set", item)]
    argv += ["--resume"] if resume else []
    log_dir = Path(absolute(out)).parent / "slurm-logs" if not is_url(out) else Path("slurm-logs")
    job = submit_training(argv, Path(absolute(out)), settings, log_dir)
    console.print(f"submitted {model}: Slurm job {job.job_id} -> {absolute(out)}", soft_wrap=True)
    console.print(f"log: {job.paths.stdout}", soft_wrap=True)
    if not wait:
        return
    try:
        job.result()
    except Exception as exc:
        console.print(f"job {job.job_id} failed: {str(exc).splitlines()[0] if str(exc) else exc}")
        console.print(f"log: {job.paths.stderr}", soft_wrap=True)
        raise typer.Exit(1) from None
    console.print(f"trained {model}: {absolute(out)} (next: braindecode-cli evaluate {out})")


def register(app: typer.Typer) -> None:
    @app.command()
    def train(
        model: str = typer.Argument(..., help="Model name (see `braindecode-cli models`)."),
        store: str = typer.Option(
            ..., help="Store directory written by `prepare`, or its URL (s3://bucket/store)."
        ),
        subjects: list[str] = typer.Option([], help="Subjects to fit (default: all)."),
        out: str | None = typer.Option(
            None, help="Run directory or URL (s3://bucket/runs/x; default runs/MODEL-TIME)."
        ),
        sets: list[str] = typer.Option([], "--set", help="Override a setting: KEY=VALUE."),
        resume: bool = typer.Option(
            False, help="Continue the run in --out from its last checkpoint (torch models)."
        ),
        executor: str = cluster.EXECUTOR,
        cpus: int | None = cluster.CPUS,
        gpus: int = cluster.GPUS,
        mem: float | None = cluster.MEM,
        time_limit: int = typer.Option(60, "--time", help="Slurm: time limit in minutes."),
        partition: str | None = cluster.PARTITION,
        slurm_set: list[str] = cluster.SLURM_SET,
        wait: bool = typer.Option(
            False, help="Slurm: wait for the job and report its result (default: submit, exit)."
        ),
    ) -> None:
        """Train MODEL on the store's training split; writes weights, predictions, metrics.json.

        With --executor slurm the same command runs as one Slurm job (accelerate across its
        --gpus), requeued with --resume when it is preempted or times out."""
        from mindzoo.models import get_model_info
        from mindzoo.training.run import train_model  # torch: not for --help

        if resume and out is None:
            raise UserInputError("--resume needs --out: the run directory to continue")
        diffusion = get_model_info(model).kind == "diffusion"  # defaults to the store's cache
        if out is None and not diffusion:
            out = Path("runs") / f"{model}-{time.strftime('%Y%m%d-%H%M%S')}"
        if out is not None and not is_url(str(out)):
            check_output(Path(out))
        settings = cluster.executor_settings(
            executor, 1, cpus, gpus, mem, time_limit, partition, None, slurm_set
        )
        if settings.kind == "slurm":
            if out is None:
                raise UserInputError("--executor slurm needs --out (the run directory)")
            _submit(model, store, str(out), subjects, sets, resume, settings, wait)
            return
        run_dir = train_model(model, store, out, split_subjects(subjects), sets, resume=resume)
        if os.environ.get("RANK", "0") == "0":  # one line, not one per data-parallel process
            follow = (
                f"braindecode-cli reconstruct RUN --store {store} --weights {run_dir} --out DIR"
                if diffusion
                else f"braindecode-cli evaluate {run_dir}"
            )
            console.print(f"trained {model}: {run_dir} (next: {follow})")
