"""Baselines for spiking data: homogeneous rate, PSTH, Poisson GLM, ridge behaviour decoder.

All are :class:`~mindzoo.models.spike_base.SpikeModel` ``nn.Module``s, so every run saves
``model.safetensors``. Closed-form fits (:meth:`Homogeneous.fit`, :meth:`PSTH.fit`,
:meth:`SpikeRidge.fit`) keep what they fit in buffers whose shapes are fixed at construction
from the model config and the :class:`~mindzoo.datasets.spike_views.SpikeInfo`, so a saved run
reloads with ``load_state_dict`` into a freshly built model. The Poisson GLM is trained by the
one trainer (:meth:`PoissonGLM.training_step`: mean Poisson NLL of the current window counts).

Rates are *expected counts per bin* of ``data.dt`` (the contract of
:class:`~mindzoo.models.spike_base.RateModel`); buffers named ``*_rate`` are in spikes/s.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from mindzoo.datasets.spike_views import SpikeBatch, SpikeInfo, condition_codes
from mindzoo.errors import UserInputError
from mindzoo.models.spike_base import RateModel, SpikeModel

REFERENCE_SHAPES = {
    "info": SpikeInfo(
        units={"sub-01": 120},
        n_dt=25,  # the default data: 0.25 s past, 0.05 s window, 10 ms bins
        n_bins=5,
        n_prev_bins=25,
        frame_shape=(16, 16),
        behaviour=["speed"],
        behaviour_dims=[1],
    )
}


def _key(subject: str) -> str:
    """A subject name usable as a buffer/module name (no dots)."""
    return subject.replace(".", "_")


def iter_batches(view: Any, subject: str, batch_size: int = 512) -> Iterator[SpikeBatch]:
    """The windows of ``subject`` in ``view`` (a SpikeWindows) as consecutive batches."""
    part = view.subject_slice(subject)
    for lo in range(part.start, part.stop, batch_size):
        yield view.batch(range(lo, min(lo + batch_size, part.stop)))


def _window_index(batch: SpikeBatch, window: float) -> torch.Tensor:
    """Index k of each row's window within its trial (trial_time = k * window), long [B]."""
    return torch.round(batch.trial_time.double() / window).long()


class HomogeneousConfig(BaseModel):
    """Settings of the homogeneous-rate baseline."""

    model_config = ConfigDict(extra="forbid")

    min_rate: float = Field(
        0.01, ge=0, description="Floor of a unit's rate (spikes/s), for units silent in training."
    )


class Homogeneous(RateModel):
    """One constant rate per unit and subject: spikes / time over the training windows."""

    name = "spike-homogeneous"

    def __init__(self, config: HomogeneousConfig, info: SpikeInfo) -> None:
        super().__init__(info)
        self.config = config
        for subject, n in info.units.items():
            self.register_buffer(f"rate_{_key(subject)}", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("dt", torch.tensor(0.0, dtype=torch.float64))

    def fit(self, train: Any) -> None:
        """Rate of unit u (spikes/s) = its spikes in the training windows / their total time."""
        self.dt.fill_(train.config.dt)
        window = train.config.window
        for subject in self.info.units:
            total = torch.zeros(self.info.units[subject], dtype=torch.float64)
            n_windows = 0
            for batch in iter_batches(train, subject):
                total += batch.counts.double().sum(dim=(0, 2))
                n_windows += len(batch)
            rate = total / max(n_windows * window, 1e-12)
            getattr(self, f"rate_{_key(subject)}").copy_(rate.clamp_min(self.config.min_rate))

    def unit_rates(self, subject: str) -> torch.Tensor:
        """Fitted rate of each unit, spikes/s, float64 [U]."""
        self.check_subject(subject)
        return getattr(self, f"rate_{_key(subject)}")

    def rates(self, batch: SpikeBatch) -> torch.Tensor:
        per_bin = self.unit_rates(batch.subject) * self.dt
        return per_bin[None, :, None].expand(len(batch), -1, self.info.n_bins)


class PSTHConfig(BaseModel):
    """Settings of the PSTH baseline (rate per unit, condition and bin of trial time)."""

    model_config = ConfigDict(extra="forbid")

    pseudo_count: float | None = Field(
        None, ge=0, description="Shrinkage towards the homogeneous rate, in pseudo-trials "
        "(None: the best of pseudo_grid on the validation windows)."
    )  # fmt: skip
    pseudo_grid: list[float] = Field(
        default_factory=lambda: [0.1, 0.3, 1.0, 3.0, 10.0, 30.0],
        description="Pseudo-counts tried on the validation windows.",
    )
    max_conditions: int = Field(32, ge=1, description="Conditions the buffers hold.")
    max_trial_bins: int = Field(1000, ge=1, description="Bins of trial time the buffers hold.")
    min_rate: float = Field(0.01, ge=0, description="Floor of the homogeneous rate (spikes/s).")


class PSTH(RateModel):
    """Trial-averaged rate per unit, condition and trial-time bin, shrunk towards the unit's
    homogeneous rate: ``r[c,u,t] = (S[c,u,t] + a * h[u]) / (n[c,t] + a)`` expected counts per
    bin, with ``S`` the summed training counts, ``n`` the training trials covering the bin,
    ``h`` the homogeneous count per bin and ``a`` the pseudo-count; conditions or bins unseen in
    training get ``h``."""

    name = "spike-psth"

    def __init__(self, config: PSTHConfig, info: SpikeInfo) -> None:
        super().__init__(info)
        self.config = config
        c, t = config.max_conditions, config.max_trial_bins
        for subject, n in info.units.items():
            k = _key(subject)
            self.register_buffer(f"sums_{k}", torch.zeros(c, n, t))
            self.register_buffer(f"trials_{k}", torch.zeros(c, t))
            self.register_buffer(f"base_{k}", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("pseudo", torch.tensor(1.0, dtype=torch.float64))
        self.register_buffer("dt", torch.tensor(0.0, dtype=torch.float64))

    def fit(self, train: Any) -> None:
        """Sum the training counts per (condition, unit, bin); pick the pseudo-count on the
        validation windows (highest Poisson log-likelihood) unless the config fixes it."""
        from mindzoo.datasets.spike_views import SpikeWindows

        cfg, info = self.config, self.info
        self.dt.fill_(train.config.dt)
        window = train.config.window
        for subject in info.units:
            k = _key(subject)
            n_conditions = int(condition_codes(train.session(subject).trials).max()) + 1
            if n_conditions > cfg.max_conditions:
                raise UserInputError(
                    f"{subject} has {n_conditions} conditions; PSTH holds {cfg.max_conditions}: "
                    f"--set model.max_conditions={n_conditions}"
                )
            sums, trials = getattr(self, f"sums_{k}"), getattr(self, f"trials_{k}")
            sums.zero_(), trials.zero_()
            total, n_windows = torch.zeros(info.units[subject], dtype=torch.float64), 0
            for batch in iter_batches(train, subject):
                first = _window_index(batch, window) * info.n_bins
                last = int(first.max()) + info.n_bins if len(batch) else 0
                if last > cfg.max_trial_bins:
                    raise UserInputError(
                        f"{subject}'s training trials span {last} bins of {train.config.dt} s; "
                        f"PSTH holds {cfg.max_trial_bins}: --set model.max_trial_bins={last}"
                    )
                bins = first[:, None] + torch.arange(info.n_bins)[None, :]  # [B, n_bins]
                cond = batch.condition[:, None].expand_as(bins)
                trials.index_put_((cond, bins), torch.ones(bins.shape), accumulate=True)
                values = batch.counts.permute(0, 2, 1)  # [B, n_bins, U]
                sums.permute(0, 2, 1).index_put_((cond, bins), values, accumulate=True)
                total += batch.counts.double().sum(dim=(0, 2))
                n_windows += len(batch)
            base = total / max(n_windows * info.n_bins, 1)
            floor = cfg.min_rate * train.config.dt
            getattr(self, f"base_{k}").copy_(base.clamp_min(floor))
        if cfg.pseudo_count is not None:
            self.pseudo.fill_(cfg.pseudo_count)
            return
        val = SpikeWindows(train.store, train.subjects, "val", train.config, info=train.info)
        if not len(val):
            self.pseudo.fill_(1.0)
            return
        batches = [b for s in info.units for b in iter_batches(val, s)]
        scores = []
        for a in cfg.pseudo_grid:
            self.pseudo.fill_(a)
            scores.append(sum(float(self.window_log_likelihood(b).sum()) for b in batches))
        self.pseudo.fill_(cfg.pseudo_grid[int(np.argmax(scores))])

    def rates(self, batch: SpikeBatch) -> torch.Tensor:
        self.check_subject(batch.subject)
        k = _key(batch.subject)
        sums, trials = getattr(self, f"sums_{k}"), getattr(self, f"trials_{k}")
        base = getattr(self, f"base_{k}")
        device = sums.device
        window = float(self.dt) * self.info.n_bins
        bins = _window_index(batch, window).to(device)[:, None] * self.info.n_bins
        bins = bins + torch.arange(self.info.n_bins, device=device)[None, :]  # [B, n_bins]
        cond = batch.condition.to(device)[:, None].expand_as(bins)
        known = (cond >= 0) & (cond < sums.shape[0]) & (bins < sums.shape[2]) & (bins >= 0)
        c, t = cond.clamp(0, sums.shape[0] - 1), bins.clamp(0, sums.shape[2] - 1)
        summed = sums[c, :, t].double()  # [B, n_bins, U]
        n = trials[c, t].double()[..., None]
        a = self.pseudo
        shrunk = (summed + a * base) / (n + a).clamp_min(1e-12)
        use = known[..., None] & ((n > 0) | (a > 0))
        out = torch.where(use, shrunk, base.expand_as(shrunk))
        return out.permute(0, 2, 1)


class PoissonGLMConfig(BaseModel):
    """Settings of the Poisson GLM (stimulus filter + spike-history coupling)."""

    model_config = ConfigDict(extra="forbid")

    tau_bins: list[float] = Field(
        default_factory=lambda: [1.0, 2.0, 4.0],
        description="Time constants of the exponential history kernels, in bins of data.dt.",
    )
    stim_rank: int = Field(2, ge=0, description="Rank of the spatial x temporal stimulus filter.")
    stim_frames: int = Field(3, ge=1, description="Latest frames the stimulus filter reads.")
    frame_pool: int = Field(8, ge=1, description="Frames are average-pooled to this side.")
    l2: float = Field(1e-4, ge=0, description="L2 penalty on coupling and stimulus weights.")
    l1: float = Field(0.0, ge=0, description="L1 penalty on the coupling weights.")
    max_log_rate: float = Field(8.0, description="Clamp of the log expected count per bin.")


class _GLMSubject(nn.Module):
    """One subject's GLM parameters: bias [U], coupling [K, U(source), U(target)], stimulus."""

    def __init__(self, n_units: int, n_basis: int, pixels: int, config: PoissonGLMConfig) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.full((n_units,), -3.0))
        self.coupling = nn.Parameter(torch.zeros(n_basis, n_units, n_units))
        rank = config.stim_rank if pixels else 0
        self.spatial = nn.Parameter(torch.randn(rank, pixels) / math.sqrt(max(pixels, 1)))
        self.temporal = nn.Parameter(torch.ones(rank, config.stim_frames) / config.stim_frames)
        self.readout = nn.Parameter(torch.zeros(n_units, rank))


class PoissonGLM(RateModel):
    """Poisson GLM: ``log r[u,b] = bias[u] + stim[u] + sum_{i,k} W[k,i,u] * (h_k * x_i)[b]``,
    ``x_i`` the counts of unit i over the past and current window, ``h_k`` exponential kernels
    over lags >= 1 bin (strictly causal, so the window likelihood is autoregressive), ``stim``
    a low-rank spatial x temporal filter of the pooled frames. ``r`` is the expected count per
    bin."""

    name = "spike-glm"

    def __init__(self, config: PoissonGLMConfig, info: SpikeInfo) -> None:
        super().__init__(info)
        self.config = config
        self.max_lag = info.n_prev_bins + info.n_bins - 1
        lags = torch.arange(1, self.max_lag + 1, dtype=torch.float32)
        taus = torch.tensor(config.tau_bins, dtype=torch.float32)
        self.register_buffer("basis", torch.exp(-(lags[None, :] - 1) / taus[:, None]))  # [K, L]
        self.pool = 0
        if info.frame_shape is not None and config.stim_rank:
            self.pool = min(config.frame_pool, *info.frame_shape)
        self.glm = nn.ModuleDict(
            {
                _key(s): _GLMSubject(n, len(config.tau_bins), self.pool**2, config)
                for s, n in info.units.items()
            }
        )

    def fit(self, train: Any) -> None:
        """Start the bias at the log mean count per bin of the training windows."""
        for subject in self.info.units:
            total = torch.zeros(self.info.units[subject], dtype=torch.float64)
            n = 0
            for batch in iter_batches(train, subject):
                total += batch.counts.double().sum(dim=(0, 2))
                n += len(batch) * self.info.n_bins
            with torch.no_grad():
                self.glm[_key(subject)].bias.copy_(torch.log(total / max(n, 1) + 1e-4))

    def history(self, batch: SpikeBatch) -> torch.Tensor:
        """Kernel-filtered spike history of each current bin, float32 [B, U, K, n_bins]."""
        device = self.basis.device
        counts = torch.cat([batch.prev_counts, batch.counts], dim=2).to(device).float()
        b, u, t = counts.shape
        x = F.pad(counts.reshape(b * u, 1, t), (self.max_lag, 0))
        weight = self.basis.flip(-1)[:, None, :]  # out[t] = sum_lag basis[lag] x[t - lag]
        out = F.conv1d(x, weight)[..., :t]  # [B*U, K, T]
        return out.reshape(b, u, -1, t)[..., self.info.n_prev_bins :]

    def _stimulus(self, params: _GLMSubject, batch: SpikeBatch) -> torch.Tensor | None:
        if not self.pool or batch.frames is None or not params.readout.shape[1]:
            return None
        frames = batch.frames.to(self.basis.device).float()[:, :, 0]  # [B, n_frames, h, w]
        m = min(self.config.stim_frames, frames.shape[1])
        pooled = F.adaptive_avg_pool2d(frames[:, -m:], self.pool).flatten(2)  # [B, m, p*p]
        per_rank = torch.einsum("bmp,rp->brm", pooled - 0.5, params.spatial)
        drive = (per_rank * params.temporal[None, :, -m:]).sum(-1)  # [B, R]
        return drive @ params.readout.T  # [B, U]

    def forward(self, batch: SpikeBatch) -> torch.Tensor:
        """Log expected count per bin, float32 [B, U, n_bins]."""
        self.check_subject(batch.subject)
        params = self.glm[_key(batch.subject)]
        drive = torch.einsum("bikn,kiu->bun", self.history(batch), params.coupling)
        log_rate = params.bias[None, :, None] + drive
        stim = self._stimulus(params, batch)
        if stim is not None:
            log_rate = log_rate + stim[:, :, None]
        return log_rate.clamp(max=self.config.max_log_rate)

    def rates(self, batch: SpikeBatch) -> torch.Tensor:
        return torch.exp(self(batch))

    def penalty(self, subject: str) -> torch.Tensor:
        """L2 on coupling and stimulus weights plus L1 on coupling, of ``subject``."""
        p = self.glm[_key(subject)]
        l2 = sum((w**2).sum() for w in (p.coupling, p.spatial, p.readout))
        return self.config.l2 * l2 + self.config.l1 * p.coupling.abs().sum()

    def training_step(
        self, batch: SpikeBatch, forward: Callable[..., Any] | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean Poisson NLL per (window, unit, bin) of the current counts (nats, without the
        log k! constant) plus the penalty."""
        log_rate = (forward or self)(batch)
        counts = batch.counts.to(log_rate.device)
        nll = (torch.exp(log_rate) - counts * log_rate).mean()
        penalty = self.penalty(batch.subject)
        return nll + penalty, {"nll": float(nll.detach()), "penalty": float(penalty.detach())}

    def coupling(self, view: Any, subject: str) -> np.ndarray | None:
        """Integrated coupling ``sum_k W[k,i,j] * sum_lag h_k[lag]`` [U, U]: change of unit j's
        log rate summed over lags per spike of unit i (row i -> column j)."""
        self.check_subject(subject)
        weights = self.glm[_key(subject)].coupling.detach()
        mass = self.basis.sum(dim=1)
        return torch.einsum("kij,k->ij", weights, mass).double().cpu().numpy()


class SpikeRidgeConfig(BaseModel):
    """Settings of the ridge behaviour decoder."""

    model_config = ConfigDict(extra="forbid")

    alphas: list[float] = Field(
        default_factory=lambda: [10.0**p for p in range(-2, 7)],
        description="Ridge penalties tried by cross-validation over training trials.",
    )
    n_folds: int = Field(5, ge=2, description="Cross-validation folds (grouped by trial).")
    bin_factor: int | None = Field(
        None,
        ge=1,
        description="Adjacent dt bins summed into one feature; None: all bins read (one count "
        "per unit over the past and current windows; chosen on validation trials, see "
        "docs/decisions.md).",
    )
    history: bool = Field(True, description="Use the past window's counts too.")


class SpikeRidge(SpikeModel):
    """Ridge regression from binned counts (past + current window, per unit; by default one
    count per unit over both) to the behaviour variables at the window centre; a behaviour
    decoder, not a spike model."""

    name = "spike-ridge"
    has_likelihood: ClassVar[bool] = False

    def __init__(self, config: SpikeRidgeConfig, info: SpikeInfo) -> None:
        super().__init__(info)
        self.config = config
        self.n_time = (info.n_prev_bins if config.history else 0) + info.n_bins
        self.bin_factor = config.bin_factor or self.n_time
        self.n_feat_bins = self.n_time // self.bin_factor
        if self.n_feat_bins < 1:
            raise UserInputError(
                f"bin_factor={self.bin_factor} is longer than the {self.n_time} bins read"
            )
        dims = sum(info.behaviour_dims)
        for subject, n in info.units.items():
            k = _key(subject)
            self.register_buffer(
                f"weights_{k}", torch.zeros(n * self.n_feat_bins, dims, dtype=torch.float64)
            )
            self.register_buffer(f"intercept_{k}", torch.zeros(dims, dtype=torch.float64))
            self.register_buffer(f"alpha_{k}", torch.tensor(0.0, dtype=torch.float64))

    def features(self, batch: SpikeBatch) -> torch.Tensor:
        """Counts per unit and (coarse) bin, float64 [B, U * n_feat_bins]."""
        counts = batch.counts
        if self.config.history:
            counts = torch.cat([batch.prev_counts, counts], dim=2)
        f = self.bin_factor
        counts = counts[..., counts.shape[2] - self.n_feat_bins * f :]
        b, u, _ = counts.shape
        return counts.reshape(b, u, self.n_feat_bins, f).sum(-1).reshape(b, -1).double()

    def fit(self, train: Any) -> None:
        """Closed-form ridge per subject; alpha by grouped CV (folds = trial rank % n_folds),
        minimising held-out squared error summed over variables scaled by their variance."""
        if not self.info.behaviour:
            raise UserInputError(
                "spike-ridge decodes behaviour: choose variables with --set data.behaviour=[NAME]"
            )
        for subject in self.info.units:
            stats = self._fold_stats(train, subject)
            alpha = choose_alpha(stats, self.config.alphas)
            w, b = ridge_solve(sum_stats(stats), alpha)
            k = _key(subject)
            getattr(self, f"weights_{k}").copy_(torch.from_numpy(w))
            getattr(self, f"intercept_{k}").copy_(torch.from_numpy(b))
            getattr(self, f"alpha_{k}").fill_(alpha)

    def _fold_stats(self, train: Any, subject: str) -> list[dict[str, np.ndarray]]:
        """Sufficient statistics (n, Sx, Sy, Sxx, Sxy, Syy) of each fold of the windows."""
        trials = np.unique(train.windows["trial"].to_numpy()[train.subject_slice(subject)])
        n_folds = max(1, min(self.config.n_folds, len(trials)))
        fold_of = {int(t): i % n_folds for i, t in enumerate(trials)}
        stats = None
        for batch in iter_batches(train, subject):
            folds = np.array([fold_of[int(t)] for t in batch.trial])
            stats = ridge_fold_stats(
                self.features(batch).numpy(),
                batch.behaviour.double().numpy(),
                folds,
                n_folds,
                stats,
            )
        stats = stats or []
        if not any(s["n"] for s in stats):
            raise UserInputError(f"{subject} has no training windows for spike-ridge")
        return stats

    def predict_behaviour(self, batch: SpikeBatch) -> torch.Tensor:
        self.check_subject(batch.subject)
        k = _key(batch.subject)
        w, b = getattr(self, f"weights_{k}"), getattr(self, f"intercept_{k}")
        return (self.features(batch).to(w.device) @ w + b).float()

    def window_log_likelihood(self, batch: SpikeBatch) -> torch.Tensor:
        raise UserInputError(
            "spike-ridge is a behaviour decoder: it has no spike likelihood (use spike-glm, "
            "spike-psth or neuroformer for bits per spike)"
        )

    def sample(
        self, batch: SpikeBatch, generator: torch.Generator
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        raise UserInputError(
            "spike-ridge is a behaviour decoder: it cannot generate spikes (use spike-glm, "
            "spike-psth or neuroformer)"
        )


def sum_stats(stats: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: sum(s[k] for s in stats) for k in stats[0]}


def ridge_solve(stats: dict[str, np.ndarray], alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Ridge weights [F, D] and intercept [D] from sufficient statistics (centred inside)."""
    n = max(float(stats["n"]), 1.0)
    mx, my = stats["sx"] / n, stats["sy"] / n
    cxx = stats["sxx"] - n * np.outer(mx, mx)
    cxy = stats["sxy"] - n * np.outer(mx, my)
    w = np.linalg.solve(cxx + alpha * np.eye(len(mx)), cxy)
    return w, my - mx @ w


def ridge_fold_stats(
    x: np.ndarray,
    y: np.ndarray,
    folds: np.ndarray,
    n_folds: int,
    stats: list[dict[str, np.ndarray]] | None = None,
) -> list[dict[str, np.ndarray]]:
    """Add rows ``x`` [N, F] / ``y`` [N, D] (float64) to the sufficient statistics (n, Sx, Sy,
    Sxx, Sxy, Syy) of their cross-validation fold ``folds`` [N] (0..n_folds-1); new ones when
    ``stats`` is None. Streaming, so features never have to fit in memory at once."""
    if stats is None:
        f, d = x.shape[1], y.shape[1]
        stats = [
            {
                "n": np.zeros(()),
                "sx": np.zeros(f),
                "sy": np.zeros(d),
                "sxx": np.zeros((f, f)),
                "sxy": np.zeros((f, d)),
                "syy": np.zeros(d),
            }
            for _ in range(n_folds)
        ]
    for fold in np.unique(folds):
        xs, ys, s = x[folds == fold], y[folds == fold], stats[fold]
        s["n"] = s["n"] + len(xs)
        s["sx"] += xs.sum(0)
        s["sy"] += ys.sum(0)
        s["sxx"] += xs.T @ xs
        s["sxy"] += xs.T @ ys
        s["syy"] += (ys**2).sum(0)
    return stats


def choose_alpha(stats: list[dict[str, np.ndarray]], alphas: list[float]) -> float:
    """The ridge penalty of ``alphas`` with the least held-out squared error over the folds
    (each variable's error divided by its variance); the middle one with fewer than 2 folds."""
    if len(stats) < 2:
        return float(alphas[len(alphas) // 2])
    total = sum_stats(stats)
    var = total["syy"] / total["n"] - (total["sy"] / total["n"]) ** 2
    scale = 1.0 / np.maximum(var, 1e-12)
    errors = np.zeros(len(alphas))
    for held in stats:
        if not held["n"]:
            continue
        rest = {k: total[k] - held[k] for k in total}
        for i, alpha in enumerate(alphas):
            w, b = ridge_solve(rest, alpha)
            sse = (
                held["syy"]
                - 2 * (w * held["sxy"]).sum(0)
                - 2 * b * held["sy"]
                + np.einsum("fd,fg,gd->d", w, held["sxx"], w)
                + 2 * b * (held["sx"] @ w)
                + held["n"] * b**2
            )
            errors[i] += float((sse * scale).sum())
    return float(alphas[int(np.argmin(errors))])
