"""`train`: store -> a trained model -> a run directory that `evaluate` reads.

Two kinds of model share the command. Per-subject estimators (ridge) are fitted subject by
subject with numpy; torch decoders (:mod:`mindzoo.models.base`, e.g. ``mindeye-mlp``) are trained
on all chosen subjects at once by :class:`mindzoo.training.trainer.Trainer`. The registry says
which is which (:func:`mindzoo.models.decoder_class`). A run directory holds, whatever the kind,
and nothing in it is loaded by unpickling:

    config.json              model name and settings, store version and config hash, subjects
                             (torch decoders also: the build spec, voxels per subject and targets)
    model.safetensors        weights (ridge: keys "<subject>/<name>"; decoders: the state dict)
    predictions.safetensors  "<subject>/test_pred" [n_test_stimuli, d] for the evaluated feature
                             space (repeat-averaged test betas) and "<subject>/test_stimulus_index";
                             decoders add "<subject>/outputs/<target>" for each of their targets
    metrics.json             training facts (ridge: alpha, CV score per subject; decoders: the
                             loss history, best validation loss, samples/s), written last
    checkpoints/step-N/      torch decoders only: the newest checkpoint, for `--resume` and `adapt`

Ridge runs are built in a hidden sibling directory and renamed at the end. Decoder runs write
into the run directory as they train (so a killed run can be resumed with ``resume=True``);
``metrics.json`` appears last and marks a finished run. Bad input is found before anything is
written, and a run that fails before its first checkpoint removes the directory it created.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict
from safetensors.numpy import save_file
from tqdm.auto import tqdm

from mindzoo.atomic import atomic_directory
from mindzoo.config import apply_overrides, configs_dir, load_yaml, validate
from mindzoo.datasets.store import TensorStore
from mindzoo.datasets.views import DataConfig, FMRIDataset, make_splits, parse_target
from mindzoo.errors import UserInputError
from mindzoo.models import create_model, decoder_class, get_model_info
from mindzoo.models.base import FMRIDecoder, count_parameters
from mindzoo.training import checkpoint as ckpt
from mindzoo.training.trainer import (
    Trainer,
    TrainerConfig,
    make_accelerator,
    predict,
    seed_everything,
)

if TYPE_CHECKING:
    from accelerate import Accelerator


class TrainSettings(BaseModel):
    """Settings of one `train` call.

    ``feature_space``/``feature_kind`` name the evaluated target; ``model`` is the family's own
    config. Torch decoders also have ``data`` (:class:`~mindzoo.datasets.views.DataConfig`) and
    ``trainer`` (:class:`~mindzoo.training.trainer.TrainerConfig`); they stay empty for ridge.
    """

    model_config = ConfigDict(extra="forbid")

    feature_space: str = "efficientnet-lite0"
    feature_kind: str = "global"
    model: dict[str, Any] = {}
    data: dict[str, Any] = {}
    trainer: dict[str, Any] = {}


def resolve_train_settings(name: str, overrides: list[str]) -> TrainSettings:
    """Model preset (configs/models/NAME.yaml) + config defaults + `--set` overrides."""
    info = get_model_info(name)
    preset_path = configs_dir() / "models" / f"{name}.yaml"
    preset = load_yaml(preset_path) if preset_path.is_file() else {}
    preset.pop("name", None)
    sections = {"model": info.config_cls}
    if decoder_class(name) is not None:
        sections.update(data=DataConfig, trainer=TrainerConfig)
    settings = {**TrainSettings().model_dump(), **preset}
    for key, cls in sections.items():
        where = f"{preset_path} ({key}:)"
        settings[key] = validate(cls, preset.get(key, {}), where).model_dump(mode="json")
    settings = apply_overrides(settings, overrides)
    for key, cls in sections.items():
        validate(cls, settings[key], f"model {name} ({key}.*)")
    return validate(TrainSettings, settings, f"model {name}")


def train_model(
    name: str,
    store_path: Path,
    out: Path | None,
    subjects: list[str] | None = None,
    overrides: list[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    resume: bool = False,
) -> Path:
    """Train model `name` on the store's training split; returns the run directory `out`.

    ``resume`` continues a torch decoder's run in `out` from its newest checkpoint (and starts
    one when `out` has none); the settings must be those the run started with. Families with
    their own loop (``train_fn`` in the registry, e.g. diffusion or du-in stages) take over here;
    ``out=None`` is for those that choose their own place (diffusion: the store's cache).
    """
    own_loop = get_model_info(name).train_fn
    if own_loop is not None:
        return own_loop(
            store_path=Path(store_path),
            out=None if out is None else Path(out),
            subjects=subjects,
            overrides=overrides or [],
            resume=resume,
            progress=progress,
        )
    settings = resolve_train_settings(name, overrides or [])
    store = TensorStore.open(store_path)
    chosen = store.pick_subjects(subjects)
    out = Path(out)
    cls = decoder_class(name)
    if cls is None:
        if resume:
            raise UserInputError(
                f"--resume continues a torch decoder's checkpoints; {name} has none"
            )
        return _fit_per_subject(name, settings, store, chosen, out, overwrite, progress)
    return _train_decoder(cls, name, settings, store, chosen, out, overwrite, resume, progress)


def _fit_per_subject(
    name: str,
    settings: TrainSettings,
    store: TensorStore,
    chosen: list[str],
    out: Path,
    overwrite: bool,
    progress: bool,
) -> Path:
    """Fit one estimator per subject (ridge); the run appears atomically at the end."""
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
        config = _run_config(name, settings, store, chosen)
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        (tmp / "metrics.json").write_text(
            json.dumps({"dataset": store.dataset, "model": name, "subjects": metrics}, indent=2)
        )
    return out


def _run_config(
    name: str,
    settings: TrainSettings,
    store: TensorStore,
    chosen: list[str],
    model: FMRIDecoder | None = None,
) -> dict[str, Any]:
    """The run's config.json; for decoders it also holds what rebuilds the model."""
    config = {
        "model": name,
        "settings": settings.model_dump(mode="json"),
        "store": str(store.path.resolve()),
        "store_config_hash": store.manifest["config_hash"],
        "dataset": store.dataset,
        "subjects": chosen,
    }
    if model is not None:
        config["build"] = model.build_spec()
    return config


def decoder_targets(settings: TrainSettings) -> tuple[dict[str, str], str]:
    """The decoder's targets ``{name: "space/kind"}`` and the name of the evaluated one."""
    evaluated = f"{settings.feature_space}/{settings.feature_kind}"
    targets = DataConfig(**settings.data).targets or {settings.feature_kind: evaluated}
    for target in targets:
        if not target or not target.replace("-", "").replace("_", "").isalnum():
            raise UserInputError(
                f"Bad target name {target!r} in data.targets: use letters, digits, '-' or '_'"
            )
    named = [target for target, spec in targets.items() if spec == evaluated]
    if not named:
        raise UserInputError(
            f"The evaluated feature {evaluated} is not among data.targets {targets}; set "
            "feature_space and feature_kind to one of them"
        )
    return targets, named[0]


def prepare_run_dir(
    out: Path, resume: bool, overwrite: bool, run_config: dict[str, Any], is_main: bool
) -> None:
    """Refuse a run directory that would be clobbered; on resume check the settings match.

    Every data-parallel process checks; only the main one removes a run it may overwrite.
    """
    if not (out.exists() and any(out.iterdir())):
        return
    if resume:
        if (out / "metrics.json").is_file():
            raise UserInputError(
                f"Run {out} is already finished; evaluate it or train into a new --out"
            )
        saved_path = out / "config.json"
        saved = json.loads(saved_path.read_text()) if saved_path.is_file() else {}
        for key in ("model", "settings", "store_config_hash", "subjects", "build"):
            if saved.get(key) != run_config[key]:
                raise UserInputError(
                    f"Cannot resume {out}: its {key} differs from this call's ({saved_path}); "
                    "resume with the same model, store, subjects and --set options"
                )
    elif overwrite:
        if is_main:
            shutil.rmtree(out)
    else:
        raise UserInputError(
            f"Run directory {out} exists and is not empty; choose another --out, or pass "
            "--resume to continue its last checkpoint"
        )


@contextmanager
def run_dir_for_training(
    out: Path, run_config: dict[str, Any], accelerator: Accelerator
) -> Iterator[None]:
    """Create ``out`` with its ``config.json`` (main process) around a training loop; if the
    loop fails before its first checkpoint, remove the directory again when this call made it."""
    created = not out.exists()
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        ckpt.write_json(out / "config.json", run_config)
    accelerator.wait_for_everyone()
    try:
        yield
    except BaseException:
        if (
            created
            and accelerator.is_main_process
            and ckpt.latest_checkpoint(out / "checkpoints") is None
        ):
            shutil.rmtree(out, ignore_errors=True)
        raise


def _train_decoder(
    cls: type[FMRIDecoder],
    name: str,
    settings: TrainSettings,
    store: TensorStore,
    chosen: list[str],
    out: Path,
    overwrite: bool,
    resume: bool,
    progress: bool,
) -> Path:
    """Train a torch decoder on all chosen subjects with the Accelerate trainer."""
    targets, evaluated = decoder_targets(settings)
    trainer_config = TrainerConfig(**settings.trainer)
    splits = make_splits(store, chosen, targets, DataConfig(**settings.data))
    accelerator = make_accelerator(trainer_config)
    seed_everything(trainer_config.seed)
    model = cls(
        get_model_info(name).config_cls(**settings.model),
        {s: store.signals(s).shape[1] for s in chosen},
        {t: store.features(*parse_target(spec)).shape[1:] for t, spec in targets.items()},
    )
    model.target_scaler.fit(splits["train"].target_statistics())
    model.set_voxel_rois({s: store.voxel_rois(s) for s in chosen})
    run_config = _run_config(name, settings, store, chosen, model)
    prepare_run_dir(out, resume, overwrite, run_config, accelerator.is_main_process)
    accelerator.wait_for_everyone()  # every process has checked `out` before anyone writes
    with run_dir_for_training(out, run_config, accelerator):
        state = Trainer(trainer_config, accelerator).fit(
            model,
            splits["train"],
            splits["val"],
            checkpoint_dir=out / "checkpoints",
            resume=resume,
            run_config=run_config,
            progress=progress,
        )
    if accelerator.is_main_process:
        _write_decoder_results(out, model, splits, evaluated, state, store, name)
    accelerator.wait_for_everyone()
    return out


def _write_decoder_results(
    out: Path,
    model: FMRIDecoder,
    splits: dict[str, FMRIDataset],
    evaluated: str,
    state: ckpt.TrainerState,
    store: TensorStore,
    name: str,
) -> None:
    """Final weights, test predictions and metrics.json (last: it marks the run finished)."""
    ckpt.save_weights(out / "model.safetensors", ckpt.weights(model))
    outputs = predict(model, splits["test"])
    predictions: dict[str, np.ndarray] = {}
    subjects = {}
    for subject, per_target in outputs.items():
        stim = splits["test"].stimuli(subject)
        predictions[f"{subject}/test_pred"] = per_target[evaluated].reshape(len(stim), -1)
        predictions[f"{subject}/test_stimulus_index"] = stim.astype(np.int64)
        for target, values in per_target.items():
            predictions[f"{subject}/outputs/{target}"] = values.astype(np.float32)
        subjects[subject] = {
            "n_train_trials": len(splits["train"].stimuli(subject)),
            "n_val_trials": len(splits["val"].stimuli(subject)),
            "n_test_stimuli": len(stim),
            "n_voxels": model.n_voxels[subject],
        }
    tmp = out / ".predictions.safetensors.tmp"
    save_file({k: np.ascontiguousarray(v) for k, v in predictions.items()}, str(tmp))
    os.replace(tmp, out / "predictions.safetensors")
    metrics = {
        "dataset": store.dataset,
        "model": name,
        "parameters": count_parameters(model),
        "subjects": subjects,
        "training": ckpt.training_summary(state),
    }
    ckpt.write_json(out / "metrics.json", metrics)
