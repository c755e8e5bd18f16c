"""`train` for fMRI decoders: store -> a trained model -> a run directory that `evaluate` reads.

Two kinds of model share the command. Per-subject estimators (ridge) are fitted subject by
subject with numpy (:mod:`mindzoo.training.estimators`); torch decoders (:mod:`mindzoo.models.base`,
e.g. ``mindeye-mlp``) are trained here on all chosen subjects at once by
:class:`mindzoo.training.trainer.Trainer`. The registry's ``kind`` says which is which. A run
directory holds, whatever the kind,
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

from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from mindzoo.config import resolve_preset
from mindzoo.datasets.store import TensorStore
from mindzoo.datasets.views import DataConfig, FMRIDataset, make_splits, parse_target
from mindzoo.errors import UserInputError
from mindzoo.models import count_parameters, create_model, get_model_info
from mindzoo.models.base import FMRIDecoder
from mindzoo.tensorfile import save_arrays
from mindzoo.training import checkpoint as ckpt
from mindzoo.training.rundir import describe_run, fit_in_run_dir, prepare_run_dir
from mindzoo.training.trainer import TrainerConfig, make_accelerator, seed_everything


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
    """Model preset (mindzoo/configs/models/NAME[-VARIANT].yaml) + defaults + ``--set``."""
    sections = {
        "model": get_model_info(name).config_cls,
        "data": DataConfig,
        "trainer": TrainerConfig,
    }
    return resolve_preset(name, overrides, sections, TrainSettings)


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


def train_decoder(
    name: str,
    store_path: Path | str,
    out: Path | None,
    subjects: list[str] | None = None,
    overrides: list[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    resume: bool = False,
) -> Path:
    """Train torch decoder ``name`` on all chosen subjects with the trainer; returns ``out``.

    ``resume`` continues the run in ``out`` from its newest checkpoint (and starts one when
    ``out`` has none); the settings must be those the run started with.
    """
    settings = resolve_train_settings(name, overrides or [])
    store = TensorStore.open(store_path)
    chosen = store.pick_subjects(subjects)
    out = Path(out)
    targets, evaluated = decoder_targets(settings)
    trainer_config = TrainerConfig(**settings.trainer)
    splits = make_splits(store, chosen, targets, DataConfig(**settings.data))
    accelerator = make_accelerator(trainer_config)
    seed_everything(trainer_config.seed)
    model = create_model(
        name,
        settings.model,
        n_voxels={s: store.signals(s).shape[1] for s in chosen},
        target_shapes={
            t: store.features(*parse_target(spec)).shape[1:] for t, spec in targets.items()
        },
    )
    model.target_scaler.fit(splits["train"].target_statistics())
    model.set_voxel_rois({s: store.voxel_rois(s) for s in chosen})
    config = describe_run(name, settings, store, chosen, build=model.build_spec())
    prepare_run_dir(out, resume, overwrite, config, accelerator.is_main_process)
    accelerator.wait_for_everyone()  # every process has checked `out` before anyone writes
    state = fit_in_run_dir(
        out, config, model, splits, trainer_config, accelerator, resume, progress
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
    save_arrays(predictions, out / "predictions.safetensors")
    metrics = {
        "dataset": store.dataset,
        "model": name,
        "parameters": count_parameters(model),
        "subjects": subjects,
        "training": ckpt.training_summary(state),
    }
    ckpt.write_json(out / "metrics.json", metrics)


@torch.no_grad()
def predict(
    model: FMRIDecoder, dataset: FMRIDataset, batch_size: int = 256, device: str | None = None
) -> dict[str, dict[str, np.ndarray]]:
    """Predicted features per subject, ``{subject: {target: [n_rows, *shape]}}`` in dataset order.

    Runs in eval mode and float32 on ``device`` (default: where the model is).
    """
    device = device or next(model.parameters()).device
    model.eval()
    out: dict[str, dict[str, np.ndarray]] = {}
    for subject in dataset.subjects:
        rows = dataset.subject_slice(subject)
        parts: dict[str, list[np.ndarray]] = {name: [] for name in model.target_shapes}
        for begin in range(rows.start, rows.stop, batch_size):
            batch = dataset.batch(range(begin, min(begin + batch_size, rows.stop))).to(device)
            for name, value in model.predict(batch.voxels, subject).items():
                parts[name].append(value.float().cpu().numpy())
        out[subject] = {
            name: np.concatenate(chunks) if chunks else np.empty((0, *model.target_shapes[name]))
            for name, chunks in parts.items()
        }
    return out
