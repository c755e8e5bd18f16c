"""`train` for per-subject estimators (ridge): one numpy model per subject, fitted in turn.

The run directory (see :mod:`mindzoo.training.decoders` for the common layout) holds
``model.safetensors`` with keys ``"<subject>/<name>"``, the test predictions and ``metrics.json``
(alpha and CV score per subject); it is built in a hidden sibling and renamed at the end.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from mindzoo.atomic import atomic_directory
from mindzoo.config import resolve_preset
from mindzoo.datasets.store import TensorStore
from mindzoo.errors import UserInputError
from mindzoo.models import create_model, get_model_info
from mindzoo.tensorfile import save_arrays
from mindzoo.training.decoders import TrainSettings
from mindzoo.training.rundir import describe_run


def fit_estimator(
    name: str,
    store_path: Path | str,
    out: Path | None,
    subjects: list[str] | None = None,
    overrides: list[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    resume: bool = False,
) -> Path:
    """Fit one estimator per subject (ridge) on the store's training split; the run directory
    ``out`` appears atomically at the end."""
    if resume:
        raise UserInputError(f"--resume continues a torch model's checkpoints; {name} has none")
    sections = {"model": get_model_info(name).config_cls}
    settings = resolve_preset(name, overrides or [], sections, TrainSettings)
    store = TensorStore.open(store_path)
    chosen = store.pick_subjects(subjects)
    out = Path(out)
    features = np.asarray(store.features(settings.feature_space, settings.feature_kind)[...])
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserInputError(f"Run directory {out} exists and is not empty; choose another --out")
    with atomic_directory(out) as tmp:
        weights, predictions, metrics = {}, {}, {}
        for subject in tqdm(chosen, desc=f"train {name}", disable=not progress):
            start = time.perf_counter()
            x_train, stim_train, _ = store.split(subject, "train")
            if not len(x_train):
                raise UserInputError(f"{subject} has no training trials in store {store.path}")
            model = create_model(name, settings.model)
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
        save_arrays(weights, tmp / "model.safetensors")
        save_arrays(predictions, tmp / "predictions.safetensors")
        config = describe_run(name, settings, store, chosen)
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        (tmp / "metrics.json").write_text(
            json.dumps({"dataset": store.dataset, "model": name, "subjects": metrics}, indent=2)
        )
    return out
