"""Run directories of `train`: refuse to clobber one, check a resume, and clean up a failed start.

Every kind of run (estimators, torch decoders, ephys models) writes ``config.json`` with the same
common keys (:func:`describe_run`); torch runs write into the run directory as they train, so a
killed run can be resumed, and ``metrics.json`` appears last to mark a finished run.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from mindzoo.datasets.store import TensorStore
from mindzoo.errors import UserInputError
from mindzoo.training import checkpoint as ckpt
from mindzoo.training.trainer import Trainer, TrainerConfig

if TYPE_CHECKING:
    from accelerate import Accelerator


def describe_run(
    name: str, settings: BaseModel, store: TensorStore, chosen: list[str], **extra: Any
) -> dict[str, Any]:
    """The common keys of a run's config.json (model, settings, store, subjects) plus ``extra``
    (torch runs: ``build``, what rebuilds the model without the store)."""
    return {
        "model": name,
        "settings": settings.model_dump(mode="json"),
        "store": str(store.path.resolve()),
        "store_config_hash": store.manifest["config_hash"],
        "dataset": store.dataset,
        "subjects": chosen,
        **extra,
    }


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
        path = out / "config.json"  # a resume leaves an equal config untouched
        if not path.is_file() or json.loads(path.read_text()) != json.loads(json.dumps(run_config)):
            ckpt.write_json(path, run_config)
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


def fit_in_run_dir(
    out: Path,
    config: dict[str, Any],
    model: Any,
    splits: dict[str, Any],
    trainer_config: TrainerConfig,
    accelerator: Accelerator,
    resume: bool,
    progress: bool,
) -> ckpt.TrainerState:
    """Train ``model`` on ``splits["train"]`` (validating on ``splits["val"]``) with checkpoints in
    ``out/checkpoints``, inside :func:`run_dir_for_training`; returns the final trainer state."""
    with run_dir_for_training(out, config, accelerator):
        return Trainer(trainer_config, accelerator).fit(
            model,
            splits["train"],
            splits["val"],
            checkpoint_dir=out / "checkpoints",
            resume=resume,
            run_config=config,
            progress=progress,
        )
