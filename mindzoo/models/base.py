"""The interface every torch fMRI decoder of the zoo follows (timm / diffusers style).

A decoder maps one subject's voxels to predicted image features. Subjects differ in voxel count,
so a decoder is built from three things and nothing else::

    model = MyDecoder(
        config,                                # a pydantic DecoderConfig subclass (data, no code)
        n_voxels={"sub-01": 1397, "sub-02": 1105},
        target_shapes={"global": (1280,), "spatial": (49, 320)},
    )
    outputs = model(voxels, "sub-01")          # voxels [B, V_sub-01] -> {"global": [B, 1280], ...}
    loss, logs = model.loss(outputs, model.target_scaler.transform(targets))
    features = model.predict(voxels, "sub-01")  # the same, in feature units (no gradient)

What a family implements (see :mod:`mindzoo.models.mindeye_mlp` for a complete example):

- ``config_cls``: its pydantic config class (extra keys forbidden, every field documented).
- ``__init__(config, n_voxels, target_shapes)``: call ``super().__init__`` first; build
  per-subject modules for every subject in ``n_voxels`` and one head per target name.
- ``forward(voxels, subject) -> dict[str, Tensor]``: one entry per target, shaped
  ``[B, *target_shapes[name]]``, in *standardised* target units (see :class:`TargetScaler`:
  each target element has zero mean and unit variance over the training stimuli).
- ``loss(outputs, targets) -> (scalar, logs)``: ``targets`` are standardised too; ``logs`` maps
  names to floats (the parts of the loss) for progress bars and ``metrics.json``.

Optional hooks, with defaults that suit a single-stage model:

- ``stages()`` lists the training stages in order (default: one stage, ``"main"``). Brain-IT
  style models train voxel embeddings first, fit clusters on them, then train the transformer.
- ``start_stage(stage, train, resuming)`` runs before each stage: fit whatever is not learnt by
  gradient (e.g. a Gaussian mixture over voxel embeddings, using the ``train`` dataset) and set
  ``requires_grad`` on the parameters this stage trains; the trainer optimises exactly the
  parameters left with ``requires_grad=True``. Results of such fits must live in buffers of fixed
  shape, so that they are saved in checkpoints; on ``resuming=True`` the checkpoint's weights are
  already loaded and the hook must not refit, only set ``requires_grad``.
- ``adaptation_strategy()`` returns the family's :class:`AdaptationStrategy` for a new subject.
- ``build_spec()``: the JSON-able shapes the model was built from (saved in ``config.json`` so a
  checkpoint can be rebuilt without the store).

A family is entered in the zoo by one line in :data:`mindzoo.models.registry.MODELS`;
:func:`mindzoo.models.create_model` builds it (``create_model(name)``: for one NSD-sized reference
subject, what ``braindecode-cli models`` counts parameters for) and ``braindecode-cli train``
trains it with :class:`mindzoo.training.trainer.Trainer`, through :meth:`FMRIDecoder.training_step`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from mindzoo.errors import UserInputError
from mindzoo.models.trainable import Stage, TrainableModel

if TYPE_CHECKING:
    from mindzoo.datasets.views import FMRIDataset

# What `create_model(name)` builds a decoder for: one subject with NSD subj01's nsdgeneral voxel
# count and the efficientnet-lite0 global target, so `braindecode-cli models` can count parameters.
REFERENCE_N_VOXELS = {"sub-01": 15724}
REFERENCE_TARGET_SHAPES = {"global": (1280,)}
REFERENCE_SHAPES = {"n_voxels": REFERENCE_N_VOXELS, "target_shapes": REFERENCE_TARGET_SHAPES}


class DecoderConfig(BaseModel):
    """Base of every torch decoder config: pure data, unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class TargetScaler(nn.Module):
    """Per-element standardisation of each target with training statistics, kept as buffers.

    Decoders predict standardised targets, so that MSE weighs every feature equally instead of
    being dominated by the few features with large variance; :meth:`inverse` maps predictions
    back to feature units. Buffers ``<name>_mean`` and ``<name>_std`` have the target's shape and
    start as 0 and 1 (identity) until :meth:`fit` is called.
    """

    def __init__(self, target_shapes: Mapping[str, Sequence[int]]) -> None:
        super().__init__()
        self.names = list(target_shapes)
        for name, shape in target_shapes.items():
            self.register_buffer(f"{name}_mean", torch.zeros(tuple(shape)))
            self.register_buffer(f"{name}_std", torch.ones(tuple(shape)))

    def fit(self, statistics: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> None:
        """Set ``{name: (mean, std)}``; std values below 1e-6 become 1 (constant features)."""
        for name, (mean, std) in statistics.items():
            std = np.where(np.asarray(std) > 1e-6, std, 1.0)
            getattr(self, f"{name}_mean").copy_(torch.as_tensor(np.asarray(mean)))
            getattr(self, f"{name}_std").copy_(torch.as_tensor(std))

    def transform(self, targets: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Feature units -> standardised units, for every target in ``targets``."""
        return {
            k: (v - getattr(self, f"{k}_mean")) / getattr(self, f"{k}_std")
            for k, v in targets.items()
        }

    def inverse(self, outputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Standardised units -> feature units."""
        return {
            k: v * getattr(self, f"{k}_std") + getattr(self, f"{k}_mean")
            for k, v in outputs.items()
        }


class FMRIDecoder(TrainableModel, ABC):
    """Base class of the zoo's torch fMRI decoders; the module docstring is the contract."""

    config_cls: ClassVar[type[DecoderConfig]]

    def __init__(
        self,
        config: DecoderConfig,
        n_voxels: Mapping[str, int],
        target_shapes: Mapping[str, Sequence[int]],
    ) -> None:
        super().__init__()
        if not n_voxels:
            raise UserInputError("A decoder needs at least one subject; n_voxels is empty")
        if not target_shapes:
            raise UserInputError("A decoder needs at least one target; target_shapes is empty")
        self.config = config
        self.n_voxels = {str(s): int(v) for s, v in n_voxels.items()}
        self.target_shapes = {str(k): tuple(int(d) for d in v) for k, v in target_shapes.items()}
        self.target_scaler = TargetScaler(self.target_shapes)

    @property
    def subjects(self) -> list[str]:
        return list(self.n_voxels)

    @abstractmethod
    def forward(self, voxels: torch.Tensor, subject: str) -> dict[str, torch.Tensor]:
        """``voxels [B, n_voxels[subject]]`` -> ``{target: [B, *shape]}`` (standardised units)."""

    @abstractmethod
    def loss(
        self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar training loss and its named parts; both arguments in standardised units."""

    @torch.no_grad()
    def predict(self, voxels: torch.Tensor, subject: str) -> dict[str, torch.Tensor]:
        """Predicted features in feature units. Call ``model.eval()`` first for inference."""
        return self.target_scaler.inverse(self(voxels, subject))

    def training_step(
        self, batch: Any, forward: Callable[..., Any] | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of a :class:`~mindzoo.datasets.views.Batch` of one subject, in standardised
        target units (what the trainer minimises and validates)."""
        outputs = (forward or self)(batch.voxels, batch.subject)
        return self.loss(outputs, self.target_scaler.transform(batch.targets))

    def set_voxel_rois(self, rois: Mapping[str, np.ndarray]) -> None:
        """Record each subject's voxel ROI names (str ``[V]``) before training; families that
        use them (brain-it: matching a new subject's voxels) keep them, the default ignores them.
        """

    def adaptation_strategy(self) -> AdaptationStrategy:
        """The family's new-subject strategy; families without one refuse clearly."""
        raise UserInputError(f"{type(self).__name__} has no new-subject adaptation strategy")

    def build_spec(self) -> dict[str, Any]:
        """Shapes the model was built from: ``FamilyClass(config, **build_spec())`` rebuilds it."""
        return {
            "n_voxels": dict(self.n_voxels),
            "target_shapes": {k: list(v) for k, v in self.target_shapes.items()},
        }

    def check_input(self, voxels: torch.Tensor, subject: str) -> None:
        """Refuse an unknown subject or a voxel count that is not that subject's."""
        if subject not in self.n_voxels:
            raise UserInputError(
                f"Subject {subject!r} is not in this model (has {', '.join(self.subjects)}); "
                "adapt the model to a new subject with `braindecode-cli adapt`"
            )
        if voxels.ndim != 2 or voxels.shape[1] != self.n_voxels[subject]:
            raise UserInputError(
                f"Expected voxels [B, {self.n_voxels[subject]}] for {subject}, got "
                f"{tuple(voxels.shape)}; pass the subject's voxels from the store it was trained on"
            )


@dataclass
class AdaptationContext:
    """What a strategy knows about the new subject.

    ``train`` holds only the trials chosen for adaptation (never the subject's test stimuli);
    ``voxel_meta`` holds the store's per-voxel arrays (fMRI: ``ijk``, ``xyz``, ``roi``) and
    ``rois`` each voxel's ROI name (None when the store has no ROI labels).
    """

    subject: str
    n_voxels: int
    train: FMRIDataset
    voxel_meta: dict[str, np.ndarray]
    rois: np.ndarray | None = None


class AdaptationStrategy(ABC):
    """How a family takes on a new subject from few trials (one object per family).

    ``prepare`` adds the subject's modules to the model and leaves ``requires_grad=True`` on
    exactly the parameters adaptation trains; the trainer then runs :meth:`stages` on the new
    subject's trials (plus the source subjects' trials when ``mixes_source_data``).
    """

    name: ClassVar[str]
    mixes_source_data: ClassVar[bool] = False
    trainer_defaults: ClassVar[dict[str, Any]] = {}
    """The family's own `adapt` trainer defaults (before ``--set``), e.g. a shorter schedule."""

    @abstractmethod
    def prepare(self, model: FMRIDecoder, context: AdaptationContext) -> None:
        """Add the new subject to ``model`` and freeze what adaptation must not change."""

    def stages(self, model: FMRIDecoder) -> list[Stage]:
        """Stages of adaptation training; the default is one stage named ``"adapt"``."""
        return [Stage("adapt")]


def freeze_all_but(model: nn.Module, trainable: Iterable[nn.Parameter]) -> None:
    """Set ``requires_grad`` False everywhere except on ``trainable``."""
    keep = {id(p) for p in trainable}
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) in keep)


def flat_size(shape: Sequence[int]) -> int:
    """Number of elements of one target item of ``shape``."""
    return math.prod(shape)
