"""Evaluation of ephys runs: classification metrics and confusion figures, pre-training losses.

Classifier runs (du-in-cls, eegnet, shallow-fbcsp, eeg-conformer) are scored from their test
predictions: top-1 and top-5 accuracy, balanced accuracy (mean per-class recall over the classes
present in the test set) and their chance levels, per subject and on average, with one confusion
matrix PNG per subject (rows: true class, columns: predicted; normalised per row). Pre-training
runs (du-in-vqvae, du-in-mae) have no classes: their test loss (and its parts) per subject is
computed by reloading the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from rich.table import Table

from mindzoo.datasets.store import TensorStore
from mindzoo.errors import UserInputError
from mindzoo.tensorfile import load_arrays

EPHYS_KINDS = ("ephys-classifier", "ephys-pretrain")


def top_k_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of trials whose true class is among the ``k`` highest scores ([n, classes])."""
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))


def confusion_matrix(predicted: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts [true class, predicted class]."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def balanced_accuracy(predicted: np.ndarray, labels: np.ndarray, n_classes: int) -> float:
    """Mean recall over the classes that occur in ``labels``."""
    matrix = confusion_matrix(predicted, labels, n_classes)
    support = matrix.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(matrix)[present] / support[present]))


def classification_scores(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """top1, top5, balanced_accuracy and their chance levels for one subject's test trials."""
    n_classes = logits.shape[1]
    predicted = logits.argmax(axis=1)
    return {
        "top1": top_k_accuracy(logits, labels, 1),
        "top5": top_k_accuracy(logits, labels, 5),
        "balanced_accuracy": balanced_accuracy(predicted, labels, n_classes),
        "chance.top1": 1.0 / n_classes,
        "chance.top5": min(5, n_classes) / n_classes,
        "chance.balanced_accuracy": 1.0 / n_classes,
        "n_test_trials": int(len(labels)),
    }


def plot_confusion(matrix: np.ndarray, class_names: list[str], title: str, path: Path) -> None:
    """Row-normalised confusion matrix as a PNG (class names on the axes when few enough)."""
    rows = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    size = min(12.0, 3.0 + 0.15 * len(class_names))
    fig = Figure(figsize=(size, size))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(normalised, cmap="viridis", vmin=0, vmax=1)
    if len(class_names) <= 30:
        ticks = np.arange(len(class_names))
        ax.set_xticks(ticks, class_names, rotation=90, fontsize=7)
        ax.set_yticks(ticks, class_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of the true class")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _mean(per_subject: dict[str, dict[str, float]]) -> dict[str, float]:
    keys = set.intersection(*(set(m) for m in per_subject.values())) if per_subject else set()
    return {k: float(np.mean([m[k] for m in per_subject.values()])) for k in sorted(keys)}


def evaluate_ephys_run(run_dir: Path, config: dict[str, Any], out: Path) -> dict[str, Any]:
    """Score an ephys run; writes ``out``/metrics.json, report.md and confusion PNGs."""
    store = TensorStore.open(config["store"])  # a directory or a URL
    if store.manifest["config_hash"] != config["store_config_hash"]:
        raise UserInputError(
            f"Store {config['store']} changed since run {run_dir} was trained "
            "(config hash differs); re-run train"
        )
    out.mkdir(parents=True, exist_ok=True)
    if config["kind"] == "ephys-classifier":
        per_subject, figures = _score_classifier(run_dir, config, store, out)
    else:
        per_subject, figures = _score_pretraining(run_dir, config, store), []
    metrics = {
        "dataset": config["dataset"],
        "model": config["model"],
        "kind": config["kind"],
        "run": str(run_dir.resolve()),
        "subjects": per_subject,
        "mean": _mean(per_subject),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    _write_report(out, metrics, figures)
    return metrics


def _score_classifier(
    run_dir: Path, config: dict[str, Any], store: TensorStore, out: Path
) -> tuple[dict[str, dict[str, float]], list[str]]:
    path = run_dir / "predictions.safetensors"
    if not path.is_file():
        raise UserInputError(f"{path} is missing; the run did not finish: train it again")
    predictions = load_arrays(path)
    names = store.stimulus_labels
    per_subject, figures = {}, []
    for subject in config["subjects"]:
        logits = predictions[f"{subject}/test_logits"]
        labels = predictions[f"{subject}/test_labels"]
        if not len(labels):
            raise UserInputError(f"{subject} has no test trials in store {store.path}")
        per_subject[subject] = classification_scores(logits, labels)
        figure = f"confusion_{subject}.png"
        matrix = confusion_matrix(logits.argmax(axis=1), labels, logits.shape[1])
        top1 = per_subject[subject]["top1"]
        plot_confusion(
            matrix, names, f"{config['model']} {subject}: top-1 {top1:.2f}", out / figure
        )
        figures.append(figure)
    return per_subject, figures


def _score_pretraining(
    run_dir: Path, config: dict[str, Any], store: TensorStore
) -> dict[str, dict[str, float]]:
    from mindzoo.datasets.ephys_views import EphysDataset
    from mindzoo.models import load_model

    model = load_model(run_dir)
    per_subject = {}
    for subject in config["subjects"]:
        test = EphysDataset(store, [subject], "test")
        if len(test) == 0:
            raise UserInputError(f"{subject} has no test trials in store {store.path}")
        per_subject[subject] = {f"test_{k}": v for k, v in mean_logs(model, test).items()}
    return per_subject


@torch.no_grad()
def mean_logs(model: Any, dataset: Any, batch_size: int = 64) -> dict[str, float]:
    """Trial-weighted means of a model's scalar logs (loss, accuracy ...) over a non-empty
    dataset view, in eval mode on the CPU."""
    from mindzoo.datasets.views import SubjectBatchSampler

    sums: dict[str, float] = {}
    for indices in SubjectBatchSampler(dataset.sizes, batch_size, shuffle=False):
        batch = dataset.batch(indices)
        _, logs = model.training_step(batch)
        for key, value in logs.items():
            sums[key] = sums.get(key, 0.0) + value * len(batch)
    return {k: v / len(dataset) for k, v in sums.items()}


def _write_report(out: Path, metrics: dict[str, Any], figures: list[str]) -> None:
    keys = [k for k in metrics["mean"] if not k.startswith("n_")]
    lines = [
        f"# {metrics['model']} on {metrics['dataset']}",
        "",
        f"Run: `{metrics['run']}`",
        "",
        "| subject | " + " | ".join(keys) + " |",
        "|---" * (len(keys) + 1) + "|",
    ]
    for name, row in [*metrics["subjects"].items(), ("mean", metrics["mean"])]:
        lines.append(f"| {name} | " + " | ".join(f"{row[k]:.3f}" for k in keys) + " |")
    lines += ["", *(f"![{f}]({f})" for f in figures)]
    (out / "report.md").write_text("\n".join(lines) + "\n")


def ephys_table(metrics: dict[str, Any]) -> Table:
    """Subjects x metrics of an ephys evaluation as a rich table (chance levels in the caption)."""
    keys = [k for k in metrics["mean"] if not k.startswith(("n_", "chance."))]
    chance = {k: v for k, v in metrics["mean"].items() if k.startswith("chance.")}
    caption = ", ".join(f"{k[len('chance.') :]} {v:.3f}" for k, v in chance.items())
    table = Table(
        title=f"{metrics['model']} on {metrics['dataset']}",
        caption=f"chance: {caption}" if caption else None,
    )
    table.add_column("subject")
    for key in keys:
        table.add_column(key, justify="right")
    for name, row in [*metrics["subjects"].items(), ("mean", metrics["mean"])]:
        table.add_row(name, *(f"{row[k]:.3f}" for k in keys))
    return table
