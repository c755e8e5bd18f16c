"""PNG figures of a spike model's evaluation (matplotlib's Agg canvas, no pyplot state).

- ``<subject>_raster.png``: recorded vs closed-loop generated spikes of a few test trials,
  units sorted by recorded rate (highest at the top), same axes;
- ``<subject>_coupling.png``: recovered coupling score next to the true coupling matrix;
- ``<subject>_behaviour.png``: recorded vs predicted behaviour over the test windows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mindzoo.datasets.spike_views import SpikeDataConfig

N_RASTER_TRIALS = 3
N_BEHAVIOUR_WINDOWS = 400


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100)
    return path


def _trial_events(counts: np.ndarray, k: np.ndarray, dt: float, n_bins: int):
    """Spike (time in trial s, unit) of one trial's windows [n, U, n_bins] at window index k."""
    w, u, b = np.nonzero(counts)
    reps = counts[w, u, b].astype(int)
    times = (k[w] * n_bins + b + 0.5) * dt
    return np.repeat(times, reps), np.repeat(u, reps)


def raster_figure(
    path: Path,
    rows: pd.DataFrame,
    generated: np.ndarray,
    recorded: np.ndarray,
    config: SpikeDataConfig,
    n_trials: int = N_RASTER_TRIALS,
) -> Path:
    """Recorded (left) vs generated (right) rasters of the first ``n_trials`` test trials.

    ``rows``: the windows table; ``generated``/``recorded``: counts [n_windows, U, n_bins].
    """
    n_bins = recorded.shape[2]
    order = np.argsort(-recorded.sum(axis=(0, 2)), kind="stable")  # rank of each unit
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    trials = list(dict.fromkeys(rows["trial"].tolist()))[:n_trials]
    k_all = np.round(rows["trial_time"].to_numpy() / config.window).astype(int)
    fig = Figure(figsize=(10, 2.2 * max(len(trials), 1)))
    axes = fig.subplots(max(len(trials), 1), 2, squeeze=False, sharex=True, sharey=True)
    for r, trial in enumerate(trials):
        mask = rows["trial"].to_numpy() == trial
        for c, (counts, title) in enumerate(((recorded, "recorded"), (generated, "generated"))):
            times, units = _trial_events(counts[mask], k_all[mask], config.dt, n_bins)
            ax = axes[r, c]
            ax.scatter(times, rank[units], s=2, marker="|", color="black")
            ax.set_title(f"trial {trial}: {title}", fontsize=9)
            ax.set_ylim(-0.5, len(order) - 0.5)
            ax.invert_yaxis()
    for ax in axes[-1]:
        ax.set_xlabel("time in trial (s)")
    for ax in axes[:, 0]:
        ax.set_ylabel("unit (by rate)")
    fig.tight_layout()
    return _save(fig, path)


def coupling_figure(path: Path, score: np.ndarray, truth: np.ndarray) -> Path:
    """Recovered coupling score and true coupling [U, U] (row i -> column j), diagonal blanked,
    each on a symmetric colour scale."""
    fig = Figure(figsize=(9, 4))
    axes = fig.subplots(1, 2)
    for ax, matrix, title in ((axes[0], score, "recovered"), (axes[1], truth, "true")):
        shown = np.array(matrix, dtype=float)
        np.fill_diagonal(shown, np.nan)
        limit = float(np.nanmax(np.abs(shown))) if np.isfinite(shown).any() else 1.0
        image = ax.imshow(shown, cmap="RdBu_r", vmin=-limit or -1, vmax=limit or 1)
        ax.set_title(f"{title} coupling (row -> column)", fontsize=9)
        ax.set_xlabel("target unit")
        ax.set_ylabel("source unit")
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    return _save(fig, path)


def behaviour_figure(
    path: Path, true: np.ndarray, pred: np.ndarray, names: list[str], n: int = N_BEHAVIOUR_WINDOWS
) -> Path:
    """Recorded vs predicted behaviour [n_windows, D] over the first ``n`` test windows."""
    d = true.shape[1]
    fig = Figure(figsize=(10, 2.2 * d))
    axes = fig.subplots(d, 1, squeeze=False)[:, 0]
    for j, ax in enumerate(axes):
        ax.plot(true[:n, j], color="black", lw=1, label="recorded")
        ax.plot(pred[:n, j], color="tab:red", lw=1, label="predicted")
        ax.set_ylabel(names[j] if j < len(names) else f"var {j}")
        ax.legend(fontsize=8, loc="upper right")
    axes[-1].set_xlabel("test window")
    fig.tight_layout()
    return _save(fig, path)


def write_spike_figures(
    out_dir: Path, subject: str, figures: dict[str, Any], config: SpikeDataConfig
) -> list[Path]:
    """Write the figures whose inputs ``figures`` holds (keys ``raster``: (rows, generated,
    recorded), ``coupling``: (score, truth), ``behaviour``: (true, pred, names))."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if "raster" in figures:
        written.append(raster_figure(out_dir / f"{subject}_raster.png", *figures["raster"], config))
    if "coupling" in figures:
        written.append(coupling_figure(out_dir / f"{subject}_coupling.png", *figures["coupling"]))
    if "behaviour" in figures:
        written.append(
            behaviour_figure(out_dir / f"{subject}_behaviour.png", *figures["behaviour"])
        )
    return written
