"""What every spike model of the zoo offers (Neuroformer and the baselines), on one batch type.

All spike models read :class:`~mindzoo.datasets.spike_views.SpikeBatch` windows and are
``nn.Module``s, so every run saves ``model.safetensors`` the same way: closed-form baselines
keep what they fit as buffers (:meth:`SpikeModel.fit`), gradient-trained ones (Neuroformer, the
Poisson GLM) go through the one trainer (:meth:`~mindzoo.models.trainable.TrainableModel.training_step`).

The evaluation layer asks a model for

- :meth:`SpikeModel.window_log_likelihood`: log P(the current window's spike counts | its
  context), nats per window -- a distribution over count matrices ``[unit, bin]`` at ``data.dt``
  for every model, so bits per spike compare across token and rate models;
- :meth:`SpikeModel.sample`: one draw of the current window's spikes (generation, closed loop:
  the evaluation feeds generated spikes back as the next window's past);
- :meth:`SpikeModel.predict_behaviour`: the chosen behaviour variables per window;
- :meth:`SpikeModel.coupling`: a directed unit-to-unit score ``[i, j]`` = influence of unit i on
  unit j (None when the model has no notion of it).

:class:`RateModel` derives the first two from expected counts per bin (Poisson).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch

from mindzoo.datasets.spike_views import SpikeBatch, SpikeInfo
from mindzoo.errors import UserInputError
from mindzoo.models.trainable import TrainableModel


class SpikeModel(TrainableModel):
    """Base of spike models; ``info`` is the :class:`SpikeInfo` the model was built for."""

    kind: ClassVar[str] = "spikes"
    name: ClassVar[str] = "spike model"
    has_likelihood: ClassVar[bool] = True
    """False for pure behaviour decoders (no likelihood, no generation)."""

    def __init__(self, info: SpikeInfo) -> None:
        super().__init__()
        self.info = info

    @property
    def needs_training(self) -> bool:
        """Whether the trainer has anything to optimise (closed-form models: False)."""
        return any(p.requires_grad for p in self.parameters())

    @property
    def init_required(self) -> str | None:
        """Why this configuration cannot train without ``init=RUN`` (None: it can)."""
        return None

    def fit(self, train: Any) -> None:
        """Closed-form fit on a :class:`~mindzoo.datasets.spike_views.SpikeWindows` view
        (before any gradient training); the default fits nothing."""

    def check_subject(self, subject: str) -> None:
        if subject not in self.info.units:
            raise UserInputError(
                f"The model was built for subjects {', '.join(self.info.units)}, not {subject}"
            )

    def window_log_likelihood(self, batch: SpikeBatch) -> torch.Tensor:
        """log P(counts of each current window | context), nats, float64 ``[B]``."""
        raise NotImplementedError

    def sample(
        self, batch: SpikeBatch, generator: torch.Generator
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """One draw of each row's current-window spikes: ``(bin int [n], unit row int [n])``."""
        raise NotImplementedError

    def predict_behaviour(self, batch: SpikeBatch) -> torch.Tensor:
        """Behaviour variables float32 ``[B, sum(info.behaviour_dims)]`` at each window."""
        raise UserInputError(
            f"{self.name} does not predict behaviour; train neuroformer (with "
            "--set data.behaviour=[NAME]) or spike-ridge"
        )

    def coupling(self, view: Any, subject: str) -> np.ndarray | None:
        """Directed coupling score ``[U, U]`` (row i -> column j) of ``subject``; None if the
        model has none."""
        return None


class RateModel(SpikeModel):
    """A spike model given by expected counts per unit and bin (a Poisson process per bin)."""

    def rates(self, batch: SpikeBatch) -> torch.Tensor:
        """Expected spike counts ``[B, U, n_bins]`` of each current-window bin (> 0)."""
        raise NotImplementedError

    def window_log_likelihood(self, batch: SpikeBatch) -> torch.Tensor:
        return poisson_log_likelihood(batch.counts, self.rates(batch)).sum(dim=(1, 2))

    def sample(
        self, batch: SpikeBatch, generator: torch.Generator
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        counts = torch.poisson(self.rates(batch).double().cpu(), generator=generator)
        out = []
        for row in counts.long().numpy():
            units, bins = np.nonzero(row)
            reps = row[units, bins]
            out.append((np.repeat(bins, reps), np.repeat(units, reps)))
        return out


def poisson_log_likelihood(counts: torch.Tensor, rates: torch.Tensor) -> torch.Tensor:
    """Elementwise log Poisson(counts; rates), nats, float64 (rates clamped at 1e-12)."""
    counts, rates = counts.double(), rates.double().clamp_min(1e-12)
    return counts * rates.log() - rates - torch.lgamma(counts + 1)


LOG2 = math.log(2.0)
ForwardFn = Callable[..., Any]
