"""Checkpoints of torch models: what is saved, how it is reloaded, nothing unpickled.

A checkpoint directory (``RUN/checkpoints/step-00000120/``)::

    model.safetensors      the current weights (buffers included: target scaler, fitted clusters)
    best.safetensors       the best-validation weights of the current stage (when there are any)
    config.json            the run config: model name, settings, build spec (voxels per subject,
                           target shapes), store; enough to rebuild the model without the store
    optimizer.pt           {"optimizer": ..., "scheduler": ...} state dicts: tensors and plain
                           numbers only, loaded with ``torch.load(weights_only=True)``
    optimizer.sha256       its sha256, compared before it is loaded (the safetensors files carry
                           their own checksum: :mod:`mindzoo.tensorfile`)
    rng-rank<R>.safetensors  each process's torch (and CUDA) generator state
    metrics.json           the loss history so far (per epoch: train and validation loss, lr)
    trainer_state.json     stage, epoch, batch within the epoch, global step, early-stopping state,
                           loss history; written last, so its presence marks a complete checkpoint

Checkpoints are built in a hidden sibling and renamed into place, then older ones beyond
``keep`` are removed: a kill at any moment leaves the previous complete checkpoint.
A finished run directory has the same ``model.safetensors`` + ``config.json`` pair, so
:func:`mindzoo.models.load_model` reads a run directory and a checkpoint directory alike.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mindzoo.atomic import (
    TEMP_PREFIX,
    disk_errno,
    reclaim_stale,
    sha256_file,
    temp_name,
    write_text,
)
from mindzoo.errors import DamagedFileError, UserInputError
from mindzoo.runconfig import read_json_object
from mindzoo.tensorfile import load_state, save_state

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
OPTIMIZER_SUM = "optimizer.sha256"  # its sha256 (hex), checked before it is read
_PREFIX = "step-"


@dataclass
class TrainerState:
    """Where training stands; ``step_in_epoch`` batches of ``epoch`` are done."""

    stage: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_val_loss: float | None = None
    bad_epochs: int = 0
    samples_seen: int = 0
    epoch_loss_sum: float = 0.0  # running sums of the unfinished epoch, all processes together
    epoch_samples: int = 0
    train_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


def training_summary(state: TrainerState) -> dict[str, Any]:
    """What a run's ``metrics.json`` says about its training: steps, epochs, samples/s (training
    loop time, validation excluded), the best validation loss and the per-epoch history."""
    return {
        "global_steps": state.global_step,
        "epochs": len(state.history),
        "samples_seen": state.samples_seen,
        "train_seconds": round(state.train_seconds, 3),
        "samples_per_second": round(state.samples_seen / max(state.train_seconds, 1e-9), 1),
        "best_val_loss": min(
            (h["val_loss"] for h in state.history if h["val_loss"] is not None), default=None
        ),
        "history": state.history,
    }


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    write_text(path, json.dumps(payload, indent=2))


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the model's state dict (parameters and buffers)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def save_weights(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Write a state dict as safetensors with its checksum, atomically, with the mode the umask
    gives (:func:`mindzoo.tensorfile.save_state`)."""
    save_state(state, path)  # (it reclaims stale temporaries beside path first)


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint under ``root`` (a run's ``checkpoints/``), or None."""
    if not root.is_dir():
        return None
    complete = [
        p for p in root.iterdir() if p.name.startswith(_PREFIX) and (p / STATE_FILE).is_file()
    ]
    return max(complete, key=lambda p: int(p.name[len(_PREFIX) :]), default=None)


def save_checkpoint(
    root: Path,
    state: TrainerState,
    model: nn.Module,
    best: dict[str, torch.Tensor] | None,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    run_config: dict[str, Any],
    keep: int,
    rank: int = 0,
    barrier: Any = None,
) -> Path:
    """Write one checkpoint of all processes; returns its directory.

    Every process calls this; ``barrier`` (``accelerator.wait_for_everyone``) orders them:
    rank 0 makes the directory, every rank writes its RNG state, rank 0 writes the rest,
    renames the directory into place and prunes old checkpoints. When a write fails, rank 0
    removes the half-written directory, and a full disk is raised as an ``OSError`` naming
    ``root`` (:func:`_full_disk`).
    """
    barrier = barrier or (lambda: None)
    name = f"{_PREFIX}{state.global_step:08d}"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        reclaim_stale(root)  # checkpoints a killed run left half-written
        tmp = root / temp_name(name)
        tmp.mkdir()
    try:
        barrier()
        if rank != 0:
            tmp = _checkpoint_temp(root, name)
        save_weights(tmp / f"rng-rank{rank}.safetensors", _rng_state())
        if rank == 0:
            save_weights(tmp / "model.safetensors", weights(model))
            if best is not None:
                save_weights(tmp / "best.safetensors", best)
            torch.save(
                {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
                tmp / OPTIMIZER_FILE,
            )
            (tmp / OPTIMIZER_SUM).write_text(sha256_file(tmp / OPTIMIZER_FILE) + "\n")
            write_json(tmp / "config.json", run_config)
            write_json(
                tmp / "metrics.json",
                {
                    "global_step": state.global_step,
                    "best_val_loss": state.best_val_loss,
                    "history": state.history,
                },
            )
        barrier()
        if rank == 0:
            write_json(tmp / STATE_FILE, asdict(state))
            final = root / name
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            older = sorted(
                (p for p in root.iterdir() if p.name.startswith(_PREFIX) and p != final),
                key=lambda p: int(p.name[len(_PREFIX) :]),
            )
            for stale in older[: max(0, len(older) - (keep - 1))]:
                shutil.rmtree(stale, ignore_errors=True)
        barrier()
    except Exception as exc:  # no half-written checkpoint stays behind
        full = _full_disk(root, exc)  # (before the removal frees the space it measures)
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        if full is not None:
            raise full from exc
        raise
    return root / name


FULL_DISK_BYTES = 64 * 1024  # less free space than this after a failed write: the disk is full


def _full_disk(root: Path, exc: BaseException) -> OSError | None:
    """``exc`` as an ``OSError`` (ENOSPC) naming ``root`` when it is a full disk that torch did
    not report as one: ``torch.save`` says only ``RuntimeError`` (``file write failed``,
    ``unexpected pos``), so such a failure on a file system left with almost no free space
    counts as one. None otherwise (an ``OSError`` with its errno speaks for itself)."""
    if disk_errno(exc) is not None or not isinstance(exc, RuntimeError):
        return None
    try:
        if shutil.disk_usage(root).free < FULL_DISK_BYTES:
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(root))
    except OSError:
        pass
    return None


def _checkpoint_temp(root: Path, name: str) -> Path:
    """The temporary directory rank 0 made for checkpoint ``name`` (named after rank 0's
    process, so other ranks find it: rank 0 reclaimed the stale ones of dead processes)."""
    made = [p for p in root.glob(f"{TEMP_PREFIX}{name}-*") if p.is_dir()]
    if not made:
        raise RuntimeError(f"rank 0 made no temporary checkpoint {name} under {root}")
    return max(made, key=lambda p: p.stat().st_mtime)


def read_state(checkpoint: Path) -> TrainerState:
    """The trainer state saved in ``checkpoint`` (a damaged file: one line naming it)."""
    path = checkpoint / STATE_FILE
    fix = f"remove {checkpoint} to resume from the checkpoint before it"
    fields = read_json_object(path, "trainer state", fix)
    try:
        return TrainerState(**fields)
    except TypeError:
        known = sorted(TrainerState.__dataclass_fields__)
        raise UserInputError(
            f"{path} does not hold a trainer state (keys {sorted(fields)}, expected {known}); {fix}"
        ) from None


def read_best(checkpoint: Path) -> dict[str, torch.Tensor] | None:
    """The best-validation weights saved in ``checkpoint``, if any."""
    path = checkpoint / "best.safetensors"
    return load_state(path) if path.is_file() else None


def load_optimizer(
    checkpoint: Path,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> None:
    """Restore optimizer and scheduler state (tensors and numbers only, no code is unpickled)."""
    path = checkpoint / OPTIMIZER_FILE
    expected = checkpoint / OPTIMIZER_SUM
    if expected.is_file() and expected.read_text().strip() != sha256_file(path):
        raise DamagedFileError(
            f"{path} does not match {expected.name} (damaged); resume from an earlier checkpoint "
            "(delete this one) or start afresh"
        )
    try:
        with warnings.catch_warnings():  # torch's note on a foreign pickle protocol: refused below
            warnings.simplefilter("ignore", UserWarning)
            saved = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise DamagedFileError(
            f"{path} is not a plain tensor file ({type(exc).__name__}; refused, nothing in it was "
            "run); resume from an earlier checkpoint (delete this one) or start afresh"
        ) from None
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])


def load_rng(checkpoint: Path, rank: int) -> None:
    """Restore this process's generator states (dropout continues exactly where it stopped)."""
    path = checkpoint / f"rng-rank{rank}.safetensors"
    if not path.is_file():
        raise UserInputError(
            f"{path} is missing: the checkpoint was written by fewer processes; resume with the "
            "same number of processes"
        )
    state = load_state(path)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def _rng_state() -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return state
