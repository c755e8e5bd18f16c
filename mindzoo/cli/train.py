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
from rich.console import Console

from mindzoo.errors import UserInputError
from mindzoo.models import get_model_info
from mindzoo.training.run import train_model

console = Console()


def split_subjects(values: list[str]) -> list[str]:
    """`--subjects 01,02 --subjects sub-03` -> ["01", "02", "sub-03"]."""
    return [s for v in values for s in v.split(",") if s]


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
    ) -> None:
        """Train MODEL on the store's training split; writes weights, predictions, metrics.json."""
        if resume and out is None:
            raise UserInputError("--resume needs --out: the run directory to continue")
        diffusion = get_model_info(model).kind == "diffusion"  # defaults to the store's cache
        if out is None and not diffusion:
            out = Path("runs") / f"{model}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = train_model(model, store, out, split_subjects(subjects), sets, resume=resume)
        if os.environ.get("RANK", "0") == "0":  # one line, not one per data-parallel process
            follow = (
                f"braindecode-cli reconstruct RUN --store {store} --weights {run_dir} --out DIR"
                if diffusion
                else f"braindecode-cli evaluate {run_dir}"
            )
            console.print(f"trained {model}: {run_dir} (next: {follow})")
