"""`braindecode-cli adapt CHECKPOINT --store STORE --subject SUB (--n-trials N | --fraction F)`.

Adapts a pre-trained torch decoder to a subject it was not trained on, from the first N (or the
first fraction F) of that subject's training trials; see :mod:`mindzoo.training.adapt`.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from mindzoo.cli.console import make_console
from mindzoo.datasets.paths import check_output
from mindzoo.errors import UserInputError
from mindzoo.runconfig import check_adaptable

console = make_console()


def register(app: typer.Typer) -> None:
    @app.command()
    def adapt(
        checkpoint: Path = typer.Argument(
            ..., help="Run directory of `train` (or one of its checkpoints/step-*)."
        ),
        store: str = typer.Option(
            ..., help="Store holding the new subject (a directory or URL: s3://bucket/store)."
        ),
        subject: str = typer.Option(..., help="The new subject, e.g. sub-04 or 04."),
        n_trials: int | None = typer.Option(
            None, help="Use the subject's first N training trials (acquisition order)."
        ),
        fraction: float | None = typer.Option(
            None, help="Use the first fraction F of the subject's training trials, 0 < F <= 1."
        ),
        out: Path | None = typer.Option(None, help="Run directory (default runs/adapt-SUB-TIME)."),
        sets: list[str] = typer.Option(
            [], "--set", help="Override trainer.* or data.val_fraction/split_seed: KEY=VALUE."
        ),
    ) -> None:
        """Adapt a pre-trained decoder to a new subject; writes a run that `evaluate` reads."""
        if n_trials is not None and fraction is not None:  # neither: refused once loaded
            raise UserInputError("Pass exactly one of --n-trials N or --fraction F")
        if fraction is not None and not 0 < fraction <= 1:
            raise UserInputError(f"--fraction {fraction} is outside (0, 1]; e.g. --fraction 0.1")
        if n_trials is not None and n_trials < 2:
            raise UserInputError(f"--n-trials {n_trials} is too few: at least 2 are needed")
        from mindzoo.training.adapt import adapt_model  # torch: not for --help

        out = out or Path("runs") / f"adapt-{subject}-{time.strftime('%Y%m%d-%H%M%S')}"
        check_output(out)
        check_adaptable(checkpoint)
        run_dir = adapt_model(checkpoint, store, subject, out, n_trials, fraction, sets)
        console.print(f"adapted to {subject}: {run_dir} (next: braindecode-cli evaluate {run_dir})")
