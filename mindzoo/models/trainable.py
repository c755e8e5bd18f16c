"""The small interface every torch family of the zoo offers to the one trainer.

:class:`mindzoo.training.trainer.Trainer` trains any :class:`TrainableModel` on any dataset view
with ``sizes`` (trials per subject), ``len()`` and ``batch(indices, augment=...)`` (subject-
homogeneous batches). A family implements :meth:`TrainableModel.training_step` and may override
the hooks below; fMRI decoders get theirs from :class:`mindzoo.models.base.FMRIDecoder`, ephys
models from :class:`EphysModel`.

Stage chaining (``--set init=RUN``): a family whose runs start from an earlier run's weights
(Du-IN's masked model from its tokenizer, its classifier from either) describes how in a
:class:`StageInit`, named by its registry entry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from mindzoo.tensorfile import load_state


@dataclass(frozen=True)
class Stage:
    """One training stage: a name the model's hooks understand and its epoch count.

    ``epochs=None`` means the trainer's ``epochs`` setting.
    """

    name: str
    epochs: int | None = None


class TrainableModel(nn.Module):
    """Base of the zoo's torch families: what the trainer calls, with single-stage defaults."""

    adam_betas: ClassVar[tuple[float, float]] = (0.9, 0.999)
    """AdamW betas of this family (torch's defaults unless its paper used others)."""

    def training_step(
        self, batch: Any, forward: Callable[..., Any] | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss of ``batch`` and its named parts (floats, for logs and ``metrics.json``).

        ``forward`` is the module to call (the trainer passes its data-parallel wrapper, so
        gradients synchronise); ``None`` means ``self``. Validation calls it too, in eval mode.
        """
        raise NotImplementedError

    def stages(self) -> list[Stage]:
        """Training stages in order; the default is a single stage."""
        return [Stage("main")]

    def start_stage(self, stage: Stage, train: Any, resuming: bool) -> None:
        """Prepare ``stage`` (fits, ``requires_grad``); the default trains what is trainable."""

    def optimizer_groups(self, params: Sequence[nn.Parameter]) -> list[dict[str, Any]]:
        """AdamW parameter groups over the trainable ``params``; the default is one group."""
        return [{"params": list(params)}]


class EphysModel(TrainableModel):
    """Base of ephys families: ``forward(x [B, channel, time], subject, y) -> dict`` with a
    scalar ``"loss"`` (when ``y`` or the model's own targets allow), scalar logs and, for
    classifiers, ``"logits"``. ``kind`` is ``ephys-classifier`` or ``ephys-pretrain``."""

    kind: ClassVar[str]
    adam_betas = (0.9, 0.99)  # Du-IN's; the braindecode baselines use them too, so loops match

    def training_step(
        self, batch: Any, forward: Callable[..., Any] | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        outputs = (forward or self)(batch.x, batch.subject, batch.y)
        logs = {k: float(v) for k, v in outputs.items() if k != "logits" and v.ndim == 0}
        return outputs["loss"], logs


@dataclass(frozen=True)
class InitRun:
    """A finished earlier run that a stage starts from (its directory and ``config.json``)."""

    path: Path
    config: dict[str, Any]

    def weights(self) -> dict[str, torch.Tensor]:
        return load_state(self.path / "model.safetensors")


@dataclass(frozen=True)
class StageInit:
    """How a family's run starts from an earlier run.

    ``init_from`` lists the model names whose runs may initialise it (``required``: it cannot
    start without one); ``prepare(settings, init)`` returns (model settings, build extras)
    adjusted to the init run, before the model is built (extras are extra factory arguments,
    saved in the run's ``config.json`` so the run rebuilds without the init run);
    ``apply(model, init)`` copies the init run's weights into the fresh model.
    """

    init_from: tuple[str, ...]
    required: bool = False
    prepare: Callable[[dict[str, Any], InitRun], tuple[dict[str, Any], dict[str, Any]]] | None = (
        None
    )
    apply: Callable[[nn.Module, InitRun], None] | None = None


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (a Du-IN masked model's frozen tokenizer is not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
