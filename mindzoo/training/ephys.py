"""Training of ephys models (Du-IN stages, braindecode baselines) on an ephys store.

Same conventions as the fMRI :class:`~mindzoo.training.trainer.Trainer` (whose loop is tied to
fMRI decoders and feature targets): Hugging Face Accelerate, :class:`TrainerConfig` settings,
AdamW (betas 0.9/0.99, as Du-IN) with the shared learning-rate schedules, subject-homogeneous
batches, validation loss after every epoch, early stopping with the best-validation weights
restored, checkpoints of :mod:`mindzoo.training.checkpoint` (safetensors, nothing unpickled) and
``resume``. An ephys model is an ``nn.Module`` whose ``forward(x, subject, y)`` returns a dict
with a scalar ``"loss"`` (plus scalar logs, and ``"logits"`` for classifiers).

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
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from pydantic import BaseModel, ConfigDict
from safetensors.numpy import save_file
from safetensors.torch import load_file
from torch import nn
from tqdm.auto import tqdm

from mindzoo.config import apply_overrides, configs_dir, load_yaml, validate
from mindzoo.datasets.ephys_views import (
    EphysDataConfig,
    EphysDataset,
    RecordingInfo,
    recording_info,
)
from mindzoo.datasets.store import TensorStore
from mindzoo.datasets.views import SubjectBatchSampler
from mindzoo.errors import UserInputError
from mindzoo.models import du_in, eeg_baselines
from mindzoo.models.registry import get_model_info
from mindzoo.training import checkpoint as ckpt
from mindzoo.training.run import prepare_run_dir, run_dir_for_training
from mindzoo.training.trainer import (
    TrainerConfig,
    lr_multiplier,
    make_accelerator,
    seed_everything,
)

ADAM_BETAS = (0.9, 0.99)  # Du-IN's; used for the baselines too, so the loops match


class EphysTrainSettings(BaseModel):
    """Settings of one ephys `train` call: the family's ``model`` config, ``data``
    (:class:`EphysDataConfig`), ``trainer`` (:class:`TrainerConfig`) and the ``init`` run."""

    model_config = ConfigDict(extra="forbid")

    model: dict[str, Any] = {}
    data: dict[str, Any] = {}
    trainer: dict[str, Any] = {}
    init: str | None = None


@dataclass(frozen=True)
class InitRun:
    """A finished earlier run that a stage starts from."""

    path: Path
    config: dict[str, Any]

    def weights(self) -> dict[str, torch.Tensor]:
        return load_file(str(self.path / "model.safetensors"))


@dataclass(frozen=True)
class EphysFamily:
    """How ``train`` builds one ephys model family.

    ``build(config, info, extras)`` returns a fresh model; ``extras`` are stage inputs taken from
    the init run (saved in config.json, so a run rebuilds without it). ``init_from`` lists the
    model names whose runs may initialise it; ``prepare_init`` returns (model settings, extras)
    adjusted to the init run; ``apply_init`` copies its weights into the fresh model.
    """

    build: Callable[[BaseModel, RecordingInfo, dict[str, Any]], nn.Module]
    init_from: tuple[str, ...] = ()
    init_required: bool = False
    prepare_init: (
        Callable[[dict[str, Any], InitRun], tuple[dict[str, Any], dict[str, Any]]] | None
    ) = None
    apply_init: Callable[[nn.Module, InitRun], None] | None = None


# ------------------------------------------------------------------------------- Du-IN families
def _duin_build(stage: str) -> Callable[[BaseModel, RecordingInfo, dict[str, Any]], nn.Module]:
    def build(config: BaseModel, info: RecordingInfo, extras: dict[str, Any]) -> nn.Module:
        teacher = extras.get("teacher")
        if teacher is None:
            return du_in.build_stage(stage, config, info)
        return du_in.build_stage(
            stage,
            config,
            info,
            du_in.DuINConfig(**teacher["settings"]),
            RecordingInfo(**teacher["info"]),
        )

    return build


def _mae_prepare(model: dict[str, Any], init: InitRun) -> tuple[dict[str, Any], dict[str, Any]]:
    teacher = {
        "settings": init.config["settings"]["model"],
        "info": init.config["build"]["info"],
    }
    return model, {"teacher": teacher}


def _mae_apply(model: nn.Module, init: InitRun) -> None:
    try:
        model.teacher.load_state_dict(init.weights())
    except RuntimeError as err:
        raise UserInputError(
            f"Weights of {init.path} do not fit its own config ({str(err).splitlines()[0]})"
        ) from None


def _cls_prepare(model: dict[str, Any], init: InitRun) -> tuple[dict[str, Any], dict[str, Any]]:
    inherited = {k: init.config["settings"]["model"][k] for k in du_in.ENCODER_KEYS}
    return {**model, **inherited}, {}


def _cls_apply(model: nn.Module, init: InitRun) -> None:
    mismatch = model.info.channel_mismatch(RecordingInfo(**init.config["build"]["info"]))
    if mismatch:
        raise UserInputError(
            f"--set init={init.path} was pre-trained on other channels: {mismatch}; prepare the "
            "pre-training and the labeled store with the same pipeline.channels.* and simulator "
            "settings"
        )
    du_in.load_encoder(model.encoder, init.weights(), str(init.path))


def _baseline_build(family: str) -> Callable[[BaseModel, RecordingInfo, dict[str, Any]], nn.Module]:
    return lambda config, info, extras: eeg_baselines.PerSubjectBaseline(family, config, info)


FAMILIES: dict[str, EphysFamily] = {
    "du-in-vqvae": EphysFamily(_duin_build("vqvae")),
    "du-in-mae": EphysFamily(_duin_build("mae"), ("du-in-vqvae",), True, _mae_prepare, _mae_apply),
    "du-in-cls": EphysFamily(
        _duin_build("cls"), ("du-in-mae", "du-in-vqvae"), False, _cls_prepare, _cls_apply
    ),
    **{name: EphysFamily(_baseline_build(name)) for name in eeg_baselines.BASELINES},
}


# ------------------------------------------------------------------------------------ settings
def resolve_ephys_settings(name: str, overrides: list[str]) -> EphysTrainSettings:
    """Model preset + config defaults + `--set` overrides.

    The preset is configs/models/NAME.yaml, or NAME-VARIANT.yaml with ``--set preset=VARIANT``
    (e.g. ``preset=paper``: the published sizes).
    """
    info = get_model_info(name)
    variants = [o.partition("=")[2].strip() for o in overrides if o.partition("=")[0] == "preset"]
    overrides = [o for o in overrides if o.partition("=")[0] != "preset"]
    stem = f"{name}-{variants[-1]}" if variants else name
    preset_path = configs_dir() / "models" / f"{stem}.yaml"
    if variants and not preset_path.is_file():
        have = sorted(p.stem for p in preset_path.parent.glob(f"{name}-*.yaml"))
        raise UserInputError(
            f"No preset {preset_path}; presets of {name}: {', '.join(have) or 'none'}"
        )
    preset = load_yaml(preset_path) if preset_path.is_file() else {}
    preset.pop("name", None)
    sections = {"model": info.config_cls, "data": EphysDataConfig, "trainer": TrainerConfig}
    settings: dict[str, Any] = {"init": preset.get("init")}
    for key, cls in sections.items():
        where = f"{preset_path} ({key}:)"
        settings[key] = validate(cls, preset.get(key, {}), where).model_dump(mode="json")
    settings = apply_overrides(settings, overrides)
    for key, cls in sections.items():
        validate(cls, settings[key], f"model {name} ({key}.*)")
    return validate(EphysTrainSettings, settings, f"model {name}")


def read_init_run(name: str, init: str | None) -> InitRun | None:
    """The init run of a ``name`` run, checked: finished, and of a model ``name`` can start from."""
    family = FAMILIES[name]
    if init is None:
        if family.init_required:
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


# ------------------------------------------------------------------------------------- the loop
def _loss_logs(outputs: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v) for k, v in outputs.items() if k != "logits" and v.ndim == 0}


@torch.no_grad()
def evaluate_loss(
    model: nn.Module, dataset: EphysDataset, batch_size: int, device: torch.device | str
) -> dict[str, float] | None:
    """Trial-weighted means of the model's scalar outputs (loss, accuracy, ...) over ``dataset``
    in eval mode (one process); None when it is empty."""
    if len(dataset) == 0:
        return None
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    for indices in SubjectBatchSampler(dataset.sizes, batch_size, shuffle=False):
        batch = dataset.batch(indices).to(device)
        for key, value in _loss_logs(model(batch.x, batch.subject, batch.y)).items():
            sums[key] = sums.get(key, 0.0) + value * len(batch)
    model.train(was_training)
    return {k: v / len(dataset) for k, v in sums.items()}


def fit(
    model: nn.Module,
    train: EphysDataset,
    val: EphysDataset | None,
    config: TrainerConfig,
    accelerator: Accelerator | None = None,
    *,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    run_config: dict[str, Any] | None = None,
    progress: bool = True,
) -> ckpt.TrainerState:
    """Train ``model`` in place; returns the final trainer state (``stage`` 1 when done).

    Each epoch: shuffled subject-homogeneous batches of augmented trials, then the validation
    loss (on the main process); after ``patience`` epochs without gain, or at the last epoch,
    the best-validation weights are restored. Checkpoints at every epoch end (and every
    ``checkpoint_every_steps``); ``resume`` continues from the newest one.
    """
    acc = accelerator or make_accelerator(config)
    model.to(acc.device)
    params = [p for p in model.parameters() if p.requires_grad]
    sampler = SubjectBatchSampler(
        train.sizes,
        config.batch_size,
        shuffle=True,
        seed=config.seed * 1000,
        rank=acc.process_index,
        world_size=acc.num_processes,
    )
    if len(sampler) == 0:
        raise UserInputError(
            f"No training batch: {len(train)} training trials with trainer.batch_size="
            f"{config.batch_size}; lower trainer.batch_size"
        )
    total = config.epochs * len(sampler)
    warmup = int(config.warmup_fraction * total)
    optimizer = torch.optim.AdamW(
        params, lr=config.lr, betas=ADAM_BETAS, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(config.schedule, step, total, warmup)
    )
    state, best = ckpt.TrainerState(), None
    latest = ckpt.latest_checkpoint(checkpoint_dir) if (resume and checkpoint_dir) else None
    if latest is not None:
        state = ckpt.read_state(latest)
        ckpt.load_weights(latest / "model.safetensors", model)
        best = ckpt.read_best(latest)
        ckpt.load_optimizer(latest, optimizer, scheduler)
        ckpt.load_rng(latest, acc.process_index)
    else:
        seed_everything(config.seed + 1)  # dropout/augmentation stream independent of the init
    wrapped = acc.prepare_model(model)
    optimizer = acc.prepare_optimizer(optimizer)
    wrapped.train()

    def save() -> None:
        if checkpoint_dir is not None:
            ckpt.save_checkpoint(
                checkpoint_dir,
                state,
                model,
                best,
                optimizer,
                scheduler,
                run_config or {},
                config.keep_checkpoints,
                acc.process_index,
                acc.wait_for_everyone,
            )

    while state.stage == 0:
        sampler.set_epoch(state.epoch)
        loss_sum = state.epoch_loss_sum if acc.is_main_process else 0.0
        n_local = state.epoch_samples if acc.is_main_process else 0
        start = time.perf_counter()
        bar = tqdm(
            total=len(sampler),
            initial=state.step_in_epoch,
            desc=f"epoch {state.epoch + 1}/{config.epochs}",
            disable=not (progress and acc.is_local_main_process),
        )
        for index, indices in enumerate(sampler):
            if index < state.step_in_epoch:
                continue
            batch = train.batch(indices, augment=True).to(acc.device)
            with acc.autocast():
                loss = wrapped(batch.x, batch.subject, batch.y)["loss"]
            acc.backward(loss)
            if config.grad_clip is not None:
                acc.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            value = float(loss.detach())
            loss_sum += value * len(batch)
            n_local += len(batch)
            state.global_step += 1
            state.step_in_epoch = index + 1
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}", refresh=False)
            every = config.checkpoint_every_steps
            if every and state.global_step % every == 0 and index + 1 < len(sampler):
                state.train_seconds += time.perf_counter() - start
                start = time.perf_counter()
                state.epoch_loss_sum, state.epoch_samples = _reduce(acc, loss_sum, n_local)
                save()
        state.train_seconds += time.perf_counter() - start
        total_loss, n_total = _reduce(acc, loss_sum, n_local)
        state.epoch_loss_sum, state.epoch_samples = 0.0, 0
        state.samples_seen += int(n_total)
        val_logs = evaluate_loss(model, val, config.batch_size, acc.device) if val else None
        val_loss = val_logs["loss"] if val_logs else None
        bar.set_postfix(train=f"{total_loss / max(n_total, 1):.4f}", val=f"{val_loss or 0:.4f}")
        bar.close()
        if val_loss is not None and (
            state.best_val_loss is None or val_loss < state.best_val_loss - config.min_delta
        ):
            state.best_val_loss, state.bad_epochs = val_loss, 0
            best = ckpt.weights(model)
        elif val_loss is not None:
            state.bad_epochs += 1
        state.history.append(
            {
                "epoch": state.epoch + 1,
                "step": state.global_step,
                "train_loss": total_loss / max(n_total, 1),
                "val_loss": val_loss,
                **{f"val_{k}": v for k, v in (val_logs or {}).items() if k != "loss"},
                "lr": scheduler.get_last_lr()[0],
            }
        )
        state.epoch += 1
        state.step_in_epoch = 0
        stopped = config.patience is not None and state.bad_epochs >= config.patience
        if stopped or state.epoch >= config.epochs:
            if best is not None:
                model.load_state_dict(best)
            best, state.stage = None, 1
        save()
    acc.unwrap_model(wrapped, keep_fp32_wrapper=False)
    return state


def _reduce(acc: Accelerator, loss_sum: float, n: int) -> tuple[float, int]:
    total = acc.reduce(torch.tensor([loss_sum, n], dtype=torch.float64, device=acc.device), "sum")
    return float(total[0]), int(total[1])


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
def build_model(run_config: dict[str, Any]) -> nn.Module:
    """A freshly initialised ephys model of the architecture a run config describes."""
    name = run_config["model"]
    config = get_model_info(name).config_cls(**run_config["settings"]["model"])
    build = run_config["build"]
    return FAMILIES[name].build(config, RecordingInfo(**build["info"]), build["extras"])


def load_ephys_model(path: Path) -> nn.Module:
    """Rebuild a trained ephys model from a run (or checkpoint) directory, in eval mode."""
    path = Path(path)
    for needed in (path / "config.json", path / "model.safetensors"):
        if not needed.is_file():
            raise UserInputError(
                f"{needed} is missing; pass a run directory of `braindecode-cli train`"
            )
    model = build_model(json.loads((path / "config.json").read_text()))
    ckpt.load_weights(path / "model.safetensors", model)
    return model.eval()


def train_ephys(
    name: str,
    store_path: Path,
    out: Path,
    subjects: list[str] | None = None,
    overrides: list[str] | None = None,
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Train ephys model ``name`` on the store's training split; returns the run directory.

    Everything is checked (settings, store, init run) before ``out`` is created; a run that
    fails before its first checkpoint removes the directory it created.
    """
    settings = resolve_ephys_settings(name, overrides or [])
    family = FAMILIES[name]
    init = read_init_run(name, settings.init)
    model_settings, extras = dict(settings.model), {}
    if init is not None and family.prepare_init is not None:
        model_settings, extras = family.prepare_init(model_settings, init)
    settings = settings.model_copy(update={"model": model_settings})
    store = TensorStore.open(store_path)
    chosen = store.pick_subjects(subjects)
    info = recording_info(store, chosen)
    data_config = EphysDataConfig(**settings.data)
    trainer_config = TrainerConfig(**settings.trainer)
    accelerator = make_accelerator(trainer_config)
    seed_everything(trainer_config.seed)
    config = get_model_info(name).config_cls(**settings.model)
    model = family.build(config, info, extras)
    if init is not None and family.apply_init is not None:
        family.apply_init(model, init)
    run_config = {
        "model": name,
        "kind": model.kind,
        "settings": settings.model_dump(mode="json"),
        "store": str(store.path.resolve()),
        "store_config_hash": store.manifest["config_hash"],
        "dataset": store.dataset,
        "subjects": chosen,
        "build": {"info": info.as_dict(), "extras": extras},
        "init": str(init.path) if init else None,
    }
    out = Path(out)
    prepare_run_dir(out, resume, False, run_config, is_main=True)
    splits = {s: EphysDataset(store, chosen, s, data_config) for s in ("train", "val", "test")}
    with run_dir_for_training(out, run_config, accelerator):
        state = fit(
            model,
            splits["train"],
            splits["val"],
            trainer_config,
            accelerator,
            checkpoint_dir=out / "checkpoints",
            resume=resume,
            run_config=run_config,
            progress=progress,
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
        tmp = out / ".predictions.safetensors.tmp"
        save_file({k: np.ascontiguousarray(v) for k, v in predictions.items()}, str(tmp))
        os.replace(tmp, out / "predictions.safetensors")
    subjects = {
        s: {f"n_{split}_trials": splits[split].sizes[k] for split in splits}
        | {"n_channels": splits["train"].info.channels[s]}
        for k, s in enumerate(splits["train"].subjects)
    }
    metrics = {
        "dataset": store.dataset,
        "model": name,
        "kind": model.kind,
        "parameters": du_in.count_parameters(model),
        "subjects": subjects,
        "training": ckpt.training_summary(state),
    }
    ckpt.write_json(out / "metrics.json", metrics)
