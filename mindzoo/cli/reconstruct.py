"""`braindecode-cli reconstruct RUN_DIR --store STORE --out DIR`: predicted features -> images."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from mindzoo.cli.console import make_console
from mindzoo.cli.train import split_subjects
from mindzoo.datasets.paths import check_output
from mindzoo.reconstruction import GenerationSettings, list_backends
from mindzoo.runconfig import check_device, check_image_decoder

console = make_console()

TABLE_COLUMNS = ("PixCorr", "SSIM", "efficientnet-lite0 2-way", "efficientnet-lite0 distance")


def reconstruction_table(metrics: dict) -> Table:
    """Subjects x (PixCorr, SSIM, lite0 2-way, lite0 distance), real and shuffled control."""
    table = Table(title=f"{metrics['backend']} reconstructions of {metrics['model']} predictions")
    table.add_column("subject")
    table.add_column("images")
    for column in TABLE_COLUMNS:
        table.add_column(column.replace("efficientnet-lite0", "lite0"), justify="right")
    for subject, row in metrics["subjects"].items():
        for kind in ("real", "shuffled"):
            if kind in row:
                values = [row[kind].get(c) for c in TABLE_COLUMNS]
                cells = ["-" if v is None else f"{v:.3f}" for v in values]
                table.add_row(subject if kind == "real" else "", kind, *cells)
    return table


def _backend_help() -> str:
    names = "; ".join(f"{b.name}: {b.description}" for b in list_backends())
    return f"Diffusion backend. {names}."


def register(app: typer.Typer) -> None:
    @app.command()
    def reconstruct(
        run_dir: Path = typer.Argument(..., help="Run directory written by `train` (a decoder)."),
        store: str = typer.Option(
            ..., help="Store the run was trained on (a directory or URL: s3://bucket/store)."
        ),
        out: Path = typer.Option(..., help="Output directory (must not exist or be empty)."),
        backend: str = typer.Option("embedded", help=_backend_help()),
        weights: Path | None = typer.Option(
            None,
            help="Backend weights directory (embedded: the --out of `train diffusion`; "
            "default: the store's cached model).",
        ),
        subjects: list[str] = typer.Option([], help="Subjects to reconstruct (default: all)."),
        steps: int = typer.Option(GenerationSettings.steps, help="Denoising steps."),
        guidance: float = typer.Option(
            GenerationSettings.guidance, help="Classifier-free guidance scale (1 = none)."
        ),
        seed: int = typer.Option(GenerationSettings.seed, help="Item i uses seed + i."),
        strength: float = typer.Option(
            GenerationSettings.strength,
            help="Low-level init: fraction of the schedule re-noised (1 = semantic only). Used "
            "when the run predicts a 'lowlevel' target.",
        ),
        batch_size: int = typer.Option(GenerationSettings.batch_size, help="Images per batch."),
        control: bool = typer.Option(
            True, help="Also reconstruct from predictions shuffled across test items."
        ),
        metric_weights: list[str] = typer.Option(
            [], help="Metric backbone weights NAME=PATH (alexnet, inception, clip, ...)."
        ),
        device: str = typer.Option("cpu", help="torch device (cpu, cuda)."),
    ) -> None:
        """Generate images from a run's test predictions; PNGs, grid.png and metrics.json."""
        from mindzoo.features.backbones import parse_metric_weights
        from mindzoo.reconstruction.run import reconstruct_run

        check_output(out, store_ok=False)
        check_image_decoder(run_dir)
        check_device(device)
        settings = GenerationSettings(
            steps=steps, guidance=guidance, seed=seed, strength=strength, batch_size=batch_size
        )
        metrics = reconstruct_run(
            run_dir,
            store,
            out,
            backend=backend,
            weights=weights,
            subjects=split_subjects(subjects),
            settings=settings,
            control=control,
            device=device,
            metric_weights=parse_metric_weights(metric_weights),
        )
        console.print(reconstruction_table(metrics))
        console.print(f"{metrics['seconds_per_image']:.3f} s/image; grid: {Path(out) / 'grid.png'}")
