"""``mindeye-mlp``: per-subject linear layer + shared residual MLP, the MindEye2 backbone baseline.

Architecture (after MindEye2's ``BrainNetwork``, Scotti et al. 2024; sizes are ours)::

    voxels [B, V_subject] --Linear_subject--> [B, h]          one layer per subject ("ridge")
      --> n_blocks x ( x + Linear(GELU-Dropout(Linear(LayerNorm(x)))) )   shared residual MLP
      --> LayerNorm --> one Linear head per target --> {target: [B, *shape]}

MindEye2 uses h = 4096 (1024 in its released low-compute config), 4 blocks, dropout 0.15, and
predicts 256 x 1664 OpenCLIP bigG tokens that feed a diffusion prior; here the heads predict the
store's cached features directly (efficientnet-lite0 ``global`` by default), in standardised
units (see :class:`~mindzoo.models.base.TargetScaler`).

Loss, per target, averaged over targets::

    mse_weight * MSE(pred, target) + clip_weight * SoftCLIP(pred, target; clip_temperature)

SoftCLIP (MindEye1/2): rows of the flattened predictions and targets are L2-normalised; the
cross-entropy of the prediction-to-target similarity softmax (both directions, averaged) is
taken against the *target-to-target* similarity softmax, so repeats of one image in a batch and
similar images are soft positives instead of false negatives. MindEye2 anneals the temperature
around 0.005 for 425,984-dim bigG tokens; for standardised 1280-dim features a larger one fits
(default 0.1). MindEye2's BiMixCo warm-up, diffusion prior and low-level branch are left out.

New subjects (:class:`NewSubjectLayer`): a fresh linear layer for the new subject is trained on
its few trials, everything shared stays frozen (MindEye2's new-subject recipe, minus its full
fine-tuning).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from mindzoo.models.base import (
    AdaptationContext,
    AdaptationStrategy,
    DecoderConfig,
    FMRIDecoder,
    flat_size,
    freeze_all_but,
)


class MindEyeMLPConfig(DecoderConfig):
    """Architecture and loss of :class:`MindEyeMLP` (optimisation lives in TrainerConfig)."""

    hidden_dim: int = Field(512, ge=1, description="Width of the shared latent (MindEye2: 4096).")
    n_blocks: int = Field(4, ge=0, description="Residual MLP blocks of the shared backbone.")
    dropout: float = Field(0.15, ge=0, lt=1, description="Dropout inside each residual block.")
    mse_weight: float = Field(1.0, ge=0, description="Weight of the MSE term.")
    clip_weight: float = Field(1.0, ge=0, description="Weight of the SoftCLIP term.")
    clip_temperature: float = Field(0.1, gt=0, description="SoftCLIP softmax temperature.")


def soft_clip_loss(pred: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """MindEye's SoftCLIP loss between ``pred`` and ``target`` rows (``[B, ...]``, flattened)."""
    p = F.normalize(pred.flatten(1).float(), dim=-1)
    t = F.normalize(target.flatten(1).float(), dim=-1)
    soft = (t @ t.T / temperature).softmax(-1)
    logits = p @ t.T / temperature
    forward = -(logits.log_softmax(-1) * soft).sum(-1).mean()
    backward = -(logits.T.log_softmax(-1) * soft).sum(-1).mean()
    return (forward + backward) / 2


def target_loss(
    outputs: Mapping[str, torch.Tensor],
    targets: Mapping[str, torch.Tensor],
    mse_weight: float,
    clip_weight: float,
    clip_temperature: float,
    target_weights: Mapping[str, float] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """MSE + SoftCLIP on standardised targets, each a weighted mean over the targets (weight 1
    unless ``target_weights`` names the target); with logs."""
    names = list(outputs)
    given = target_weights or {}
    weights = torch.tensor([float(given.get(k, 1.0)) for k in names])
    weights = weights / weights.sum().clamp_min(1e-12)

    def mean(values: list[torch.Tensor]) -> torch.Tensor:
        return (torch.stack(values) * weights.to(values[0].device)).sum()

    mse = mean([F.mse_loss(outputs[k].float(), targets[k].float()) for k in names])
    total = mse_weight * mse
    logs = {"mse": float(mse.detach())}
    if clip_weight > 0:
        clip = mean([soft_clip_loss(outputs[k], targets[k], clip_temperature) for k in names])
        total = total + clip_weight * clip
        logs["soft_clip"] = float(clip.detach())
    return total, logs


class _ResidualBlock(nn.Module):
    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(width),
            nn.Linear(width, width),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(width, width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class MindEyeMLP(FMRIDecoder):
    """Per-subject ``Linear(V_s, h)`` -> shared residual MLP -> one linear head per target."""

    config_cls = MindEyeMLPConfig
    config: MindEyeMLPConfig

    def __init__(
        self,
        config: MindEyeMLPConfig,
        n_voxels: Mapping[str, int],
        target_shapes: Mapping[str, Sequence[int]],
    ) -> None:
        super().__init__(config, n_voxels, target_shapes)
        width = config.hidden_dim
        self.subject_layers = nn.ModuleDict(
            {s: nn.Linear(v, width) for s, v in self.n_voxels.items()}
        )
        self.blocks = nn.Sequential(
            *(_ResidualBlock(width, config.dropout) for _ in range(config.n_blocks))
        )
        self.norm = nn.LayerNorm(width)
        self.heads = nn.ModuleDict(
            {name: nn.Linear(width, flat_size(shape)) for name, shape in self.target_shapes.items()}
        )

    def forward(self, voxels: torch.Tensor, subject: str) -> dict[str, torch.Tensor]:
        self.check_input(voxels, subject)
        latent = self.norm(self.blocks(self.subject_layers[subject](voxels)))
        return {
            name: head(latent).reshape(len(latent), *self.target_shapes[name])
            for name, head in self.heads.items()
        }

    def loss(
        self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        total, logs = target_loss(
            outputs, targets, cfg.mse_weight, cfg.clip_weight, cfg.clip_temperature
        )
        return total, logs

    def add_subject(self, subject: str, n_voxels: int) -> None:
        """Give ``subject`` a fresh input layer (on the device of the model)."""
        device = next(self.parameters()).device
        self.subject_layers[subject] = nn.Linear(n_voxels, self.config.hidden_dim).to(device)
        self.n_voxels[subject] = int(n_voxels)

    def adaptation_strategy(self) -> NewSubjectLayer:
        return NewSubjectLayer()


class NewSubjectLayer(AdaptationStrategy):
    """MindEye2-style adaptation: a new subject linear layer is trained, the rest is frozen."""

    name = "new-subject-layer"

    def prepare(self, model: FMRIDecoder, context: AdaptationContext) -> None:
        if not isinstance(model, MindEyeMLP):
            raise TypeError(f"NewSubjectLayer adapts MindEyeMLP, got {type(model).__name__}")
        model.add_subject(context.subject, context.n_voxels)
        freeze_all_but(model, model.subject_layers[context.subject].parameters())
