"""Neuroformer (Antoniades et al., ICLR 2024, arXiv 2311.00136): a generative spike-token model.

Facts read in the official code (a-antoniades/Neuroformer: ``neuroformer/model_neuroformer.py``,
``neuroformer/modules.py``, ``configs/Visnav/lateral/mconf_pretrain.yaml``; no code copied):

- a token is one spike: ``tok_emb(unit id) + sinusoid(dt token index) + learned position``;
  past-window tokens the same way (own positions); frames go through Conv3d patches
  (kernel [3, 5, 5]), LayerNorm, ReLU, and the current window's SOS embedding is prepended;
- a *feature encoder* first: causal self-attention blocks over the current tokens
  (``layers.state``) and self-attention blocks over the frame tokens (``layers.stimulus``);
- then the *multimodal transformer*: cross-attention to the past tokens
  (``layers.state_history``), to the frame tokens (``layers.stimulus``), to other modalities
  (behaviour, optional), then causal self-attention (``layers.state``); sizes 256 / 8 heads /
  6 blocks each, dropout 0.2;
- separate id and dt heads (no bias); loss ``CE(id) 3/5 + CE(dt) 2/5``, each ``x (1 - 1/n)``,
  plus a contrastive term ``x 1/n``, ``n = 4``: one-direction InfoNCE (temperature 0.5) between
  the mean final spike features and the mean frame-encoder features through one shared
  bias-free projection; behaviour regression from the mean final features (MSE), added as is;
- init N(0, 0.02) for Linear and Embedding weights, zero biases, zero positions; AdamW decays
  only Linear weights.

Our deviations (each with its reason) are listed in ``neuroformer-paper.yaml`` and the report:
PAD keys of the past window are masked (the official attends to them), pooled features average
the valid positions only, the id/dt heads' SOS/PAD outputs are masked (never targets, so the
window likelihood is normalised), frame tokens get learned positions (the official computes a
3-D sinusoid but, through a variable mix-up, never adds it), an optional learned dt embedding.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from mindzoo.datasets.spike_views import SpikeBatch, SpikeInfo
from mindzoo.errors import UserInputError
from mindzoo.models.neuroformer_layers import (
    FrameEncoder,
    blocks,
    causal_mask,
    coupling_scores,
    info_nce,
    sample_windows,
    sinusoid,
)
from mindzoo.models.spike_base import SpikeModel
from mindzoo.models.spike_baselines import (
    choose_alpha,
    iter_batches,
    ridge_fold_stats,
    ridge_solve,
    sum_stats,
)
from mindzoo.models.trainable import InitRun, StageInit


class NeuroformerConfig(BaseModel):
    """Neuroformer sizes and losses; defaults are CPU-sized (``preset=paper``: the paper's)."""

    model_config = ConfigDict(extra="forbid")

    n_embd: int = Field(64, ge=8, description="Token width.")
    n_head: int = Field(4, ge=1, description="Attention heads.")
    n_encoder_layers: int = Field(
        1, ge=0, description="Feature encoder: causal self-attention blocks on current tokens."
    )
    n_frame_layers: int = Field(
        1, ge=0, description="Feature encoder: self-attention blocks on frame tokens."
    )
    n_history_layers: int = Field(2, ge=0, description="Cross-attention blocks to past spikes.")
    n_stimulus_layers: int = Field(2, ge=0, description="Cross-attention blocks to frames.")
    n_behaviour_layers: int = Field(
        0,
        ge=0,
        description="Cross-attention blocks to behaviour tokens (>0: data.behaviour is an input, "
        "not predicted).",
    )
    n_state_layers: int = Field(2, ge=1, description="Final causal self-attention blocks.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout everywhere (official: 0.2).")
    max_tokens: int = Field(
        100, ge=1, description="Learned positions of the current window (>= data.max_tokens)."
    )
    max_prev_tokens: int = Field(
        700, ge=1, description="Learned positions of the past window (>= data.max_prev_tokens)."
    )
    dt_embedding: Literal["sinusoid", "mlp"] = Field(
        "sinusoid",
        description="Embedding of the dt token index: fixed sin/cos, or the official configs' "
        "learned MLP 1 -> E/2 -> E (GELU), one per window.",
    )
    learned_dt: bool = Field(
        True, description="Also add a learned dt table embedding (official: no)."
    )
    frame_kernel: list[int] = Field(
        [3, 4, 4], min_length=3, max_length=3, description="Conv3d kernel (time, h, w)."
    )
    frame_stride: list[int] | None = Field(
        None, description="Conv3d stride (time, h, w); None: the kernel (non-overlapping)."
    )
    order: Literal["canonical", "official"] = Field(
        "canonical",
        description="'canonical': predict the next token's dt bin, then its unit given that bin, "
        "both restricted to continuations of the (bin, unit) order the view uses, so the window "
        "likelihood is a distribution over spike-count matrices (docs/decisions.md); "
        "'official': id and dt predicted independently from one state, unconstrained.",
    )
    contrastive: bool = Field(True, description="Add the spike/frame contrastive term.")
    clip_dim: int = Field(64, ge=1, description="Width of the contrastive projection.")
    clip_temperature: float = Field(0.5, gt=0, description="Contrastive temperature.")
    behaviour_weight: float = Field(1.0, ge=0, description="Weight of the behaviour MSE.")
    behaviour_readout: Literal["probe", "finetune"] = Field(
        "probe",
        description="How the behaviour head learns: 'probe': ridge (alpha by cross-validation "
        "over training trials) on the frozen pre-trained model's features, no gradient step "
        "(needs init=RUN); 'finetune': gradient training of the whole model with the MSE added "
        "to the spike losses (the official way).",
    )
    behaviour_features: Literal["mean", "sum", "sum+past"] = Field(
        "sum",
        description="Features the behaviour head reads: the mean or sum of the final features "
        "over the current window's tokens, or that sum and the sum of the past window's token "
        "embeddings (official: mean).",
    )
    behaviour_alphas: list[float] = Field(
        default_factory=lambda: [10.0**k for k in range(-2, 7)],
        description="Ridge penalties tried by the probe (on standardised features).",
    )


_ARCH_KEYS = (
    "n_embd n_head n_encoder_layers n_frame_layers n_history_layers n_stimulus_layers "
    "n_behaviour_layers n_state_layers max_tokens max_prev_tokens dt_embedding learned_dt order "
    "frame_kernel "
    "frame_stride contrastive clip_dim"
).split()
"""Settings a fine-tuning run (``--set init=RUN``) inherits from its pre-trained run."""

REFERENCE_SHAPES = {
    "info": SpikeInfo(
        units={"mouse": 120},
        n_dt=25,  # the default data: 0.25 s past, 0.05 s window, 10 ms bins
        n_bins=5,
        n_prev_bins=25,
        frame_shape=(16, 16),
        behaviour=[],
        behaviour_dims=[],
    )
}


def _key(subject: str) -> str:
    return subject.replace(".", "_")


class Neuroformer(SpikeModel):
    """Neuroformer for the subjects of ``info`` (per-subject unit embeddings and id heads, a
    shared transformer). ``forward(batch)`` returns logits and the loss (see module docstring)."""

    name = "neuroformer"
    adam_betas = (0.9, 0.95)  # official TrainerConfig.betas (neuroformer/trainer.py:50)

    def __init__(self, config: NeuroformerConfig | dict[str, Any], info: SpikeInfo) -> None:
        super().__init__(info)
        cfg = config if isinstance(config, NeuroformerConfig) else NeuroformerConfig(**config)
        self.config = cfg
        e, h, p = cfg.n_embd, cfg.n_head, cfg.dropout
        self.n_dt_vocab = info.n_dt + 3
        self.tok_emb = nn.ModuleDict(
            {_key(s): nn.Embedding(n + 3, e) for s, n in info.units.items()}
        )
        self.head_id = nn.ModuleDict(
            {_key(s): nn.Linear(e, n + 3, bias=False) for s, n in info.units.items()}
        )
        self.dt_emb = nn.Embedding(self.n_dt_vocab, e) if cfg.learned_dt else None
        self.dt_mlp = None
        if cfg.dt_embedding == "mlp":
            self.dt_mlp = nn.ModuleList(
                nn.Sequential(nn.Linear(1, e // 2), nn.GELU(), nn.Linear(e // 2, e), nn.Dropout(p))
                for _ in range(2)
            )
        self.pos = nn.Parameter(torch.zeros(1, cfg.max_tokens + 2, e))
        self.pos_prev = nn.Parameter(torch.zeros(1, cfg.max_prev_tokens, e))
        self.drop = nn.Dropout(p)
        self.encoder = blocks(cfg.n_encoder_layers, e, h, p)
        self.history = blocks(cfg.n_history_layers, e, h, p)
        self.frames = None
        if info.frame_shape is not None and cfg.n_stimulus_layers > 0:
            self.frames = FrameEncoder(
                e,
                (cfg.frame_kernel[0], *info.frame_shape),  # time axis: clipped to n_frames
                tuple(cfg.frame_kernel),
                None if cfg.frame_stride is None else tuple(cfg.frame_stride),
            )
            self.frame_encoder = blocks(cfg.n_frame_layers, e, h, p)
            self.stimulus = blocks(cfg.n_stimulus_layers, e, h, p)
        n_beh = sum(info.behaviour_dims)
        self.behaviour_input = cfg.n_behaviour_layers > 0
        if self.behaviour_input and not n_beh:
            raise UserInputError("model.n_behaviour_layers > 0 needs data.behaviour=[NAME, ...]")
        if self.behaviour_input:
            self.behaviour_value = nn.Linear(1, e)
            self.behaviour_var = nn.Parameter(torch.zeros(1, n_beh, e))
            self.behaviour_blocks = blocks(cfg.n_behaviour_layers, e, h, p)
        self.state = blocks(cfg.n_state_layers, e, h, p)
        self.head_dt = nn.Linear(e, self.n_dt_vocab, bias=False)
        self.id_given_dt = nn.Embedding(self.n_dt_vocab, e) if cfg.order == "canonical" else None
        self.clip = (
            nn.Linear(e, cfg.clip_dim, bias=False)
            if self.frames is not None and cfg.contrastive
            else None
        )
        width = 2 * e if cfg.behaviour_features == "sum+past" else e
        self.behaviour_head = (
            nn.Linear(width, n_beh) if n_beh and not self.behaviour_input else None
        )
        if self.behaviour_head is not None and cfg.behaviour_readout == "probe":
            self.requires_grad_(False)  # a probe: the pre-trained model stays as it is
        self.register_buffer("behaviour_mean", torch.zeros(max(n_beh, 1)))
        self.register_buffer("behaviour_std", torch.ones(max(n_beh, 1)))
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, 0.0, 0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    # ------------------------------------------------------------------ embedding and context
    def _embed(
        self, subject: str, ids: torch.Tensor, dts: torch.Tensor, pos: torch.Tensor, past: int
    ) -> torch.Tensor:
        """Token embeddings ``[B, T, E]`` of ``ids``/``dts`` [B, T] (``past``: 1 for the past
        window, which has its own dt MLP)."""
        x = self.tok_emb[_key(subject)](ids)
        if self.dt_mlp is None:
            x = x + sinusoid(dts, self.config.n_embd)
        else:
            x = x + self.dt_mlp[past](dts.float().unsqueeze(-1))
        if self.dt_emb is not None:
            x = x + self.dt_emb(dts)
        return self.drop(x + pos[:, : ids.shape[1]])

    def context(self, batch: SpikeBatch) -> dict[str, torch.Tensor]:
        """What the current window attends to: past tokens ``prev`` [B, P, E] with their keep
        mask ``prev_keep`` [B, 1, 1, P] (valid tokens; slot 0 always, so an empty past attends
        to one PAD) and ``prev_valid`` [B, P] (valid tokens only), encoded frame tokens
        ``frames`` [B, 1 + F, E] (without the SOS, which the decoder prepends), behaviour tokens
        ``behaviour`` [B, D, E]."""
        self.check_subject(batch.subject)
        _, _, pad = self.info.specials(batch.subject)
        valid = batch.prev_id != pad
        p = max(1, int(valid.sum(1).max()))
        if p > self.config.max_prev_tokens:
            raise UserInputError(
                f"data.max_prev_tokens ({batch.prev_id.shape[1]}) exceeds model.max_prev_tokens="
                f"{self.config.max_prev_tokens}; raise the model's"
            )
        keep = valid[:, :p].clone()
        keep[:, 0] = True
        out = {
            "prev": self._embed(
                batch.subject, batch.prev_id[:, :p], batch.prev_dt[:, :p], self.pos_prev, 1
            ),
            "prev_keep": keep[:, None, None, :],
            "prev_valid": valid[:, :p],
        }
        if self.frames is not None and batch.frames is not None:
            out["frames"] = self.frames(batch.frames)
        if self.behaviour_input:
            if batch.behaviour is None:
                raise UserInputError("model.n_behaviour_layers > 0 needs behaviour in the batch")
            z = (batch.behaviour - self.behaviour_mean) / self.behaviour_std
            out["behaviour"] = self.drop(self.behaviour_value(z.unsqueeze(-1)) + self.behaviour_var)
        return out

    def decode(
        self, subject: str, ids: torch.Tensor, dts: torch.Tensor, ctx: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Final features ``x`` [B, T, E] of the input tokens ``ids``/``dts`` [B, T] (starting
        with SOS) and the encoded frames ``frames`` [B, 1 + F, E] (when given)."""
        if ids.shape[1] > self.config.max_tokens + 2:
            raise UserInputError(
                f"data.max_tokens exceeds model.max_tokens={self.config.max_tokens}; raise it"
            )
        x = self._embed(subject, ids, dts, self.pos, 0)
        causal = causal_mask(ids.shape[1], ids.device)
        out: dict[str, torch.Tensor] = {}
        frames = None
        if "frames" in ctx:
            frames = torch.cat([x[:, :1], ctx["frames"]], dim=1)  # official: SOS first
            for block in self.frame_encoder:
                frames = block(frames)
            out["frames"] = frames
        for block in self.encoder:
            x = block(x, None, causal)
        for block in self.history:
            x = block(x, ctx["prev"], ctx["prev_keep"])
        if frames is not None:
            for block in self.stimulus:
                x = block(x, frames)
        if "behaviour" in ctx:
            for block in self.behaviour_blocks:
                x = block(x, ctx["behaviour"])
        for block in self.state:
            x = block(x, None, causal)
        out["x"] = x
        return out

    def logits(self, subject: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probabilities of the next id ``[B, T, U + 3]`` and dt ``[B, T, n_dt + 3]``; the
        SOS and PAD entries (never targets) are -inf, so each row is a distribution over units,
        EOS (and dt bins, dt EOS)."""
        eos, sos, pad = self.info.specials(subject)
        lid = self.head_id[_key(subject)](x).float()
        ldt = self.head_dt(x).float()
        lid[..., sos:] = float("-inf")
        ldt[..., self.info.n_dt + 1 :] = float("-inf")
        return lid.log_softmax(-1), ldt.log_softmax(-1)

    def dt_log_probs(
        self, subject: str, x: torch.Tensor, in_ids: torch.Tensor, in_dts: torch.Tensor
    ) -> torch.Tensor:
        """Canonical order: log-probabilities of the next dt ``[B, T, n_dt + 3]`` given the
        features ``x`` [B, T, E] and the input tokens at those positions; bins before the
        previous spike's bin and outside the current window are impossible (-inf)."""
        eos = self.info.specials(subject)[0]
        ldt = self.head_dt(x).float()
        bins = torch.arange(self.n_dt_vocab, device=x.device)
        prev_bin = torch.where(in_ids < eos, in_dts, torch.zeros_like(in_dts))
        n_bins, n_dt = self.info.n_bins, self.info.n_dt
        impossible = (bins >= n_dt + 1) | ((bins >= n_bins) & (bins < n_dt))
        impossible = impossible | (bins[None, None] < prev_bin[..., None])
        return ldt.masked_fill(impossible, float("-inf")).log_softmax(-1)

    def id_log_probs(
        self,
        subject: str,
        x: torch.Tensor,
        in_ids: torch.Tensor,
        in_dts: torch.Tensor,
        next_dt: torch.Tensor,
    ) -> torch.Tensor:
        """Canonical order: log-probabilities of the next unit ``[B, T, U + 3]`` given its dt
        ``next_dt`` [B, T]: EOS exactly when the dt is EOS (log-probability 0), and inside the
        previous spike's bin only units at or after the previous unit."""
        eos, sos, _ = self.info.specials(subject)
        h = x + self.id_given_dt(next_dt.clamp_max(self.n_dt_vocab - 1))
        lid = self.head_id[_key(subject)](h).float()
        units = torch.arange(lid.shape[-1], device=x.device)[None, None]
        is_eos = (next_dt == self.info.n_dt)[..., None]
        same_bin = ((in_ids < eos) & (next_dt == in_dts))[..., None]
        impossible = (units >= sos) | torch.where(is_eos, units != eos, units == eos)
        impossible = impossible | (same_bin & (units < in_ids[..., None]))
        return lid.masked_fill(impossible, float("-inf")).log_softmax(-1)

    def token_log_probs(
        self, subject: str, x: torch.Tensor, ids: torch.Tensor, dts: torch.Tensor,
        tid: torch.Tensor, tdt: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """log p(target id) and log p(target dt) per position ``[B, T]`` (either order)."""
        if self.id_given_dt is None:
            lid, ldt = self.logits(subject, x)
        else:
            ldt = self.dt_log_probs(subject, x, ids, dts)
            lid = self.id_log_probs(subject, x, ids, dts, tdt)
        pick_id = lid.gather(-1, tid.unsqueeze(-1)).squeeze(-1)
        pick_dt = ldt.gather(-1, tdt.unsqueeze(-1)).squeeze(-1)
        return pick_id, pick_dt

    # ----------------------------------------------------------------------------- training
    def _split(self, batch: SpikeBatch) -> tuple[torch.Tensor, ...]:
        t = int(batch.length.max())
        ids, dts = batch.id[:, :t], batch.dt[:, :t]
        target_valid = torch.arange(1, t, device=ids.device)[None] < batch.length[:, None]
        return ids[:, :-1], dts[:, :-1], ids[:, 1:], dts[:, 1:], target_valid

    def forward(self, batch: SpikeBatch) -> dict[str, torch.Tensor]:
        """Loss of ``batch`` and its parts: ``loss``, ``id``, ``dt`` (mean CE nats per valid
        target), ``clip``, ``behaviour`` (MSE on standardised targets) when present."""
        ids, dts, tid, tdt, valid = self._split(batch)
        ctx = self.context(batch)
        out = self.decode(batch.subject, ids, dts, ctx)
        lp_id, lp_dt = self.token_log_probs(batch.subject, out["x"], ids, dts, tid, tdt)
        nll_id, nll_dt = -lp_id[valid], -lp_dt[valid]
        loss_id, loss_dt = nll_id.mean(), nll_dt.mean()
        w = valid.unsqueeze(-1).to(out["x"].dtype)
        pooled = (out["x"] * w).sum(1) / w.sum(1).clamp_min(1.0)
        features = self._behaviour_features(out["x"], w, pooled, ctx)
        parts = {"id": loss_id, "dt": loss_dt}
        scale = 1.0
        if self.clip is not None and "frames" in out:
            n = 4.0
            scale = 1 - 1 / n
            a, b = self.clip(pooled), self.clip(out["frames"].mean(1))
            parts["clip"] = info_nce(a, b, self.config.clip_temperature)
        loss = scale * (0.6 * loss_id + 0.4 * loss_dt)
        if "clip" in parts:
            loss = loss + parts["clip"] / 4.0
        if self.behaviour_head is not None and batch.behaviour is not None:
            z = (batch.behaviour - self.behaviour_mean) / self.behaviour_std
            parts["behaviour"] = F.mse_loss(self.behaviour_head(features), z)
            loss = loss + self.config.behaviour_weight * parts["behaviour"]
        return {"loss": loss, **parts, "pooled": pooled, "features": features}

    def _behaviour_features(
        self, x: torch.Tensor, w: torch.Tensor, pooled: torch.Tensor, ctx: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """What the behaviour head reads (``model.behaviour_features``), [B, E] or [B, 2E], from
        the final features ``x`` [B, T, E] with valid-position weights ``w`` [B, T, 1]."""
        kind = self.config.behaviour_features
        if kind == "mean":
            return pooled
        total = (x * w).sum(1)
        if kind == "sum":
            return total
        keep = ctx["prev_valid"].unsqueeze(-1).to(x.dtype)
        return torch.cat([total, (ctx["prev"] * keep).sum(1)], dim=1)

    def training_step(
        self, batch: SpikeBatch, forward: Any = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        out = (forward or self)(batch)
        logs = {k: v.detach().item() for k, v in out.items() if k not in ("pooled", "features")}
        return out["loss"], logs

    def optimizer_groups(self, params: Any) -> list[dict[str, Any]]:
        """Official AdamW split: weight decay on Linear weights only (not biases, LayerNorm,
        embeddings, positions, the Conv3d)."""
        decay = {id(m.weight) for m in self.modules() if isinstance(m, nn.Linear)}
        params = list(params)
        return [
            {"params": [q for q in params if id(q) in decay]},
            {"params": [q for q in params if id(q) not in decay], "weight_decay": 0.0},
        ]

    def fit(self, train: Any) -> None:
        """Mean and std of the behaviour variables over the training windows (buffers)."""
        if not self.info.behaviour or len(train) == 0:
            return
        values = []
        for subject in train.subjects:
            rows = train.subject_slice(subject)
            for b in range(rows.start, rows.stop, 1024):
                values.append(train.batch(range(b, min(b + 1024, rows.stop))).behaviour)
        allv = torch.cat(values).double()
        self.behaviour_mean.copy_(allv.mean(0).float())
        self.behaviour_std.copy_(allv.std(0).clamp_min(1e-6).float() if len(allv) > 1 else 1.0)
        if self.behaviour_head is not None and self.config.behaviour_readout == "probe":
            self._fit_probe(train)

    @property
    def init_required(self) -> str | None:
        """A probe reads a pre-trained model's features: it needs ``init=RUN``."""
        if self.behaviour_head is None or self.config.behaviour_readout != "probe":
            return None
        return (
            "model.behaviour_readout=probe fits the behaviour head on a pre-trained model: add "
            "--set init=RUN (a neuroformer run), or --set model.behaviour_readout=finetune to "
            "train it with the model"
        )

    @torch.no_grad()
    def _fit_probe(self, train: Any) -> None:
        """Fit the behaviour head in closed form: ridge from the frozen model's features
        (standardised over the training windows) to the standardised behaviour, alpha by
        cross-validation with folds of whole trials (5, or fewer with fewer trials)."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        keys = list(zip(train.windows["subject"], train.windows["trial"], strict=True))
        groups = {k: i for i, k in enumerate(dict.fromkeys(keys))}
        n_folds = max(1, min(5, len(groups)))
        stats = None
        for subject in train.subjects:
            for batch in iter_batches(train, subject, 256):
                x = self.forward(batch.to(device))["features"].double().cpu().numpy()
                z = (batch.behaviour - self.behaviour_mean.cpu()) / self.behaviour_std.cpu()
                folds = np.array([groups[(subject, int(t))] % n_folds for t in batch.trial])
                stats = ridge_fold_stats(x, z.double().numpy(), folds, n_folds, stats)
        total = sum_stats(stats)
        n = float(total["n"])
        var = total["sxx"].diagonal() / n - (total["sx"] / n) ** 2
        scale = 1.0 / np.sqrt(np.maximum(var, 1e-12))
        for s in stats:
            s["sx"], s["sxy"] = s["sx"] * scale, s["sxy"] * scale[:, None]
            s["sxx"] = s["sxx"] * np.outer(scale, scale)
        alpha = choose_alpha(stats, self.config.behaviour_alphas)
        weights, bias = ridge_solve(sum_stats(stats), alpha)
        head = self.behaviour_head
        head.weight.copy_(torch.from_numpy((weights * scale[:, None]).T).to(head.weight))
        head.bias.copy_(torch.from_numpy(bias).to(head.bias))
        self.probe_alpha = alpha
        self.train(was_training)

    # ---------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def window_log_likelihood(self, batch: SpikeBatch) -> torch.Tensor:
        ids, dts, tid, tdt, valid = self._split(batch)
        out = self.decode(batch.subject, ids, dts, self.context(batch))
        lp_id, lp_dt = self.token_log_probs(batch.subject, out["x"], ids, dts, tid, tdt)
        ll = lp_id + lp_dt
        return torch.where(
            valid, ll.double(), torch.zeros((), dtype=torch.float64, device=ll.device)
        ).sum(1)

    @torch.no_grad()
    def sample(
        self, batch: SpikeBatch, generator: torch.Generator
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        return sample_windows(self, batch, generator)

    @torch.no_grad()
    def predict_behaviour(self, batch: SpikeBatch) -> torch.Tensor:
        if self.behaviour_head is None:
            return super().predict_behaviour(batch)
        features = self.forward(batch)["features"]
        return self.behaviour_head(features) * self.behaviour_std + self.behaviour_mean

    def coupling(self, view: Any, subject: str) -> np.ndarray:
        """Mean past-window cross-attention ``[i, j]``: from the positions whose next token is
        unit j (queries: where the model decides that j fires) to past tokens of unit i (keys),
        over history layers and heads and all windows of ``subject`` in ``view``; each weight is
        multiplied by the window's number of valid keys (uniform attention scores 1) and the sum
        divided by the number of (j query, i key) pairs, so frequent units are not favoured.
        Attention, not gradients: it is what the paper reads out, and costs one forward pass."""
        return coupling_scores(self, view, subject)


# ------------------------------------------------------------- few-shot fine-tuning (init=RUN)
def _prepare(model: dict[str, Any], init: InitRun) -> tuple[dict[str, Any], dict[str, Any]]:
    source = init.config["settings"]["model"]
    return {**model, **{k: source[k] for k in _ARCH_KEYS if k in source}}, {}


def _apply(model: nn.Module, init: InitRun) -> None:
    """Copy the pre-trained weights: all shared ones (they must fit), each subject's unit
    embedding and id head when its unit count matches; the behaviour head and its
    standardisation stay fresh (the pre-trained model has none)."""
    source = init.weights()
    own = model.state_dict()
    fresh = ("behaviour_head.", "behaviour_mean", "behaviour_std")
    update = {}
    for key, value in own.items():
        if key.startswith(fresh):
            continue
        per_subject = key.startswith(("tok_emb.", "head_id."))
        if key in source and source[key].shape == value.shape:
            update[key] = source[key]
        elif not per_subject:
            raise UserInputError(
                f"The weights of {init.path} do not fit this model ({key} missing or of another "
                "shape); fine-tune with the pre-training's data.dt and frame settings"
            )
    model.load_state_dict({**own, **update})


INIT = StageInit(("neuroformer",), False, _prepare, _apply)
