"""`train` for ephys models (Du-IN stages, braindecode baselines) on an ephys store.

The model (:class:`~mindzoo.models.trainable.EphysModel`: ``forward(x, subject, y)`` returns a
dict with a scalar ``"loss"``, scalar logs and, for classifiers, ``"logits"``) is trained by the
one :class:`~mindzoo.training.trainer.Trainer`, like the fMRI decoders: the family's AdamW betas
(0.9/0.99, as Du-IN), augmented subject-homogeneous batches, validation loss and logs after every
epoch, early stopping with the best-validation weights restored, checkpoints and ``resume``.

A run directory (``braindecode-cli train NAME --store S --out RUN``)::

    config.json              model, kind (ephys-classifier / ephys-pretrain), settings, store,
                             subjects, build spec (recordings, stage inputs), init run
    model.safetensors        final (best-validation) weights
    predictions.safetensors  classifiers: "<subject>/test_logits" [n, classes], "/test_labels"
    metrics.json             training facts (loss history, samples/s); written last
    checkpoints/step-N/      the newest checkpoint (for --resume)

Stage chaining: ``--set init=RUN`` names the run a stage starts from (du-in-mae: the du-in-vqvae
run whose codes it learns to predict; du-in-cls: optionally a du-in-mae or du-in-vqvae run whose
encoder it starts from).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from mindzoo.config import resolve_preset
from mindzoo.datasets.ephys_views import EphysDataConfig, EphysDataset, recording_info
from mindzoo.datasets.store import TensorStore
from mindzoo.errors import UserInputError
from mindzoo.models import InitRun, StageInit, count_parameters, create_model, get_model_info
from mindzoo.tensorfile import save_arrays
from mindzoo.training import checkpoint as ckpt
from mindzoo.training.rundir import describe_run, fit_in_run_dir, prepare_run_dir
from mindzoo.training.trainer import TrainerConfig, make_accelerator, seed_everything


class EphysTrainSettings(BaseModel):
    """Settings of one ephys `train` call: the family's ``model`` config, ``data``
    (:class:`EphysDataConfig`), ``trainer`` (:class:`TrainerConfig`) and the ``init`` run."""

    model_config = ConfigDict(extra="forbid")

    model: dict[str, Any] = {}
    data: dict[str, Any] = {}
    trainer: dict[str, Any] = {}
    init: str | None = None


def resolve_ephys_settings(name: str, overrides: list[str]) -> EphysTrainSettings:
    """Model preset (mindzoo/configs/models/NAME.yaml, or NAME-VARIANT.yaml with
    ``--set preset=VARIANT``, e.g. ``preset=paper``: the published sizes) + defaults + ``--set``."""
    sections = {
        "model": get_model_info(name).config_cls,
        "data": EphysDataConfig,
        "trainer": TrainerConfig,
    }
    return resolve_preset(name, overrides, sections, EphysTrainSettings)


def init_spec(name: str) -> StageInit:
    """How runs of ``name`` start from an earlier run (none: from scratch only)."""
    info = get_model_info(name)
    return StageInit(()) if info.init is None else info.attribute(info.init)


def read_init_run(name: str, init: str | None) -> InitRun | None:
    """The init run of a ``name`` run, checked: finished, and of a model ``name`` can start from."""
    family = init_spec(name)
    if init is None:
        if family.required:
            raise UserInputError(
                f"{name} starts from a {' or '.join(family.init_from)} run: pass "
                f"--set init=RUN_DIR (the --out of `braindecode-cli train {family.init_from[0]}`)"
            )
        return None
    if not family.init_from:
        raise UserInputError(f"{name} starts from scratch; remove --set init={init}")
    path = Path(init)
    config_path = path / "config.json"
    finished = (path / "metrics.json").is_file() and (path / "model.safetensors").is_file()
    if not config_path.is_file() or not finished:
        raise UserInputError(
            f"--set init={init}: not a finished run (config.json, model.safetensors, metrics.json "
            f"needed); pass the --out of `braindecode-cli train {family.init_from[0]}`"
        )
    config = json.loads(config_path.read_text())
    if config.get("model") not in family.init_from:
        raise UserInputError(
            f"--set init={init} is a {config.get('model')} run; {name} starts from a "
            f"{' or '.join(family.init_from)} run"
        )
    return InitRun(path.resolve(), config)


@torch.no_grad()
def predict_logits(
    model: nn.Module, dataset: EphysDataset, batch_size: int = 256
) -> dict[str, np.ndarray]:
    """Class logits per subject, ``{subject: [n_trials, n_classes]}`` in dataset order (eval)."""
    device = next(model.parameters()).device
    model.eval()
    out = {}
    for subject in dataset.subjects:
        rows = dataset.subject_slice(subject)
        parts = [
            model.logits(
                dataset.batch(range(b, min(b + batch_size, rows.stop))).x.to(device), subject
            )
            .float()
            .cpu()
            .numpy()
            for b in range(rows.start, rows.stop, batch_size)
        ]
        out[subject] = (
            np.concatenate(parts) if parts else np.empty((0, dataset.info.n_classes), np.float32)
        )
    return out


# ---------------------------------------------------------------------------------- run level
def train_ephys(
    name: str,
    store_path: Path | str,
    out: Path,
    subjects: list[str] | None = None,
    overrides: list[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    resume: bool = False,
) -> Path:
    """Train ephys model ``name`` on the store's training split; returns the run directory.

    Everything is checked (settings, store, init run) before ``out`` is created; a run that
    fails before its first checkpoint removes the directory it created.
    """
    settings = resolve_ephys_settings(name, overrides or [])
    family = init_spec(name)
    init = read_init_run(name, settings.init)
    model_settings, extras = dict(settings.model), {}
    if init is not None and family.prepare is not None:
        model_settings, extras = family.prepare(model_settings, init)
    settings = settings.model_copy(update={"model": model_settings})
    store = TensorStore.open(store_path)
    chosen = store.pick_subjects(subjects)
    info = recording_info(store, chosen)
    data_config = EphysDataConfig(**settings.data)
    trainer_config = TrainerConfig(**settings.trainer)
    accelerator = make_accelerator(trainer_config)
    seed_everything(trainer_config.seed)
    model = create_model(name, settings.model, info=info, **extras)
    if init is not None and family.apply is not None:
        family.apply(model, init)
    config = describe_run(
        name,
        settings,
        store,
        chosen,
        kind=model.kind,
        build={"info": info.as_dict(), "extras": extras},
        init=str(init.path) if init else None,
    )
    out = Path(out)
    prepare_run_dir(out, resume, False, config, is_main=True)
    splits = {s: EphysDataset(store, chosen, s, data_config) for s in ("train", "val", "test")}
    state = fit_in_run_dir(
        out, config, model, splits, trainer_config, accelerator, resume, progress
    )
    if accelerator.is_main_process:
        _write_results(out, model, splits, state, store, name, trainer_config.batch_size)
    accelerator.wait_for_everyone()
    return out


def _write_results(
    out: Path,
    model: nn.Module,
    splits: dict[str, EphysDataset],
    state: ckpt.TrainerState,
    store: TensorStore,
    name: str,
    batch_size: int,
) -> None:
    """Final weights, test predictions (classifiers) and metrics.json (last: marks the end)."""
    ckpt.save_weights(out / "model.safetensors", ckpt.weights(model))
    test = splits["test"]
    if model.kind == "ephys-classifier":
        predictions = {}
        for subject, logits in predict_logits(model, test).items():
            predictions[f"{subject}/test_logits"] = logits.astype(np.float32)
            predictions[f"{subject}/test_labels"] = test.labels(subject).astype(np.int64)
        save_arrays(predictions, out / "predictions.safetensors")
    subjects = {
        s: {f"n_{split}_trials": splits[split].sizes[k] for split in splits}
        | {"n_channels": splits["train"].info.channels[s]}
        for k, s in enumerate(splits["train"].subjects)
    }
    metrics = {
        "dataset": store.dataset,
        "model": name,
        "kind": model.kind,
        "parameters": count_parameters(model),
        "subjects": subjects,
        "training": ckpt.training_summary(state),
    }
    ckpt.write_json(out / "metrics.json", metrics)
