"""Torch-side view of an ephys store (sEEG/ECoG/EEG): trials ``[trial, channel, time]`` per subject.

An :class:`EphysDataset` is one split of some subjects, concatenated in subject order (global
row ``i`` belongs to the subject whose cumulative range holds it). Batches are subject-homogeneous
(subjects have different channel counts and per-subject input layers), drawn with
:class:`~mindzoo.datasets.views.SubjectBatchSampler`. Signals are read lazily from Zarr, or read
once per subject when the split is small enough (``data.preload_max_mb``): decoding a Zarr chunk
of 256 trials for every batch would dominate a CPU epoch.

Augmentation (Du-IN App. D): every training trial is shifted in time by a random offset of up
to ``data.shift_seconds`` (default 0.3 s) in either direction, the vacated samples set to zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import zarr
from pydantic import BaseModel, ConfigDict, Field

from mindzoo.datasets.store import SPLITS, TensorStore
from mindzoo.errors import UserInputError


class EphysDataConfig(BaseModel):
    """How trials are read and augmented for training."""

    model_config = ConfigDict(extra="forbid")

    shift_seconds: float = Field(
        0.3, ge=0, description="Max random time shift of training trials (s); 0 turns it off."
    )
    preload_max_mb: float = Field(
        2048, ge=0, description="Read a subject's split into memory when it is at most this big."
    )


@dataclass
class EphysBatch:
    """One subject's trials: ``x`` float32 [batch, channel, time], ``y`` int64 class indices."""

    x: torch.Tensor
    y: torch.Tensor
    subject: str

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def to(self, device: torch.device | str) -> EphysBatch:
        return EphysBatch(self.x.to(device), self.y.to(device), self.subject)


@dataclass(frozen=True)
class RecordingInfo:
    """What a model needs to know about the recordings (the build spec of ephys models)."""

    channels: dict[str, int]  # subject -> channel count
    n_times: int
    sfreq: float
    n_classes: int
    channel_names: dict[str, list[str]] | None = None  # subject -> names (runs before: None)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "channels": dict(self.channels),
            "n_times": self.n_times,
            "sfreq": self.sfreq,
            "n_classes": self.n_classes,
        }
        if self.channel_names is not None:
            out["channel_names"] = {s: list(n) for s, n in self.channel_names.items()}
        return out

    def channel_mismatch(self, other: RecordingInfo) -> str | None:
        """A one-line description of the first subject both recordings have whose channels
        differ (names where both know them, else counts); None when they all agree.

        Per-subject layers (Du-IN's spatial linear) are only meaningful on the channels they
        were trained on: a pre-training store and a labeled store must select the same ones.
        """
        for subject, count in self.channels.items():
            if subject not in other.channels:
                continue
            ours = (self.channel_names or {}).get(subject)
            theirs = (other.channel_names or {}).get(subject)
            if ours is not None and theirs is not None:
                if list(ours) != list(theirs):
                    extra = sorted(set(ours) ^ set(theirs))[:3]
                    return (
                        f"{subject} has {len(ours)} channels here and {len(theirs)} there"
                        f" (differing: {', '.join(extra) or 'the order'})"
                    )
            elif count != other.channels[subject]:
                return f"{subject} has {count} channels here and {other.channels[subject]} there"
        return None


def recording_info(store: TensorStore, subjects: list[str]) -> RecordingInfo:
    """Channels per subject, samples per trial, sampling rate and class count of an ephys store.

    A store without ``sfreq`` in its channel axis, or with subjects of different trial lengths
    or sampling rates, is not an ephys store these models can read: one-line error.
    """
    channels, names, lengths, rates = {}, {}, set(), set()
    for subject in subjects:
        shape = store.signals(subject).shape
        if len(shape) != 3:
            modality = store.manifest.get("modality", "unknown")
            raise UserInputError(
                f"Store {store.path} holds {modality} data ({subject}: signals of shape "
                f"{tuple(shape)}); this model reads EEG/iEEG epochs [trial, channel, time]: "
                "prepare an eeg or ieeg dataset (e.g. `braindecode-cli prepare synthetic-eeg`)"
            )
        _, attrs = store.axis(subject)
        if "sfreq" not in attrs:
            raise UserInputError(
                f"{subject} in store {store.path} has no sfreq in its channel axis; re-run prepare"
            )
        channels[subject] = int(shape[1])
        names[subject] = [str(n) for n in attrs.get("names", [])]
        lengths.add(int(shape[2]))
        rates.add(float(attrs["sfreq"]))
    if len(lengths) != 1 or len(rates) != 1:
        raise UserInputError(
            f"Subjects of store {store.path} differ in trial length {sorted(lengths)} or sampling "
            f"rate {sorted(rates)}; train on subjects that share both (--subjects)"
        )
    known = all(len(names[s]) == channels[s] for s in subjects)
    return RecordingInfo(
        channels, lengths.pop(), rates.pop(), len(store.stimulus_ids), names if known else None
    )


class EphysDataset:
    """Trials of one split of ``subjects``: signals, class indices (``stimulus_index``), subject.

    ``shift_samples`` > 0 makes :meth:`batch` shift each trial by a random offset in
    ``[-shift_samples, shift_samples]`` (drawn from torch's global generator, so seeded and
    restored on resume) when called with ``augment=True``.
    """

    def __init__(
        self,
        store: TensorStore,
        subjects: list[str],
        split: str,
        config: EphysDataConfig | None = None,
    ) -> None:
        if split not in SPLITS:
            raise UserInputError(f"Unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        config = config or EphysDataConfig()
        self.split = split
        self.subjects = list(subjects)
        self.info = recording_info(store, self.subjects)
        self.shift_samples = int(round(config.shift_seconds * self.info.sfreq))
        self._rows: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._signals: list[zarr.Array | np.ndarray] = []
        for subject in self.subjects:
            trials = store.trials(subject)
            rows = np.flatnonzero(trials["split"].to_numpy() == split)
            self._rows.append(rows)
            self._labels.append(trials["stimulus_index"].to_numpy()[rows].astype(np.int64))
            signals = store.signals(subject)
            size_mb = len(rows) * signals.shape[1] * signals.shape[2] * 4 / 2**20
            if len(rows) and size_mb <= config.preload_max_mb:
                signals = np.asarray(signals.get_orthogonal_selection((rows,)), dtype=np.float32)
                self._rows[-1] = np.arange(len(rows))  # rows now index the preloaded array
            self._signals.append(signals)
        self.sizes = [len(r) for r in self._rows]
        self._offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int)

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def subject_slice(self, subject: str) -> slice:
        """Global rows of ``subject``."""
        k = self.subjects.index(subject)
        return slice(int(self._offsets[k]), int(self._offsets[k + 1]))

    def labels(self, subject: str) -> np.ndarray:
        """Class indices of ``subject``'s trials, in dataset order."""
        return self._labels[self.subjects.index(subject)]

    def batch(self, indices: list[int] | range, augment: bool = False) -> EphysBatch:
        """The trials at global ``indices`` (all of one subject), optionally time-shifted."""
        indices = np.asarray(list(indices), dtype=int)
        k = int(np.searchsorted(self._offsets, indices[0], side="right") - 1)
        local = indices - self._offsets[k]
        if local.min() < 0 or local.max() >= self.sizes[k]:
            raise ValueError("a batch must hold the trials of one subject")
        rows = self._rows[k][local]
        signals = self._signals[k]
        if isinstance(signals, np.ndarray):
            x = signals[rows]
        else:  # Zarr wants increasing indices; read sorted, then restore the batch order
            order = np.argsort(rows)
            x = np.empty((len(rows), *signals.shape[1:]), dtype=np.float32)
            x[order] = signals.get_orthogonal_selection((rows[order],))
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        if augment and self.shift_samples > 0:
            x = random_shift(x, self.shift_samples)
        return EphysBatch(x, torch.from_numpy(self._labels[k][local]), self.subjects[k])


def random_shift(x: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Shift each trial of ``x`` [batch, channel, time] by its own random integer offset in
    ``[-max_shift, max_shift]`` samples, filling with zeros (a positive offset delays)."""
    batch, _, n_times = x.shape
    shifts = torch.randint(-max_shift, max_shift + 1, (batch,))
    source = torch.arange(n_times)[None, :] - shifts[:, None]  # [batch, time]
    valid = (source >= 0) & (source < n_times)
    gathered = torch.gather(x, 2, source.clamp(0, n_times - 1)[:, None, :].expand_as(x))
    return gathered * valid[:, None, :].to(x.dtype)
