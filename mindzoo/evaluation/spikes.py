"""Metrics of spike models on a spikes store's test trials.

:func:`evaluate_spike_model` is the entry point (per-subject metrics); the metrics themselves are
plain functions:

- :func:`bits_per_spike`: held-out co-bps against a homogeneous-rate model fitted on the
  training windows (Pei et al. 2021, Neural Latents Benchmark);
- :func:`generate_trials`, :func:`psth`, :func:`psth_correlation`: closed-loop generation of the
  test trials and the PSTH correlation of generated vs recorded activity;
- :func:`r2_score`, :func:`pearson`: behaviour decoding;
- :func:`auroc`, :func:`coupling_metrics`: recovery of the simulator's coupling graph.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.stats import rankdata
from tqdm import tqdm

from mindzoo.datasets.spike_views import SpikeDataConfig, SpikeWindows
from mindzoo.datasets.store import TensorStore
from mindzoo.errors import UserInputError
from mindzoo.models.spike_baselines import Homogeneous, HomogeneousConfig, iter_batches

BATCH = 256


def bits_per_spike(ll_model: float, ll_reference: float, n_spikes: float) -> float:
    """(LL_model - LL_reference) / (n_spikes * ln 2): bits per spike; LLs in nats, summed over
    the same windows, ``n_spikes`` the spikes in them (NaN without spikes)."""
    if n_spikes <= 0:
        return float("nan")
    return float((ll_model - ll_reference) / (n_spikes * math.log(2.0)))


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (Mann-Whitney U / (n+ n-),
    ties counted 1/2 via average ranks); NaN when a class is empty."""
    scores, labels = np.asarray(scores, float).ravel(), np.asarray(labels, bool).ravel()
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if not n_pos or not n_neg:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two flat arrays (NaN when either is constant)."""
    a, b = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float((a**2).sum() * (b**2).sum()))
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def r2_score(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Coefficient of determination per column: 1 - SS_res / SS_tot (SS_tot about the column
    mean of ``true``), float64 [D]; inputs [n, D]."""
    true, pred = np.asarray(true, float), np.asarray(pred, float)
    ss_res = ((true - pred) ** 2).sum(0)
    ss_tot = ((true - true.mean(0)) ** 2).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ss_tot > 0, 1 - ss_res / ss_tot, np.nan)


def coupling_metrics(score: np.ndarray, truth: np.ndarray, hub_fraction: float = 0.1) -> dict:
    """Recovery of a directed graph ``truth`` [U, U] (row i -> column j) by ``score`` [U, U].

    ``coupling_auroc``: AUROC of |score| for |truth| > 0 over off-diagonal pairs;
    ``coupling_auroc_excitatory``: AUROC of the signed score for truth > 0;
    ``coupling_direction_accuracy``: over pairs with exactly one true direction i -> j, the
    fraction with |score[i, j]| > |score[j, i]|; ``coupling_hub_recall``: overlap of the true
    top-k out-degree units and the k units of largest summed outgoing |score|, k =
    max(1, round(hub_fraction * U)), divided by k.
    """
    score, truth = np.asarray(score, float), np.asarray(truth, float)
    n = len(truth)
    off = ~np.eye(n, dtype=bool)
    edges = truth != 0
    out = {
        "coupling_auroc": auroc(np.abs(score[off]), edges[off]),
        "coupling_auroc_excitatory": auroc(score[off], truth[off] > 0),
    }
    one_way = edges & ~edges.T & off
    if one_way.any():
        i, j = np.nonzero(one_way)
        out["coupling_direction_accuracy"] = float(
            np.mean(np.abs(score[i, j]) > np.abs(score[j, i]))
        )
    k = max(1, round(hub_fraction * n))
    degree = (edges & off).sum(1)
    if degree.any():
        strength = np.where(off, np.abs(score), 0).sum(1)
        true_hubs = set(np.argsort(-degree, kind="stable")[:k].tolist())
        found = set(np.argsort(-strength, kind="stable")[:k].tolist())
        out["coupling_hub_recall"] = len(true_hubs & found) / k
    return out


def psth(counts: np.ndarray, condition: np.ndarray, window: np.ndarray, n_conditions: int):
    """Trial-averaged rate per condition, unit and window of trial time (spikes per window).

    ``counts`` [n_windows, U] spikes of each test window, ``condition`` [n_windows] code,
    ``window`` [n_windows] index k in its trial. Returns float64 [C, U, K], NaN where no trial
    of the condition has a k-th window.
    """
    n_k = int(window.max()) + 1 if len(window) else 0
    sums = np.zeros((n_conditions, counts.shape[1], n_k))
    n = np.zeros((n_conditions, n_k))
    np.add.at(sums, (condition, slice(None), window), counts)
    np.add.at(n, (condition, window), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n[:, None, :] > 0, sums / n[:, None, :], np.nan)


def psth_correlation(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(mean per-unit, pooled) Pearson correlation of two PSTHs [C, U, K].

    Per unit: correlation over the (condition, k) entries both define, averaged over the units
    whose two PSTHs both vary there; pooled: one correlation over all defined (c, u, k).
    """
    valid = ~(np.isnan(a) | np.isnan(b))
    per_unit = []
    for u in range(a.shape[1]):
        mask = valid[:, u]
        x, y = a[:, u][mask], b[:, u][mask]
        if len(x) > 1 and x.std() > 0 and y.std() > 0:
            per_unit.append(pearson(x, y))
    mean = float(np.mean(per_unit)) if per_unit else float("nan")
    return mean, pearson(a[valid], b[valid]) if valid.sum() > 1 else float("nan")


def _device(model: torch.nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def log_likelihoods(model: Any, reference: Homogeneous, view: SpikeWindows, subject: str):
    """Summed LL (nats) of ``model`` and ``reference``, spikes and windows over the test
    windows not cut at max_tokens; and the number cut. Returns a dict of floats."""
    device = _device(model)
    ll_model = ll_ref = n_spikes = 0.0
    n_windows = n_truncated = 0
    for batch in iter_batches(view, subject, BATCH):
        keep = ~batch.truncated
        n_truncated += int(batch.truncated.sum())
        if not keep.any():
            continue
        ll = model.window_log_likelihood(batch.to(device)).double().cpu()
        ll_model += float(ll[keep].sum())
        ll_ref += float(reference.window_log_likelihood(batch)[keep].sum())
        n_spikes += float(batch.counts[keep].sum())
        n_windows += int(keep.sum())
    return {
        "bits_per_spike": bits_per_spike(ll_model, ll_ref, n_spikes),
        "ll_per_spike_nats": ll_model / n_spikes if n_spikes else float("nan"),
        "ll_homogeneous_per_spike_nats": ll_ref / n_spikes if n_spikes else float("nan"),
        "n_spikes": n_spikes,
        "n_windows": float(n_windows),
        "n_truncated": float(n_truncated),
    }


def generate_trials(
    model: Any, view: SpikeWindows, subject: str, generator: torch.Generator
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Closed-loop generation of every test trial of ``subject``.

    All trials advance together window by window; window k of every trial is sampled from the
    model given a past in which windows < k of all test trials hold the generated spikes and
    everything else the recorded ones (so the first window's past is the recorded activity
    before the trial). Generated spikes sit at bin centres. Returns (the subject's window
    table, generated counts [n_windows, U, n_bins], recorded counts [same]) in table order.
    """
    part = view.subject_slice(subject)
    rows = view.windows.iloc[part].reset_index(drop=True)
    session = view.session(subject)
    cfg, info = view.config, view.info
    k_of = np.round(rows["trial_time"].to_numpy() / cfg.window).astype(int)
    starts = rows["start"].to_numpy(np.float64)
    order = np.argsort(starts, kind="stable")
    sorted_starts = starts[order]
    idx = np.searchsorted(sorted_starts, session.times, "right") - 1
    inside = (idx >= 0) & (session.times < sorted_starts[np.maximum(idx, 0)] + cfg.window)
    replaced_at = np.where(inside, k_of[order][np.maximum(idx, 0)], np.iinfo(np.int64).max)
    gen_times, gen_units = [np.zeros(0)], [np.zeros(0, np.int64)]
    generated = np.zeros((len(rows), info.units[subject], info.n_bins), np.float32)
    recorded = np.zeros_like(generated)
    device = _device(model)
    for k in range(int(k_of.max()) + 1 if len(rows) else 0):
        keep = replaced_at >= k
        times = np.concatenate([session.times[keep], *gen_times])
        units = np.concatenate([session.units[keep].astype(np.int64), *gen_units])
        by_time = np.argsort(times, kind="stable")
        spikes = (times[by_time], units[by_time])
        at = np.flatnonzero(k_of == k)
        for lo in range(0, len(at), BATCH):
            chunk = at[lo : lo + BATCH]
            batch = view.windows_at(subject, starts[chunk], rows.iloc[chunk], session, spikes)
            recorded_batch = view.windows_at(subject, starts[chunk], rows.iloc[chunk], session)
            recorded[chunk] = recorded_batch.counts.numpy()
            with torch.no_grad():
                draws = model.sample(batch.to(device), generator)
            for row, (bins, unit_rows) in zip(chunk, draws, strict=True):
                bins, unit_rows = np.asarray(bins, int), np.asarray(unit_rows, int)
                np.add.at(generated[row], (unit_rows, bins), 1.0)
                gen_times.append(starts[row] + (bins + 0.5) * cfg.dt)
                gen_units.append(unit_rows.astype(np.int64))
    return rows, generated, recorded


def generation_metrics(
    rows: pd.DataFrame, generated: np.ndarray, recorded: np.ndarray, window: float
) -> dict[str, float]:
    """PSTH correlations (per window of trial time, no smoothing) and the rate ratio.

    ``psth_corr``/``psth_corr_pooled``: :func:`psth_correlation` of generated vs recorded
    PSTHs; ``psth_corr_recorded_split_half``: the same between the recorded PSTHs of odd and
    even trials of each condition (a ceiling); ``generated_rate_ratio``: generated spikes /
    recorded spikes over the same windows.
    """
    condition = rows["condition"].to_numpy(int)
    k = np.round(rows["trial_time"].to_numpy() / window).astype(int)
    n_c = int(condition.max()) + 1 if len(rows) else 0
    gen, rec = generated.sum(2), recorded.sum(2)
    mean, pooled = psth_correlation(psth(gen, condition, k, n_c), psth(rec, condition, k, n_c))
    trial = rows["trial"].to_numpy(int)
    half = np.zeros(len(rows), bool)
    for c in np.unique(condition):
        trials_c = np.unique(trial[condition == c])
        odd = np.isin(trial, trials_c[1::2])
        half |= odd
    odd_psth = psth(rec[half], condition[half], k[half], n_c)
    even_psth = psth(rec[~half], condition[~half], k[~half], n_c)
    width = min(odd_psth.shape[2], even_psth.shape[2])
    split, _ = psth_correlation(odd_psth[..., :width], even_psth[..., :width])
    n_rec = float(rec.sum())
    return {
        "psth_corr": mean,
        "psth_corr_pooled": pooled,
        "psth_corr_recorded_split_half": split,
        "generated_rate_ratio": float(gen.sum()) / n_rec if n_rec else float("nan"),
        "generated_rate_hz": float(gen.sum()) / max(len(rows) * window * gen.shape[1], 1e-12),
        "recorded_rate_hz": n_rec / max(len(rows) * window * gen.shape[1], 1e-12),
    }


def behaviour_predictions(model: Any, view: SpikeWindows, subject: str):
    """(recorded [n, D], predicted [n, D]) behaviour over the test windows, or None when the
    model does not predict behaviour or no variable is chosen."""
    if not view.info.behaviour:
        return None
    device = _device(model)
    true, pred = [], []
    try:
        for batch in iter_batches(view, subject, BATCH):
            with torch.no_grad():
                pred.append(model.predict_behaviour(batch.to(device)).float().cpu().numpy())
            true.append(batch.behaviour.numpy())
    except UserInputError:
        return None
    if not true:
        return None
    return np.concatenate(true), np.concatenate(pred)


def behaviour_names(info: Any) -> list[str]:
    """One name per behaviour column (``name`` or ``name_d`` for multi-dimensional ones)."""
    names = []
    for name, dims in zip(info.behaviour, info.behaviour_dims, strict=True):
        names += [name] if dims == 1 else [f"{name}_{d}" for d in range(dims)]
    return names


def evaluate_spike_model(
    model: Any,
    store: TensorStore,
    subjects: list[str],
    data_config: SpikeDataConfig,
    seed: int = 0,
    generate: bool = True,
    figures_dir: Path | None = None,
    progress: bool = False,
) -> dict[str, dict[str, float]]:
    """Per-subject metrics of ``model`` on the store's test trials (see the module docstring):
    likelihood (when the model has one), closed-loop generation (``generate``), behaviour
    (when it predicts it) and coupling recovery (when it scores coupling and the store has
    ground truth); PNG figures into ``figures_dir`` when given."""
    model.eval()
    test = SpikeWindows(store, subjects, "test", data_config, info=model.info)
    train = SpikeWindows(store, subjects, "train", data_config, info=model.info)
    reference = Homogeneous(HomogeneousConfig(), info=model.info)
    reference.fit(train)
    has_ll = getattr(model, "has_likelihood", True)
    generator = torch.Generator().manual_seed(seed)
    results: dict[str, dict[str, float]] = {}
    for subject in tqdm(subjects, desc="evaluate", disable=not progress):
        metrics: dict[str, float] = {}
        figures: dict[str, Any] = {}
        if has_ll:
            with torch.no_grad():
                metrics.update(log_likelihoods(model, reference, test, subject))
            if generate and test.sizes[test.subjects.index(subject)]:
                rows, generated, recorded = generate_trials(model, test, subject, generator)
                metrics.update(generation_metrics(rows, generated, recorded, data_config.window))
                figures["raster"] = (rows, generated, recorded)
        behaviour = behaviour_predictions(model, test, subject)
        if behaviour is not None:
            true, pred = behaviour
            r2 = r2_score(true, pred)
            rs = [pearson(true[:, d], pred[:, d]) for d in range(true.shape[1])]
            for name, value, r in zip(behaviour_names(model.info), r2, rs, strict=True):
                metrics[f"behaviour_r2_{name}"] = float(value)
                metrics[f"behaviour_pearson_{name}"] = float(r)
            metrics["behaviour_r2"] = float(np.nanmean(r2))
            metrics["behaviour_pearson"] = float(np.nanmean(rs))
            figures["behaviour"] = (true, pred, behaviour_names(model.info))
        truth = store.spikes(subject).truth("coupling")
        score = model.coupling(test, subject) if truth is not None else None
        if score is not None:
            metrics.update(coupling_metrics(np.asarray(score), truth))
            figures["coupling"] = (np.asarray(score), truth)
        results[subject] = metrics
        if figures_dir is not None and figures:
            from mindzoo.evaluation.spike_figures import write_spike_figures

            write_spike_figures(Path(figures_dir), subject, figures, data_config)
    return results
