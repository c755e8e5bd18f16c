"""The one trainer of the zoo's torch families, on Hugging Face Accelerate: one code path for
CPU, one GPU, multi-GPU or multi-process CPU data parallelism (DDP) and mixed precision.

It trains any :class:`~mindzoo.models.trainable.TrainableModel` (fMRI decoders, Du-IN stages,
the braindecode baselines) on any dataset view with ``sizes``, ``len()`` and
``batch(indices, augment=...)`` (:class:`~mindzoo.datasets.views.FMRIDataset`,
:class:`~mindzoo.datasets.ephys_views.EphysDataset`). Usage (single process; the same code
under ``torchrun --nproc_per_node N``)::

    trainer = Trainer(TrainerConfig(epochs=20))
    seed_everything(0)                       # before building the model: identical init
    model = create_model("mindeye-mlp", config, n_voxels=..., target_shapes=...)
    model.target_scaler.fit(splits["train"].target_statistics())
    state = trainer.fit(model, splits["train"], splits["val"], checkpoint_dir=run / "checkpoints")

What one ``fit`` does, per stage of ``model.stages()``: ``model.start_stage(...)``; AdamW over
the parameters left trainable (the family's ``optimizer_groups`` and ``adam_betas``: Du-IN keeps
its published betas); a learning-rate schedule over the stage's steps (linear warm-up then cosine
decay, one-cycle, or constant); epochs of subject-homogeneous batches
(:class:`~mindzoo.datasets.views.SubjectBatchSampler`, augmented where the view augments) through
``model.training_step``; the validation loss (and the model's other logs) after every epoch;
early stopping when it has not improved for ``patience`` epochs; at the end of the stage the
best-validation weights are restored. Checkpoints (see :mod:`mindzoo.training.checkpoint`) are
written at the end of every epoch and every ``checkpoint_every_steps`` steps; ``resume=True``
continues from the newest one and ends with the same weights as an uninterrupted run (the batch
order is a function of (seed, stage, epoch), and optimizer, scheduler and RNG states are saved).

Data parallelism: ``batch_size`` is the global batch; each process takes its share of every
batch, DDP averages the gradients, so N processes follow the single-process loss curve (exactly
for losses that are means over samples; batch-wise terms such as SoftCLIP see smaller batches).
Launch CPU DDP with ``torchrun --nproc_per_node 2 -m mindzoo train ...`` (``accelerate launch``
needs ``mpirun`` for multi-process CPU); GPUs with ``accelerate launch --multi_gpu``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from mindzoo.datasets.views import SubjectBatchSampler
from mindzoo.errors import UserInputError
from mindzoo.models.loading import load_weights
from mindzoo.models.trainable import Stage, TrainableModel
from mindzoo.training import checkpoint as ckpt


class TrainerConfig(BaseModel):
    """Optimisation settings shared by all torch families."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(30, ge=1, description="Epochs per stage (unless the stage sets its own).")
    batch_size: int = Field(64, ge=1, description="Global batch size (all processes together).")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate of AdamW.")
    weight_decay: float = Field(1e-2, ge=0, description="AdamW decoupled weight decay.")
    schedule: Literal["cosine", "one-cycle", "constant"] = Field(
        "one-cycle", description="Learning-rate schedule over the steps of a stage."
    )
    warmup_fraction: float = Field(
        0.1, ge=0, lt=1, description="Fraction of a stage's steps spent warming up."
    )
    grad_clip: float | None = Field(1.0, gt=0, description="Max gradient norm (None: no clip).")
    patience: int | None = Field(
        5, ge=1, description="Stop a stage after this many epochs without validation gain."
    )
    min_delta: float = Field(0.0, ge=0, description="Smallest validation-loss drop that counts.")
    mixed_precision: Literal["no", "bf16", "fp16"] = Field(
        "no", description="Autocast precision (fp16 needs a GPU)."
    )
    device: Literal["auto", "cpu"] = Field("auto", description="'cpu' ignores available GPUs.")
    seed: int = Field(0, description="Seeds initialisation, batch order and dropout.")
    checkpoint_every_steps: int | None = Field(
        None, ge=1, description="Also checkpoint every N steps (always at each epoch end)."
    )
    keep_checkpoints: int = Field(1, ge=1, description="How many checkpoints to keep.")


@dataclass(frozen=True)
class StepInfo:
    """What a step callback sees after each optimiser step (on every process)."""

    stage: str
    epoch: int
    global_step: int
    loss: float
    logs: dict[str, float]


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) generators."""
    set_seed(seed)


def _val_text(val_loss: float | None) -> str:
    """The progress bar's validation loss: ``n/a`` when there is no validation split."""
    return "n/a" if val_loss is None else f"{val_loss:.4f}"


def make_accelerator(config: TrainerConfig) -> Accelerator:
    """An Accelerator for ``config``; CPU when asked or when no GPU is present.

    Decoders have per-subject layers that a subject-homogeneous batch leaves unused, so DDP runs
    with ``find_unused_parameters``. Within one process a new precision resets Accelerate's
    global state (a notebook may train an fp32 model, then a bf16 one).
    """
    cpu = config.device == "cpu" or not torch.cuda.is_available()
    if cpu and config.mixed_precision == "fp16":
        raise UserInputError(
            "trainer.mixed_precision=fp16 needs a GPU; use bf16 on CPU (--set trainer.mixed_precision=bf16)"
        )
    kwargs = {
        "cpu": cpu,
        "mixed_precision": config.mixed_precision,
        "kwargs_handlers": [DistributedDataParallelKwargs(find_unused_parameters=True)],
    }
    try:
        return Accelerator(**kwargs)
    except ValueError:  # already initialised in this process with another precision
        AcceleratorState._reset_state()
        return Accelerator(**kwargs)


def lr_multiplier(schedule: str, step: int, total: int, warmup: int) -> float:
    """Learning rate at ``step`` (0-based) of ``total`` as a fraction of the peak.

    ``cosine``: linear warm-up to 1, cosine decay to 0. ``one-cycle`` (torch's OneCycleLR with
    cosine annealing): from 1/25 up to 1 during warm-up, down to 1/25000 at the end.
    ``constant``: linear warm-up, then 1.
    """
    start, end = (1 / 25, 1 / 25_000) if schedule == "one-cycle" else (0.0, 0.0)
    if step < warmup:
        frac = (step + 1) / warmup
        if schedule == "one-cycle":
            return end_cos(start, 1.0, frac)
        return frac
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return end_cos(1.0, end, progress)


def end_cos(begin: float, end: float, progress: float) -> float:
    """Cosine interpolation from ``begin`` (progress 0) to ``end`` (progress 1)."""
    return end + (begin - end) * 0.5 * (1 + math.cos(math.pi * progress))


class Trainer:
    """Trains a :class:`~mindzoo.models.trainable.TrainableModel` on a dataset view."""

    def __init__(self, config: TrainerConfig, accelerator: Accelerator | None = None) -> None:
        self.config = config
        self.accelerator = accelerator or make_accelerator(config)

    # ------------------------------------------------------------------ helpers
    def _sampler(self, dataset: Any, shuffle: bool, stage_index: int) -> SubjectBatchSampler:
        acc = self.accelerator
        return SubjectBatchSampler(
            dataset.sizes,
            self.config.batch_size,
            shuffle=shuffle,
            # stage-specific order; shuffle seeds differ from the init/dropout seed stream
            seed=self.config.seed * 1000 + stage_index,
            rank=acc.process_index,
            world_size=acc.num_processes,
        )

    def _reduce_sum(self, *values: float) -> list[float]:
        tensor = torch.tensor(values, dtype=torch.float64, device=self.accelerator.device)
        return self.accelerator.reduce(tensor, "sum").tolist()

    @torch.no_grad()
    def validate(self, model: TrainableModel, dataset: Any) -> dict[str, float] | None:
        """Trial-weighted means of the loss and the model's logs over ``dataset`` (all processes
        together), in eval mode; None when it is empty."""
        if len(dataset) == 0:
            return None
        was_training = model.training
        model.eval()
        sums: dict[str, float] = {"loss": 0.0}
        count = 0
        for indices in self._sampler(dataset, shuffle=False, stage_index=0):
            batch = dataset.batch(indices).to(self.accelerator.device)
            with self.accelerator.autocast():
                loss, logs = model.training_step(batch)
            sums["loss"] += float(loss) * len(batch)
            for key, value in logs.items():
                if key != "loss":
                    sums[key] = sums.get(key, 0.0) + value * len(batch)
            count += len(batch)
        model.train(was_training)
        *totals, count = self._reduce_sum(*sums.values(), count)
        return {key: total / count for key, total in zip(sums, totals, strict=True)}

    # --------------------------------------------------------------------- fit
    def fit(
        self,
        model: TrainableModel,
        train: Any,
        val: Any = None,
        *,
        checkpoint_dir: Path | None = None,
        resume: bool = False,
        run_config: dict[str, Any] | None = None,
        stages: Sequence[Stage] | None = None,
        callbacks: Sequence[Callable[[StepInfo], None]] = (),
        progress: bool = True,
    ) -> ckpt.TrainerState:
        """Train ``model`` in place through its stages; returns the final trainer state.

        ``checkpoint_dir`` receives checkpoints (none when None); ``run_config`` is saved with
        them as ``config.json``. ``resume`` continues from the newest checkpoint there (a fresh
        start when there is none). ``stages`` overrides ``model.stages()`` (adaptation uses this).
        """
        acc = self.accelerator
        stages = list(stages or model.stages())
        model.to(acc.device)
        state = ckpt.TrainerState()
        latest = ckpt.latest_checkpoint(checkpoint_dir) if (resume and checkpoint_dir) else None
        best: dict[str, torch.Tensor] | None = None
        if latest is not None:
            state = ckpt.read_state(latest)
            load_weights(latest / "model.safetensors", model)
            best = ckpt.read_best(latest)
            ckpt.load_rng(latest, acc.process_index)
        else:
            seed_everything(self.config.seed + 1)  # dropout stream independent of the init
        while state.stage < len(stages):
            best = self._run_stage(
                model,
                stages,
                train,
                val,
                state,
                best,
                latest,
                checkpoint_dir,
                run_config or {},
                callbacks,
                progress,
            )
            latest = None  # only the first stage after a resume continues a checkpoint
        return state

    def _run_stage(
        self,
        model: TrainableModel,
        stages: list[Stage],
        train: Any,
        val: Any,
        state: ckpt.TrainerState,
        best: dict[str, torch.Tensor] | None,
        latest: Path | None,
        checkpoint_dir: Path | None,
        run_config: dict[str, Any],
        callbacks: Sequence[Callable[[StepInfo], None]],
        progress: bool,
    ) -> dict[str, torch.Tensor] | None:
        """Train stage ``state.stage`` from where ``state`` says; returns the best weights."""
        acc, cfg = self.accelerator, self.config
        stage = stages[state.stage]
        mid_stage = latest is not None and (state.epoch > 0 or state.step_in_epoch > 0)
        model.start_stage(stage, train, resuming=mid_stage)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise UserInputError(f"Stage {stage.name!r} leaves no trainable parameters")
        epochs = stage.epochs or cfg.epochs
        sampler = self._sampler(train, shuffle=True, stage_index=state.stage)
        if len(sampler) == 0:
            raise UserInputError(
                f"No training batch: {len(train)} trials with trainer.batch_size={cfg.batch_size} "
                "(batches are per subject); lower trainer.batch_size"
            )
        total = epochs * len(sampler)
        warmup = int(cfg.warmup_fraction * total)
        optimizer = torch.optim.AdamW(
            model.optimizer_groups(params),
            lr=cfg.lr,
            betas=model.adam_betas,
            weight_decay=cfg.weight_decay,
        )
        for group in optimizer.param_groups:  # a family's per-group scale (FEMBA's layer decay)
            group["lr"] = cfg.lr * group.get("lr_scale", 1.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_multiplier(cfg.schedule, step, total, warmup)
        )
        if mid_stage:
            ckpt.load_optimizer(latest, optimizer, scheduler)
        # Accelerate wraps the model for DDP and autocast and the optimizer for loss scaling;
        # the scheduler is stepped by hand once per global step, whatever the process count.
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
                    run_config,
                    cfg.keep_checkpoints,
                    acc.process_index,
                    acc.wait_for_everyone,
                )

        finished = state.epoch >= epochs
        while not finished:
            sampler.set_epoch(state.epoch)
            # a resumed epoch starts from the running sums saved with the checkpoint (on rank 0)
            loss_sum = state.epoch_loss_sum if acc.is_main_process else 0.0
            n_local = state.epoch_samples if acc.is_main_process else 0
            start = time.perf_counter()
            bar = tqdm(
                total=len(sampler),
                initial=state.step_in_epoch,
                desc=f"{stage.name} {state.epoch + 1}/{epochs}",
                disable=not (progress and acc.is_local_main_process),
                leave=True,
            )
            for index, indices in enumerate(sampler):
                if index < state.step_in_epoch:
                    continue
                batch = train.batch(indices, augment=True).to(acc.device)
                with acc.autocast():
                    loss, logs = model.training_step(batch, wrapped)
                acc.backward(loss)
                if cfg.grad_clip is not None:
                    acc.clip_grad_norm_(params, cfg.grad_clip)
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
                for callback in callbacks:
                    callback(StepInfo(stage.name, state.epoch, state.global_step, value, logs))
                every = cfg.checkpoint_every_steps
                if every and state.global_step % every == 0 and index + 1 < len(sampler):
                    state.train_seconds += time.perf_counter() - start
                    start = time.perf_counter()
                    running, seen = self._reduce_sum(loss_sum, n_local)
                    state.epoch_loss_sum, state.epoch_samples = running, int(seen)
                    save()
            state.train_seconds += time.perf_counter() - start
            total_loss, n_total = self._reduce_sum(loss_sum, n_local)
            state.epoch_loss_sum, state.epoch_samples = 0.0, 0
            state.samples_seen += int(n_total)
            val_logs = self.validate(model, val) if val is not None else None
            val_loss = val_logs["loss"] if val_logs else None
            bar.set_postfix(train=f"{total_loss / max(n_total, 1):.4f}", val=_val_text(val_loss))
            bar.close()
            improved = val_loss is not None and (
                state.best_val_loss is None or val_loss < state.best_val_loss - cfg.min_delta
            )
            if improved:
                state.best_val_loss, state.bad_epochs = val_loss, 0
                best = ckpt.weights(model)
            elif val_loss is not None:
                state.bad_epochs += 1
            stopped_early = cfg.patience is not None and state.bad_epochs >= cfg.patience
            state.history.append(
                {
                    "stage": stage.name,
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
            finished = stopped_early or state.epoch >= epochs
            if finished:
                self._finish_stage(model, state, best)
                best = None
            save()
        acc.unwrap_model(wrapped, keep_fp32_wrapper=False)
        acc.free_memory()
        return best

    @staticmethod
    def _finish_stage(
        model: TrainableModel, state: ckpt.TrainerState, best: dict[str, torch.Tensor] | None
    ) -> None:
        """Restore the stage's best-validation weights and move on to the next stage."""
        if best is not None:
            model.load_state_dict(best)
        state.stage += 1
        state.epoch = 0
        state.best_val_loss = None
        state.bad_epochs = 0
