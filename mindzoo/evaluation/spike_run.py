"""`evaluate` of a spikes run: the trained model on the store's test trials -> metrics.json,
report.md and figures (:func:`~mindzoo.evaluation.spikes.evaluate_spike_model` computes them).

Every run is scored with the same windows (the run's ``data`` settings) and against the same
reference: a homogeneous-rate model fitted on the run's training windows, so bits per spike of
two runs on one store compare directly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.table import Table

from mindzoo.datasets.spike_views import SpikeDataConfig
from mindzoo.datasets.store import TensorStore
from mindzoo.errors import UserInputError
from mindzoo.evaluation.spikes import evaluate_spike_model
from mindzoo.models import load_model

_SHOWN = (
    "bits_per_spike",
    "psth_corr",
    "psth_corr_recorded_split_half",
    "generated_rate_ratio",
    "behaviour_r2",
    "behaviour_pearson",
    "coupling_auroc",
    "coupling_direction_accuracy",
)


def evaluate_spike_run(
    run_dir: Path, config: dict[str, Any], out: Path, seed: int = 0, progress: bool = True
) -> dict[str, Any]:
    """Score a spikes run; writes ``out``/metrics.json, report.md and PNG figures."""
    store = TensorStore.open(config["store"])
    if store.manifest["config_hash"] != config["store_config_hash"]:
        raise UserInputError(
            f"Store {config['store']} changed since run {run_dir} was trained "
            "(config hash differs); re-run train"
        )
    model = load_model(run_dir)
    data_config = SpikeDataConfig(**config["settings"]["data"])
    out.mkdir(parents=True, exist_ok=True)
    per_subject = evaluate_spike_model(
        model,
        store,
        config["subjects"],
        data_config,
        seed=seed,
        figures_dir=out,
        progress=progress,
    )
    keys = set.intersection(*(set(m) for m in per_subject.values())) if per_subject else set()
    mean = {
        k: float(sum(m[k] for m in per_subject.values()) / len(per_subject))
        for k in sorted(keys)
        if all(isinstance(m[k], (int, float)) for m in per_subject.values())
    }
    metrics = {
        "dataset": config["dataset"],
        "model": config["model"],
        "kind": config["kind"],
        "run": str(Path(run_dir).resolve()),
        "seed": seed,
        "subjects": per_subject,
        "mean": mean,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    _write_report(out, metrics)
    return metrics


def spike_table(metrics: dict[str, Any]) -> Table:
    """Subjects x the main spike metrics (those the run has) as a rich table."""
    rows = [*metrics["subjects"].items(), ("mean", metrics["mean"])]
    shown = [k for k in _SHOWN if all(k in row for _, row in rows)]
    table = Table(title=f"{metrics['model']} on {metrics['dataset']} (test trials)")
    table.add_column("subject")
    for key in shown:
        table.add_column(key.replace("_", " "), justify="right")
    for name, row in rows:
        table.add_row(name, *(f"{row[k]:.3f}" for k in shown))
    return table


def _write_report(out: Path, metrics: dict[str, Any]) -> None:
    shown = [k for k in _SHOWN if any(k in m for m in metrics["subjects"].values())]
    lines = [
        f"# {metrics['model']} on {metrics['dataset']}",
        "",
        "Test trials; bits/spike against a homogeneous-rate model fitted on the training "
        "windows; PSTH correlation of closed-loop generated vs recorded activity (the recorded "
        "split-half correlation is its ceiling).",
        "",
        "| subject | " + " | ".join(shown) + " |",
        "|" + "---|" * (len(shown) + 1),
    ]
    for subject, values in metrics["subjects"].items():
        cells = [f"{values[k]:.3f}" if k in values else "" for k in shown]
        lines.append(f"| {subject} | " + " | ".join(cells) + " |")
    figures = sorted(p.name for p in out.glob("*.png"))
    lines += ["", *(f"![{name}]({name})" for name in figures)]
    (out / "report.md").write_text("\n".join(lines) + "\n")
