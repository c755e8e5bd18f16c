"""`braindecode-cli quickstart`: the product's main job, offline, in minutes on a laptop CPU.

synthetic fMRI -> store -> brain-it decoder -> embedded diffusion model (cached in the store)
-> reconstructions of the test images (with the permutation control) -> evaluation report with
the reconstruction grid.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import typer

from mindzoo.cli.console import make_console
from mindzoo.cli.evaluate import metrics_table
from mindzoo.cli.prepare import run_prepare
from mindzoo.cli.reconstruct import reconstruction_table
from mindzoo.reconstruction import GenerationSettings

console = make_console()

DECODER = "brain-it"
# Fewer denoising steps than `reconstruct`'s default: 2 x 4 subjects x 50 test images (with the
# shuffled control) stay within the quickstart's time budget; quality changes little (see
# bench/reconstruct.py).
QUICKSTART_STEPS = 15
RECON_COLUMNS = ("PixCorr", "SSIM", "efficientnet-lite0 2-way")


def run_quickstart(
    out: Path,
    seed: int | None,
    sets: list[str],
    model_sets: list[str] | None = None,
    diffusion_sets: list[str] | None = None,
    steps: int = QUICKSTART_STEPS,
) -> dict:
    """Run the five steps; write `out/metrics.json` with timings, evaluation and reconstruction.

    ``sets`` change the dataset (`prepare --set`), ``model_sets`` brain-it's training
    (`train brain-it --set`), ``diffusion_sets`` the diffusion model's (`train diffusion --set`);
    ``steps`` is the number of denoising steps.
    """
    from mindzoo.evaluation.run import evaluate_run
    from mindzoo.reconstruction.run import reconstruct_run
    from mindzoo.training.decoders import resolve_train_settings
    from mindzoo.training.diffusion import resolve_settings as resolve_diffusion_settings
    from mindzoo.training.run import train_model

    resolve_train_settings(DECODER, model_sets or [])  # bad --model-set: refused before prepare
    resolve_diffusion_settings(diffusion_sets or [])
    timings = {}
    start = time.perf_counter()
    store = out / "store"
    console.rule("1/5 prepare synthetic-fmri")
    run_prepare("synthetic-fmri", store, None, seed, sets)
    timings["prepare_seconds"] = time.perf_counter() - start

    console.rule(f"2/5 train {DECODER}")
    step = time.perf_counter()
    run_dir = train_model(
        DECODER, store, out / "runs" / DECODER, overrides=model_sets or [], overwrite=True
    )
    timings["train_seconds"] = time.perf_counter() - step

    console.rule("3/5 train diffusion (cached in the store)")
    step = time.perf_counter()
    weights = train_model("diffusion", store, None, overrides=diffusion_sets or [])
    timings["train_diffusion_seconds"] = time.perf_counter() - step

    console.rule("4/5 reconstruct (embedded backend)")
    step = time.perf_counter()
    recon_dir = out / "reconstruct"
    recon = reconstruct_run(
        run_dir,
        store,
        recon_dir,
        weights=weights,
        settings=GenerationSettings(steps=steps),
        overwrite=True,
    )
    timings["reconstruct_seconds"] = time.perf_counter() - step

    console.rule("5/5 evaluate")
    step = time.perf_counter()
    metrics = evaluate_run(run_dir)
    timings["evaluate_seconds"] = time.perf_counter() - step
    timings["total_seconds"] = time.perf_counter() - start

    report = run_dir / "eval" / "report.md"
    _append_reconstructions(report, recon, recon_dir)
    console.print(metrics_table(metrics))
    console.print(reconstruction_table(recon))
    summary = {
        "dataset": metrics["dataset"],
        "model": metrics["model"],
        **{k: round(v, 2) for k, v in timings.items()},
        "subjects": metrics["subjects"],
        "mean": metrics["mean"],
        "reconstruction": {
            "grid": str(recon_dir / "grid.png"),
            "lowlevel_init": recon["lowlevel_init"],
            "seconds_per_image": recon["seconds_per_image"],
            "subjects": {
                subject: {
                    kind: {c: row[kind][c] for c in RECON_COLUMNS} for kind in ("real", "shuffled")
                }
                for subject, row in recon["subjects"].items()
            },
        },
        "report": str(report),
    }
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    console.print(f"done in {timings['total_seconds']:.0f} s; report: {summary['report']}")
    return summary


def _append_reconstructions(report: Path, recon: dict, recon_dir: Path) -> None:
    """Add the reconstruction table (real vs. shuffled control) and grid to the evaluation report."""
    grid = os.path.relpath(recon_dir / "grid.png", report.parent)
    settings = recon["settings"]
    lines = [
        "",
        f"## Reconstructions ({recon['backend']} backend)",
        "",
        f"{settings['steps']} DDIM steps, guidance {settings['guidance']}, seed {settings['seed']}"
        + (f", low-level init at strength {settings['strength']}" if recon["lowlevel_init"] else "")
        + ". *shuffled*: the same predictions permuted across test items (permutation control).",
        "",
        "| subject | images | " + " | ".join(RECON_COLUMNS) + " |",
        "|---|---|" + "---:|" * len(RECON_COLUMNS),
    ]
    for subject, row in recon["subjects"].items():
        for kind in ("real", "shuffled"):
            cells = " | ".join(f"{row[kind][c]:.3f}" for c in RECON_COLUMNS)
            lines.append(f"| {subject} | {kind} | {cells} |")
    lines += ["", f"![ground truth (top row), then one row per subject]({grid})", ""]
    with report.open("a") as handle:
        handle.write("\n".join(lines))


def register(app: typer.Typer) -> None:
    @app.command()
    def quickstart(
        out: Path = typer.Option(Path("mindzoo-quickstart"), help="Working directory."),
        seed: int | None = typer.Option(None, help="Seed of the simulator."),
        sets: list[str] = typer.Option([], "--set", help="Override a dataset setting: KEY=VALUE."),
        model_sets: list[str] = typer.Option(
            [], "--model-set", help="Override a brain-it setting, e.g. trainer.epochs=10."
        ),
        diffusion_sets: list[str] = typer.Option(
            [], "--diffusion-set", help="Override a diffusion setting, e.g. trainer.steps=300."
        ),
        steps: int = typer.Option(QUICKSTART_STEPS, min=1, help="Denoising steps per image."),
    ) -> None:
        """Synthetic fMRI -> brain-it -> embedded diffusion reconstructions -> report, offline."""
        run_quickstart(out, seed, sets, model_sets, diffusion_sets, steps)
