"""`evaluate`: a run directory + its store -> metrics.json, report.md and figures.

The output directory (default ``RUN/eval``) appears atomically: it is built in a hidden sibling
and renamed into place, so a kill, a full disk or an error leaves the earlier evaluation there
as it was (or nothing), never a mix of two evaluations or a half-written one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mindzoo.atomic import TEMP_PREFIX, atomic_directory
from mindzoo.datasets.remote import MANIFEST, is_url
from mindzoo.datasets.store import TensorStore
from mindzoo.errors import UserInputError
from mindzoo.evaluation.classification import EPHYS_KINDS, evaluate_ephys_run
from mindzoo.evaluation.metrics import evaluate_features
from mindzoo.evaluation.noise_ceiling import noise_ceiling
from mindzoo.evaluation.report import SubjectResult, write_report
from mindzoo.evaluation.spike_run import evaluate_spike_run
from mindzoo.runconfig import read_run_config
from mindzoo.tensorfile import load_arrays


def _read_predictions(run_dir: Path) -> dict[str, np.ndarray]:
    pred_path = run_dir / "predictions.safetensors"
    if not pred_path.is_file():
        raise UserInputError(
            f"{pred_path} is missing; pass the --out directory of `braindecode-cli train`"
        )
    return load_arrays(pred_path)


def run_store(config: dict[str, Any], run_dir: Path, store: str | Path | None = None) -> str:
    """Where the store of the run ``run_dir`` is: the one it recorded, or ``store`` (``evaluate
    --store``: the store moved), whose version of the run's config hash is chosen and checked."""
    recorded = str(config["store"])
    if store is None:
        if not is_url(recorded) and not Path(recorded).exists():
            raise UserInputError(
                f"Run {run_dir} was trained on store {recorded}, which is not there any more "
                "(moved or deleted); pass --store PATH: the store's new place"
            )
        return recorded
    if is_url(str(store)):
        return str(store)
    given = Path(store)
    if not given.exists():
        raise UserInputError(f"--store {store} does not exist; pass the store the run used")
    wanted = str(config.get("store_config_hash", ""))
    version = given / "versions" / wanted[:12]
    if wanted and (version / MANIFEST).is_file():
        return str(version)
    found = TensorStore.open(given).manifest.get("config_hash", "")
    if wanted and found != wanted:
        raise UserInputError(
            f"--store {store} is not the store run {run_dir} was trained on (its config hash "
            f"{found[:12]} differs from the run's {wanted[:12]}); pass that store"
        )
    return str(given)


def _open_store(config: dict[str, Any], run_dir: Path) -> TensorStore:
    store = TensorStore.open(config["store"])  # a directory or a URL (s3://bucket/store)
    if store.manifest["config_hash"] != config["store_config_hash"]:
        raise UserInputError(
            f"Store {config['store']} changed since run {run_dir} was trained "
            "(config hash differs); re-run train"
        )
    return store


def mean_metrics(per_subject: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean over subjects of every metric all subjects have."""
    keys = set.intersection(*(set(m) for m in per_subject.values())) if per_subject else set()
    return {k: float(np.mean([m[k] for m in per_subject.values()])) for k in sorted(keys)}


_EVALUATION_FILES = {"metrics.json", "report.md"}


def _check_replaceable(out: Path) -> None:
    """Refuse an ``out`` that the new evaluation could not replace without losing something: a
    file, or a non-empty directory that is not an earlier evaluation (metrics.json, report.md
    and figures only)."""
    if out.is_file():
        raise UserInputError(
            f"{out} is a file; the evaluation is a directory: choose another --out"
        )
    if not out.is_dir():
        return
    names = {p.name for p in out.iterdir() if not p.name.startswith(TEMP_PREFIX)}
    earlier = _EVALUATION_FILES <= names and all(
        name in _EVALUATION_FILES or (name.endswith(".png") and (out / name).is_file())
        for name in names
    )
    if names and not earlier:
        raise UserInputError(
            f"{out} is not empty and holds no earlier evaluation (metrics.json, report.md and "
            "figures) that the new one may replace; choose a new or empty --out"
        )


def evaluate_run(
    run_dir: Path,
    out: Path | None = None,
    subjects: list[str] | None = None,
    store: str | Path | None = None,
) -> dict[str, Any]:
    """Score a run's test predictions against the store's cached features; write the report
    into ``out`` (default ``run_dir/eval``), which appears atomically and replaces an earlier
    evaluation there.

    ``subjects`` limits an fMRI run's scoring to those of its subjects (a grid cell scores one);
    ephys runs are scored whole. ``store`` replaces the store path the run recorded (a moved
    store; its version with the run's config hash is used).

    Metrics per subject (keys `<metric>.<space>`): two-way identification, retrieval top-1
    and feature correlation on repeat-averaged test betas, plus the median noise ceiling of
    the subject's voxels (from the test repeats) and chance levels.
    """
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "eval"
    _check_replaceable(out)
    with atomic_directory(out) as tmp:  # (removes the folders it made on failure)
        return _evaluate_into(run_dir, tmp, subjects, store)


def _evaluate_into(
    run_dir: Path, out: Path, subjects: list[str] | None, store: str | Path | None = None
) -> dict[str, Any]:
    """:func:`evaluate_run` writing into the (temporary) directory ``out``."""
    config = read_run_config(run_dir)
    config = {**config, "store": run_store(config, run_dir, store)}
    if config.get("kind") == "spikes":  # spike models: likelihood, generation, behaviour, coupling
        return evaluate_spike_run(run_dir, config, out)
    if config.get("kind") in EPHYS_KINDS:  # ephys runs: classification / pre-training metrics
        return evaluate_ephys_run(run_dir, config, out)
    predictions = _read_predictions(run_dir)
    store = _open_store(config, run_dir)
    space = config["settings"]["feature_space"]
    kind = config["settings"]["feature_kind"]
    features = store.features(space, kind)
    images = store.images()[...] if "images" in store.root["stimuli"] else None
    per_subject: dict[str, dict[str, float]] = {}
    results: dict[str, SubjectResult] = {}
    chosen = config["subjects"] if subjects is None else subjects
    unknown = sorted(set(chosen) - set(config["subjects"]))
    if unknown:
        raise UserInputError(
            f"Run {run_dir} has no subject {unknown[0]}; it has {', '.join(config['subjects'])}"
        )
    for subject in chosen:
        pred = predictions[f"{subject}/test_pred"]
        stim = predictions[f"{subject}/test_stimulus_index"]
        true = np.asarray(features.get_orthogonal_selection((stim,)), dtype=np.float32)
        true = true.reshape(len(stim), -1)
        scores = evaluate_features(pred, true, space)
        repeats, _ = store.repeats(subject, "test")
        ceiling = noise_ceiling(repeats)
        scores.update(
            {
                "noise_ceiling_median": float(np.median(ceiling)),
                "n_test_stimuli": int(len(stim)),
                "chance.two_way_id": 0.5,
                "chance.retrieval_top1": 1.0 / len(stim),
            }
        )
        per_subject[subject] = scores
        arrays, attrs = store.axis(subject)
        results[subject] = SubjectResult(
            pred=pred,
            true=true,
            noise_ceiling=ceiling,
            voxel_ijk=arrays.get("ijk"),
            affine=np.asarray(attrs["affine"]) if "affine" in attrs else None,
            volume_shape=tuple(attrs["volume_shape"]) if "volume_shape" in attrs else None,
            test_images=images[stim] if images is not None else None,
        )
    metrics = {
        "dataset": config["dataset"],
        "model": config["model"],
        "feature_space": f"{space}/{kind}",
        "run": str(run_dir.resolve()),
        "subjects": per_subject,
        "mean": mean_metrics(per_subject),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    write_report(out, metrics, results, title=f"{config['model']} on {config['dataset']}")
    return metrics
