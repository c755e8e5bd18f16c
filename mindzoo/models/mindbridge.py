"""``mindbridge``: cross-subject decoding through a shared translator (MindBridge, Wang et al. 2024).

Architecture (facts from littlepure2333/MindBridge ``src/models.py``; sizes are ours)::

    voxels [B, V_a] --AdaptiveMaxPool1d--> pooled [B, P]         same P for every subject
      --embedder_a--> e_a [B, h]       Adapter(P) -> Linear(P, h) -> LayerNorm -> GELU -> Dropout
      --translator--> [B, h]           shared: n_blocks x ( x + Dropout(GELU(LN(Linear(x)))) )
      --> one Linear head per target --> {target: [B, *shape]}  (standardised units)

    builder_a: e [B, h] -> [B, P]      Linear(h, P) -> LayerNorm -> GELU -> Adapter(P)

The adapter is a LoRA-initialised bottleneck ``x + up(ReLU(down(x)))`` with ``up`` zeroed, so it
starts as the identity. MindBridge pools NSD's nsdgeneral voxels to P = 8192 and uses h = 2048;
the default here (P = 1024, h = 512) suits synthetic-fmri's ~1,100-1,400 voxels per subject.

Pooling order: voxels are pooled in the store's voxel order, which for fMRI stores is C order of
the voxels' ``(i, j, k)`` grid indices (the pipeline's ``argwhere`` over the brain mask). Each
pooled element is therefore the maximum over a run of voxels that are mostly neighbours along
``k``; a different voxel order would give different (less local) pooled features. When a subject
has fewer voxels than P, adaptive pooling repeats voxels to reach P.

Loss (training mode), averaged over targets where it says so::

    mse_weight * mean_t MSE(pred_t, target_t) + clip_weight * mean_t SoftCLIP(pred_t, target_t)
      + rec_weight   * MSE(builder_a(e_a), pooled_a)                      voxel reconstruction
      + cycle_weight * MSE(e_a, embedder_b(builder_b(e_a)))               cycle between subjects

where ``b`` is a random other subject of the model, drawn per batch from torch's global RNG (so a
seeded run draws the same partners and resumes exactly). Batches hold one subject (the trainer's
sampler), unlike MindBridge's batches of all subjects; the cycle term is the same. Gradients of
the cycle term reach both sides, as in the reference. The reconstruction and cycle terms need the
pooled voxels and the subject, which :meth:`MindBridge.loss` does not receive: ``forward`` in
training mode computes them and keeps them for the next ``loss`` call. In eval mode (validation,
prediction) they are not computed, so the validation loss that selects the best epoch is the
target loss alone. A model with one subject has no cycle term.

Novel-fMRI synthesis (:meth:`MindBridge.synthesize`): ``builder_b(embedder_a(pool(voxels_a)))``
is subject b's pseudo-fMRI for what subject a saw, in b's *pooled* space ``[B, P]`` (pooling is
not invertible, so there is no native-voxel version).

New subjects (:class:`ResetTuning`, MindBridge's reset-tuning): the new subject gets a fresh
embedder and builder, everything else is frozen; training mixes the source subjects' trials in
(``mixes_source_data``), and on their batches the cycle partner is the new subject, so the
source data trains the new builder/embedder through the cycle loss. MindBridge puts source and
target samples in every step; the zoo's trainer draws one subject per batch, so a mixed run spends
most of its steps on the cycle term alone (Adam's steps do not shrink with the loss weight). On a
toy store this adapted worse than training on the new subject's trials alone; a trainer that pairs
a source and a target batch per step would follow the reference.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from mindzoo.errors import UserInputError
from mindzoo.models.base import (
    AdaptationContext,
    AdaptationStrategy,
    DecoderConfig,
    FMRIDecoder,
    flat_size,
    freeze_all_but,
)
from mindzoo.models.mindeye_mlp import target_loss


class MindBridgeConfig(DecoderConfig):
    """Architecture and loss of :class:`MindBridge` (optimisation lives in TrainerConfig)."""

    pool_size: int = Field(
        1024, ge=1, description="Pooled voxel length P shared by all subjects (MindBridge: 8192)."
    )
    hidden_dim: int = Field(512, ge=1, description="Width h of the embeddings (MindBridge: 2048).")
    n_blocks: int = Field(4, ge=0, description="Residual blocks of the shared translator.")
    adapter_bottleneck: int = Field(
        128, ge=1, description="Bottleneck of the embedder/builder adapters (MindBridge: 128)."
    )
    embed_dropout: float = Field(
        0.5, ge=0, lt=1, description="Dropout at the end of each embedder (MindBridge: 0.5)."
    )
    dropout: float = Field(0.15, ge=0, lt=1, description="Dropout inside translator blocks.")
    mse_weight: float = Field(1.0, ge=0, description="Weight of the target MSE term.")
    clip_weight: float = Field(1.0, ge=0, description="Weight of the target SoftCLIP term.")
    clip_temperature: float = Field(0.1, gt=0, description="SoftCLIP softmax temperature.")
    rec_weight: float = Field(1.0, ge=0, description="Weight of the voxel-reconstruction MSE.")
    cycle_weight: float = Field(1.0, ge=0, description="Weight of the cross-subject cycle MSE.")


class Adapter(nn.Module):
    """``x + up(ReLU(down(x)))`` with ``up`` zero-initialised (LoRA style): identity at start."""

    def __init__(self, width: int, bottleneck: int) -> None:
        super().__init__()
        self.down = nn.Linear(width, bottleneck)
        self.up = nn.Linear(bottleneck, width)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(F.relu(self.down(x)))


class _TranslatorBlock(nn.Module):
    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(width, width), nn.LayerNorm(width), nn.GELU(), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


def make_embedder(config: MindBridgeConfig) -> nn.Sequential:
    """Pooled voxels ``[B, P]`` -> embedding ``[B, h]``."""
    p, h = config.pool_size, config.hidden_dim
    return nn.Sequential(
        Adapter(p, config.adapter_bottleneck),
        nn.Linear(p, h),
        nn.LayerNorm(h),
        nn.GELU(),
        nn.Dropout(config.embed_dropout),
    )


def make_builder(config: MindBridgeConfig) -> nn.Sequential:
    """Embedding ``[B, h]`` -> pooled voxels ``[B, P]``."""
    p, h = config.pool_size, config.hidden_dim
    return nn.Sequential(
        nn.Linear(h, p), nn.LayerNorm(p), nn.GELU(), Adapter(p, config.adapter_bottleneck)
    )


class MindBridge(FMRIDecoder):
    """Max-pool -> per-subject embedder -> shared translator -> heads; per-subject builders."""

    config_cls = MindBridgeConfig
    config: MindBridgeConfig

    def __init__(
        self,
        config: MindBridgeConfig,
        n_voxels: Mapping[str, int],
        target_shapes: Mapping[str, Sequence[int]],
    ) -> None:
        super().__init__(config, n_voxels, target_shapes)
        self.pool = nn.AdaptiveMaxPool1d(config.pool_size)
        self.embedders = nn.ModuleDict({s: make_embedder(config) for s in self.n_voxels})
        self.builders = nn.ModuleDict({s: make_builder(config) for s in self.n_voxels})
        self.translator = nn.Sequential(
            *(_TranslatorBlock(config.hidden_dim, config.dropout) for _ in range(config.n_blocks))
        )
        self.heads = nn.ModuleDict(
            {
                name: nn.Linear(config.hidden_dim, flat_size(shape))
                for name, shape in self.target_shapes.items()
            }
        )
        # Set by ResetTuning: the subject being adapted, the cycle partner of source batches.
        self.adapting_subject: str | None = None
        # Reconstruction/cycle terms of the last training-mode forward, consumed by loss().
        self._auxiliary: dict[str, torch.Tensor] = {}

    def pooled(self, voxels: torch.Tensor, subject: str) -> torch.Tensor:
        """``voxels [B, V_subject]`` (store order) -> ``[B, pool_size]`` by adaptive max-pooling."""
        self.check_input(voxels, subject)
        return self.pool(voxels.unsqueeze(1)).squeeze(1)

    def forward(self, voxels: torch.Tensor, subject: str) -> dict[str, torch.Tensor]:
        pooled = self.pooled(voxels, subject)
        embedding = self.embedders[subject](pooled)
        self._auxiliary = self.auxiliary_losses(pooled, embedding, subject) if self.training else {}
        latent = self.translator(embedding)
        return {
            name: head(latent).reshape(len(latent), *self.target_shapes[name])
            for name, head in self.heads.items()
        }

    def cycle_partner(self, subject: str) -> str | None:
        """Subject ``b`` of this batch's cycle term: the adapted subject for source batches
        during reset-tuning, otherwise a random other subject (None when there is none)."""
        if self.adapting_subject is not None and subject != self.adapting_subject:
            return self.adapting_subject
        others = [s for s in self.n_voxels if s != subject]
        if not others:
            return None
        return others[int(torch.randint(len(others), ()))]

    def cycle_loss(self, embedding: torch.Tensor, partner: str) -> torch.Tensor:
        """``MSE(e_a, embedder_b(builder_b(e_a)))`` for embeddings ``e_a [B, h]``."""
        cycled = self.embedders[partner](self.builders[partner](embedding))
        return F.mse_loss(cycled.float(), embedding.float())

    def auxiliary_losses(
        self, pooled: torch.Tensor, embedding: torch.Tensor, subject: str
    ) -> dict[str, torch.Tensor]:
        """Voxel-reconstruction and cycle MSE for one batch of ``subject`` (weighted > 0 only)."""
        cfg = self.config
        terms: dict[str, torch.Tensor] = {}
        if cfg.rec_weight > 0:
            rebuilt = self.builders[subject](embedding)
            terms["voxel_rec"] = F.mse_loss(rebuilt.float(), pooled.float())
        partner = self.cycle_partner(subject) if cfg.cycle_weight > 0 else None
        if partner is not None:
            terms["cycle"] = self.cycle_loss(embedding, partner)
        return terms

    def loss(
        self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        total, logs = target_loss(
            outputs, targets, cfg.mse_weight, cfg.clip_weight, cfg.clip_temperature
        )
        weights = {"voxel_rec": cfg.rec_weight, "cycle": cfg.cycle_weight}
        auxiliary, self._auxiliary = self._auxiliary, {}
        for name, value in auxiliary.items():
            total = total + weights[name] * value
            logs[name] = float(value.detach())
        return total, logs

    @torch.no_grad()
    def synthesize(self, voxels_a: torch.Tensor, subject_a: str, subject_b: str) -> torch.Tensor:
        """Pseudo-fMRI of ``subject_b`` for what ``subject_a`` saw: ``voxels_a [B, V_a]`` ->
        ``[B, pool_size]`` in b's pooled voxel space. Call ``model.eval()`` first."""
        if subject_b not in self.n_voxels:
            raise UserInputError(
                f"Cannot synthesize fMRI of {subject_b!r}: not in this model "
                f"(has {', '.join(self.subjects)})"
            )
        embedding = self.embedders[subject_a](self.pooled(voxels_a, subject_a))
        return self.builders[subject_b](embedding)

    def add_subject(self, subject: str, n_voxels: int) -> None:
        """Give ``subject`` a fresh embedder and builder (on the device of the model)."""
        device = next(self.parameters()).device
        self.embedders[subject] = make_embedder(self.config).to(device)
        self.builders[subject] = make_builder(self.config).to(device)
        self.n_voxels[subject] = int(n_voxels)

    def adaptation_strategy(self) -> ResetTuning:
        return ResetTuning()


class ResetTuning(AdaptationStrategy):
    """MindBridge reset-tuning: a fresh embedder and builder for the new subject, the rest frozen,
    source subjects' trials mixed into training (their batches cycle through the new subject)."""

    name = "reset-tuning"
    mixes_source_data = True

    def prepare(self, model: FMRIDecoder, context: AdaptationContext) -> None:
        if not isinstance(model, MindBridge):
            raise TypeError(f"ResetTuning adapts MindBridge, got {type(model).__name__}")
        if model.config.cycle_weight <= 0:
            raise UserInputError(
                "reset-tuning mixes in source trials, which reach the new subject only through "
                "the cycle loss; train the model with model.cycle_weight > 0"
            )
        model.add_subject(context.subject, context.n_voxels)
        model.adapting_subject = context.subject
        trainable = [
            *model.embedders[context.subject].parameters(),
            *model.builders[context.subject].parameters(),
        ]
        freeze_all_but(model, trainable)
