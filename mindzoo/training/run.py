"""`train`: store -> per-subject model fits -> a run directory.

A run directory holds everything `evaluate` needs, and nothing is loaded by unpickling:

    config.json              model name and settings, store version and config hash, subjects
    model.safetensors        weights, keys "<subject>/<name>"
    predictions.safetensors  "<subject>/test_pred" [n_test_stimuli, ...] (repeat-averaged test
                             betas -> features) and "<subject>/test_stimulus_index"
    metrics.json             training facts per subject (chosen alpha, CV score, sizes, seconds)

The run is built in a hidden sibling directory and renamed at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict
from safetensors.numpy import save_file
from tqdm.auto import tqdm

from mindzoo.config import apply_overrides, configs_dir, load_yaml, validate
from mindzoo.datasets.store import TensorStore
from mindzoo.errors import UserInputError
from mindzoo.models import create_model, get_model_info


class TrainSettings(BaseModel):
    """Settings of one `train` call: the target feature space and the model's own config."""

    model_config = ConfigDict(extra="forbid")

    feature_space: str = "efficientnet-lite0"
    feature_kind: str = "global"
    model: dict[str, Any] = {}


def resolve_train_settings(name: str, overrides: list[str]) -> TrainSettings:
    """Model preset (configs/models/NAME.yaml) + model config defaults + `--set` overrides."""
    info = get_model_info(name)
    preset_path = configs_dir() / "models" / f"{name}.yaml"
    preset = load_yaml(preset_path) if preset_path.is_file() else {}
    preset.pop("name", None)
    defaults = info.config_cls(**preset.get("model", {})).model_dump(mode="json")
    settings = {**TrainSettings().model_dump(), **preset, "model": defaults}
    settings = apply_overrides(settings, overrides)
    validate(info.config_cls, settings["model"], f"model {name} (model.*)")
    return validate(TrainSettings, settings, f"model {name}")


def _pick_subjects(store: TensorStore, subjects: list[str] | None) -> list[str]:
    if not subjects:
        return store.subjects
    chosen = [s if s.startswith("sub-") else f"sub-{s}" for s in subjects]
    unknown = [s for s in chosen if s not in store.subjects]
    if unknown:
        raise UserInputError(
            f"Subject {unknown[0]} is not in store {store.path}; available: {', '.join(store.subjects)}"
        )
    return chosen


def train_model(
    name: str,
    store_path: Path,
    out: Path,
    subjects: list[str] | None = None,
    overrides: list[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Fit model `name` for each subject of the store; returns the run directory `out`."""
    settings = resolve_train_settings(name, overrides or [])
    store = TensorStore.open(store_path)
    chosen = _pick_subjects(store, subjects)
    features = np.asarray(store.features(settings.feature_space, settings.feature_kind)[...])
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserInputError(f"Run directory {out} exists and is not empty; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp-{out.name}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        weights, predictions, metrics = {}, {}, {}
        for subject in tqdm(chosen, desc=f"train {name}", disable=not progress):
            start = time.perf_counter()
            x_train, stim_train, _ = store.split(subject, "train")
            if not len(x_train):
                raise UserInputError(f"{subject} has no training trials in store {store.path}")
            model = create_model(name, **settings.model)
            model.fit(x_train, features[stim_train].reshape(len(stim_train), -1), groups=stim_train)
            x_test, stim_test, _ = store.split(subject, "test", average_repeats=True)
            predictions[f"{subject}/test_pred"] = model.predict(x_test).astype(np.float32)
            predictions[f"{subject}/test_stimulus_index"] = stim_test.astype(np.int64)
            weights.update({f"{subject}/{k}": np.asarray(v) for k, v in model.state_dict().items()})
            cv = model.cv_results_
            metrics[subject] = {
                "alpha": float(cv["alpha"]),
                "cv_score": float(cv["score"]),
                "n_train_trials": int(len(x_train)),
                "n_test_stimuli": int(len(stim_test)),
                "n_voxels": int(x_train.shape[1]),
                "fit_seconds": round(time.perf_counter() - start, 3),
            }
        save_file(weights, str(tmp / "model.safetensors"))
        save_file(predictions, str(tmp / "predictions.safetensors"))
        config = {
            "model": name,
            "settings": settings.model_dump(mode="json"),
            "store": str(store.path.resolve()),
            "store_config_hash": store.manifest["config_hash"],
            "dataset": store.dataset,
            "subjects": chosen,
        }
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        (tmp / "metrics.json").write_text(
            json.dumps({"dataset": store.dataset, "model": name, "subjects": metrics}, indent=2)
        )
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
