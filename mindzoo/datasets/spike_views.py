"""Torch-side view of a spikes store: windows of spikes as Neuroformer tokens and binned counts.

A :class:`SpikeWindows` dataset is one split of some subjects (global row ``i`` belongs to the
subject whose cumulative range holds it, as in the other views). Its rows are *windows*: each
trial ``[start, stop)`` of the split is tiled by non-overlapping windows of ``data.window``
seconds (Neuroformer's current window, 0.05 s). A window's batch row holds

- the **current window** as tokens, one per spike: unit id and time offset quantised at
  ``data.dt`` (0.01 s), framed ``[SOS, spikes..., EOS, PAD...]``; spikes are ordered by (time
  bin, unit), a canonical order, so the token sequence and the window's count matrix determine
  each other and a token model's likelihood is a likelihood of the counts (comparable with
  rate models). Windows with more than ``max_tokens`` spikes are cut (``truncated``, no EOS);
- the **past window** ``[start - prev_window, start)`` as tokens (unit id, offset bin from the
  past window's start), PAD-padded, at most ``max_prev_tokens`` (the latest are kept);
- the same two windows as **counts** ``[unit, bin]`` at ``dt`` (rate models, GLM history);
- **frames**: the stimulus frame shown at ``n_frames`` instants ``frame_step`` apart ending at
  the window's end, grey levels in [0, 1] ``[n_frames, 1, h, w]`` (None without stimulus);
- **behaviour** ``[n_behaviour]``: each chosen variable at the window's centre (linear
  interpolation of its grid), None when none is chosen.

Vocabulary per subject: unit rows ``0..U-1``, then ``EOS = U``, ``SOS = U + 1``,
``PAD = U + 2``; time bins ``0..n_dt-1`` then the same three specials (``n_dt`` covers the
longer of the two windows). Sessions are read into memory once per subject (a session's spikes
are small: 10^6 spikes = 12 MB).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field

from mindzoo.datasets.spike_store import SpikeRecording
from mindzoo.datasets.store import SPLITS, TensorStore
from mindzoo.errors import UserInputError


class SpikeDataConfig(BaseModel):
    """How windows are cut from a spikes store and tokenised: Neuroformer's values
    (``configs/Visnav/lateral/mconf_pretrain.yaml`` of the official code) except the past window,
    0.25 s instead of 0.05 s (chosen on validation trials, docs/decisions.md; ``preset=paper``
    keeps 0.05 s)."""

    model_config = ConfigDict(extra="forbid")

    window: float = Field(0.05, gt=0, description="Current window (s).")
    prev_window: float = Field(0.25, gt=0, description="Past-spikes context window (s).")
    dt: float = Field(0.01, gt=0, description="Time resolution of tokens and counts (s).")
    max_tokens: int = Field(100, ge=1, description="Spikes per current window (more: cut).")
    max_prev_tokens: int = Field(700, ge=1, description="Spikes kept from the past window.")
    n_frames: int = Field(3, ge=0, description="Stimulus frames per window (0: none).")
    frame_step: float = Field(0.05, gt=0, description="Time between the frames given (s).")
    behaviour: list[str] = Field(
        default_factory=list, description="Behaviour variables read per window (e.g. speed)."
    )
    val_fraction: float = Field(
        0.1, ge=0, lt=1, description="Train trials held out for validation (if no val split)."
    )
    train_fraction: float = Field(
        1.0, gt=0, le=1, description="Fraction of the training trials used (few-shot runs)."
    )
    split_seed: int = Field(0, description="Seed of the validation and few-shot trial draws.")


@dataclass(frozen=True)
class SpikeInfo:
    """What a spike model needs to know about the recordings (its build spec)."""

    units: dict[str, int]  # subject -> unit count
    n_dt: int  # time bins of the longer window
    n_bins: int  # bins of the current window
    n_prev_bins: int
    frame_shape: tuple[int, int] | None  # (h, w) of the stimulus frames, None without
    behaviour: list[str]
    behaviour_dims: list[int]

    def as_dict(self) -> dict[str, Any]:
        return {
            "units": dict(self.units),
            "n_dt": self.n_dt,
            "n_bins": self.n_bins,
            "n_prev_bins": self.n_prev_bins,
            "frame_shape": None if self.frame_shape is None else list(self.frame_shape),
            "behaviour": list(self.behaviour),
            "behaviour_dims": list(self.behaviour_dims),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpikeInfo:
        shape = data.get("frame_shape")
        return cls(
            units=dict(data["units"]),
            n_dt=int(data["n_dt"]),
            n_bins=int(data["n_bins"]),
            n_prev_bins=int(data["n_prev_bins"]),
            frame_shape=None if shape is None else (int(shape[0]), int(shape[1])),
            behaviour=list(data.get("behaviour", [])),
            behaviour_dims=list(data.get("behaviour_dims", [])),
        )

    def specials(self, subject: str) -> tuple[int, int, int]:
        """(EOS, SOS, PAD) unit-token ids of ``subject``; the dt specials are the same offsets
        after ``n_dt``."""
        n = self.units[subject]
        return n, n + 1, n + 2


@dataclass
class SpikeBatch:
    """Windows of ONE subject (shapes: B windows, U units, L = max_tokens + 2, P prev tokens).

    ``id``/``dt`` long [B, L] current-window tokens; ``length`` long [B] valid tokens incl. SOS
    (and EOS unless ``truncated``); ``prev_id``/``prev_dt`` long [B, P]; ``counts`` float32
    [B, U, n_bins]; ``prev_counts`` float32 [B, U, n_prev_bins]; ``frames`` float32
    [B, n_frames, 1, h, w] or None; ``behaviour`` float32 [B, n_behaviour] or None;
    ``stimulus_index`` long [B] (the trial's), ``condition`` long [B] (code of the trial's
    ``condition`` column among the subject's sorted conditions; trials of one condition share a
    PSTH), ``trial_time`` float32 [B] (window start minus
    trial start, s), ``trial`` long [B] (row of the subject's trial table), ``start`` float64
    [B] (window start, s), ``truncated`` bool [B].
    """

    subject: str
    id: torch.Tensor
    dt: torch.Tensor
    length: torch.Tensor
    prev_id: torch.Tensor
    prev_dt: torch.Tensor
    counts: torch.Tensor
    prev_counts: torch.Tensor
    frames: torch.Tensor | None
    behaviour: torch.Tensor | None
    stimulus_index: torch.Tensor
    condition: torch.Tensor
    trial_time: torch.Tensor
    trial: torch.Tensor
    start: torch.Tensor
    truncated: torch.Tensor

    def __len__(self) -> int:
        return int(self.id.shape[0])

    def to(self, device: torch.device | str) -> SpikeBatch:
        moved = {
            k: (v.to(device) if isinstance(v, torch.Tensor) and k != "start" else v)
            for k, v in self.__dict__.items()
        }
        return SpikeBatch(**moved)


def spike_info(store: TensorStore, subjects: list[str], config: SpikeDataConfig) -> SpikeInfo:
    """Unit counts, bin counts, frame shape and behaviour dims for ``subjects`` of ``store``."""
    if store.manifest.get("modality") != "spikes":
        raise UserInputError(
            f"Store {store.path} is a {store.manifest.get('modality')} store; spike models need "
            "a spikes store (e.g. `braindecode-cli prepare synthetic-spikes`)"
        )
    n_bins = _bins(config.window, config.dt, "data.window")
    n_prev = _bins(config.prev_window, config.dt, "data.prev_window")
    frame_shape = None
    if config.n_frames and "stimuli" in store.root and "images" in store.root["stimuli"]:
        frame_shape = tuple(int(n) for n in store.images().shape[1:3])
    dims = []
    for name in config.behaviour:
        values = store.spikes(subjects[0]).behaviour(name).values
        dims.append(1 if values.ndim == 1 else int(values.shape[1]))
    return SpikeInfo(
        units={s: store.spikes(s).n_units for s in subjects},
        n_dt=max(n_bins, n_prev),
        n_bins=n_bins,
        n_prev_bins=n_prev,
        frame_shape=frame_shape,
        behaviour=list(config.behaviour),
        behaviour_dims=dims,
    )


def _bins(length: float, dt: float, name: str) -> int:
    n = round(length / dt)
    if n < 1 or abs(n * dt - length) > 1e-9:
        raise UserInputError(f"{name}={length} is not a whole number of data.dt={dt} bins")
    return n


def split_trials(trials: pd.DataFrame, split: str, config: SpikeDataConfig) -> np.ndarray:
    """Rows of ``trials`` in ``split``: ``val`` is the store's val trials, or a seeded
    ``val_fraction`` of its train trials when it has none (removed from ``train``);
    ``train_fraction`` < 1 keeps a seeded subset of the remaining training trials."""
    if split not in SPLITS:
        raise UserInputError(f"Unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    labels = trials["split"].to_numpy()
    if split == "test":
        return np.flatnonzero(labels == "test")
    train = np.flatnonzero(labels == "train")
    val = np.flatnonzero(labels == "val")
    rng = np.random.default_rng(config.split_seed)
    if not len(val) and config.val_fraction > 0 and len(train) > 1:
        n_val = max(1, round(config.val_fraction * len(train)))
        val = np.sort(rng.permutation(train)[:n_val])
        train = np.setdiff1d(train, val)
    if split == "val":
        return val
    if config.train_fraction < 1:
        n_keep = max(1, round(config.train_fraction * len(train)))
        train = np.sort(np.random.default_rng([config.split_seed, 1]).permutation(train)[:n_keep])
    return train


def condition_codes(trials: pd.DataFrame) -> np.ndarray:
    """Code of each trial's condition (the trial table's ``condition`` column, else its
    ``stimulus_index``) among the sorted distinct conditions, int64 [n_trials]."""
    column = "condition" if "condition" in trials.columns else "stimulus_index"
    _, codes = np.unique(trials[column].astype(str).to_numpy(), return_inverse=True)
    return codes.astype(np.int64)


class _Session:
    """One subject's session in memory: spikes, trials, frames and behaviour."""

    def __init__(self, recording: SpikeRecording, config: SpikeDataConfig) -> None:
        self.times, self.units = recording.all_spikes()
        self.n_units = recording.n_units
        self.trials = recording.trials()
        self.frames = recording.frames()
        self.behaviour = [recording.behaviour(name) for name in config.behaviour]


class SpikeWindows:
    """Windows of one split of ``subjects`` (see the module docstring for a row's content)."""

    def __init__(
        self,
        store: TensorStore,
        subjects: list[str],
        split: str,
        config: SpikeDataConfig | None = None,
        info: SpikeInfo | None = None,
    ) -> None:
        self.store = store
        self.subjects = list(subjects)
        self.split = split
        self.config = config or SpikeDataConfig()
        self.info = info or spike_info(store, self.subjects, self.config)
        self._sessions: dict[str, _Session] = {}
        self._images: np.ndarray | None = None
        tables = []
        for subject in self.subjects:
            trials = store.trials(subject)
            rows = split_trials(trials, split, self.config)
            tables.append(self._windows(subject, trials, rows))
        self.windows = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
        self.sizes = [int((self.windows["subject"] == s).sum()) for s in self.subjects]
        self._offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int)

    def _windows(self, subject: str, trials: pd.DataFrame, rows: np.ndarray) -> pd.DataFrame:
        """One row per window: subject, trial row, start (s), trial_time (s), stimulus_index."""
        width = self.config.window
        conditions = condition_codes(trials)
        parts = []
        for row in rows:
            start, stop = float(trials["start"].iloc[row]), float(trials["stop"].iloc[row])
            n = int(np.floor((stop - start) / width + 1e-9))
            offsets = width * np.arange(n)
            parts.append(
                pd.DataFrame(
                    {
                        "subject": subject,
                        "trial": row,
                        "start": start + offsets,
                        "trial_time": offsets,
                        "stimulus_index": int(trials["stimulus_index"].iloc[row]),
                        "condition": int(conditions[row]),
                    }
                )
            )
        columns = ["subject", "trial", "start", "trial_time", "stimulus_index", "condition"]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def subject_slice(self, subject: str) -> slice:
        k = self.subjects.index(subject)
        return slice(int(self._offsets[k]), int(self._offsets[k + 1]))

    def session(self, subject: str) -> _Session:
        if subject not in self._sessions:
            self._sessions[subject] = _Session(self.store.spikes(subject), self.config)
        return self._sessions[subject]

    def _frame_pixels(self) -> np.ndarray:
        """All stimulus frames as grey levels float32 [n, h, w] in [0, 1] (read once)."""
        if self._images is None:
            images = np.asarray(self.store.images()[...], dtype=np.float32)
            self._images = images.mean(axis=-1) / 255.0
        return self._images

    def batch(self, indices: list[int] | range, augment: bool = False) -> SpikeBatch:
        """The windows ``indices`` (global rows, all of one subject) as a :class:`SpikeBatch`."""
        rows = self.windows.iloc[list(indices)]
        subjects = set(rows["subject"])
        if len(subjects) != 1:
            raise ValueError(f"a batch holds one subject's windows, got {sorted(subjects)}")
        subject = subjects.pop()
        session = self.session(subject)
        starts = rows["start"].to_numpy(dtype=np.float64)
        return self.windows_at(subject, starts, rows, session)

    def windows_at(
        self,
        subject: str,
        starts: np.ndarray,
        rows: pd.DataFrame | None = None,
        session: _Session | None = None,
        spikes: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> SpikeBatch:
        """Windows starting at ``starts`` (s) of ``subject``; ``spikes`` (times, units) replaces
        the recorded spikes (generation feeds its own past back this way)."""
        cfg, info = self.config, self.info
        session = session or self.session(subject)
        times, units = spikes if spikes is not None else (session.times, session.units)
        n_units = session.n_units
        eos, sos, pad = info.specials(subject)
        dt_eos, dt_sos, dt_pad = info.n_dt, info.n_dt + 1, info.n_dt + 2
        length_total = cfg.max_tokens + 2
        b = len(starts)
        ids = np.full((b, length_total), pad, np.int64)
        dts = np.full((b, length_total), dt_pad, np.int64)
        lengths = np.zeros(b, np.int64)
        truncated = np.zeros(b, bool)
        prev_ids = np.full((b, cfg.max_prev_tokens), pad, np.int64)
        prev_dts = np.full((b, cfg.max_prev_tokens), dt_pad, np.int64)
        counts = np.zeros((b, n_units, info.n_bins), np.float32)
        prev_counts = np.zeros((b, n_units, info.n_prev_bins), np.float32)
        lo = np.searchsorted(times, starts - cfg.prev_window, "left")
        mid = np.searchsorted(times, starts, "left")
        hi = np.searchsorted(times, starts + cfg.window, "left")
        for k in range(b):
            cur_bins = np.minimum(
                ((times[mid[k] : hi[k]] - starts[k]) / cfg.dt).astype(int), info.n_bins - 1
            )
            cur_units = units[mid[k] : hi[k]]
            order = np.lexsort((cur_units, cur_bins))
            cur_bins, cur_units = cur_bins[order], cur_units[order]
            np.add.at(counts[k], (cur_units, cur_bins), 1.0)
            n = min(len(cur_units), cfg.max_tokens)
            truncated[k] = len(cur_units) > cfg.max_tokens
            ids[k, 0], dts[k, 0] = sos, dt_sos
            ids[k, 1 : n + 1], dts[k, 1 : n + 1] = cur_units[:n], cur_bins[:n]
            if not truncated[k]:
                ids[k, n + 1], dts[k, n + 1] = eos, dt_eos
            lengths[k] = n + 1 + (not truncated[k])
            prev_start = starts[k] - cfg.prev_window
            p_bins = np.minimum(
                ((times[lo[k] : mid[k]] - prev_start) / cfg.dt).astype(int), info.n_prev_bins - 1
            )
            p_units = units[lo[k] : mid[k]]
            valid = p_bins >= 0
            p_bins, p_units = p_bins[valid], p_units[valid]
            np.add.at(prev_counts[k], (p_units, p_bins), 1.0)
            keep = slice(max(0, len(p_units) - cfg.max_prev_tokens), len(p_units))
            m = keep.stop - keep.start
            prev_ids[k, :m], prev_dts[k, :m] = p_units[keep], p_bins[keep]
        if rows is None:
            trial = np.full(b, -1, np.int64)
            trial_time = np.zeros(b, np.float32)
            stimulus = np.full(b, -1, np.int64)
            condition = np.full(b, -1, np.int64)
        else:
            trial = rows["trial"].to_numpy(np.int64, copy=True)
            trial_time = rows["trial_time"].to_numpy(np.float32, copy=True)
            stimulus = rows["stimulus_index"].to_numpy(np.int64, copy=True)
            condition = rows["condition"].to_numpy(np.int64, copy=True)
        return SpikeBatch(
            subject=subject,
            id=torch.from_numpy(ids),
            dt=torch.from_numpy(dts),
            length=torch.from_numpy(lengths),
            prev_id=torch.from_numpy(prev_ids),
            prev_dt=torch.from_numpy(prev_dts),
            counts=torch.from_numpy(counts),
            prev_counts=torch.from_numpy(prev_counts),
            frames=self._frames(session, starts),
            behaviour=self._behaviour(session, starts),
            stimulus_index=torch.from_numpy(stimulus),
            condition=torch.from_numpy(condition),
            trial_time=torch.from_numpy(trial_time),
            trial=torch.from_numpy(trial),
            start=torch.from_numpy(starts.astype(np.float64)),
            truncated=torch.from_numpy(truncated),
        )

    def _frames(self, session: _Session, starts: np.ndarray) -> torch.Tensor | None:
        cfg = self.config
        if self.info.frame_shape is None or session.frames is None or not cfg.n_frames:
            return None
        onsets, index = session.frames
        ends = starts + cfg.window
        instants = ends[:, None] - cfg.frame_step * np.arange(cfg.n_frames)[::-1][None, :]
        shown = np.searchsorted(onsets, instants, "right") - 1
        pixels = self._frame_pixels()
        frames = np.zeros((*instants.shape, *pixels.shape[1:]), np.float32)
        visible = shown >= 0
        frames[visible] = pixels[index[shown[visible]]]
        return torch.from_numpy(frames[:, :, None])

    def _behaviour(self, session: _Session, starts: np.ndarray) -> torch.Tensor | None:
        if not session.behaviour:
            return None
        centres = starts + self.config.window / 2
        columns = []
        for series in session.behaviour:
            grid = series.start + np.arange(len(series.values)) / series.rate
            values = series.values.reshape(len(series.values), -1)
            for d in range(values.shape[1]):
                columns.append(np.interp(centres, grid, values[:, d]))
        return torch.from_numpy(np.stack(columns, axis=1).astype(np.float32))
