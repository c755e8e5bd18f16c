"""Torch views of a tensor store for training decoders: datasets of trials and batch samplers.

``make_splits(store, subjects, targets)`` returns one :class:`FMRIDataset` per split:

- ``train``: single trials of the store's train split, minus the validation stimuli;
- ``val``: the store's val trials when it has any, otherwise single trials of a seeded fraction
  of the train *stimuli* (carved by stimulus, over all subjects at once, so no image is on both
  sides, not even through another subject);
- ``test``: repeat-averaged test betas, one row per stimulus (the MindEye/NSD convention).

Reads are lazy: nothing is read when a split is made. The first batch of a subject reads that
subject's rows of the split in one Zarr selection and keeps them when they fit ``cache_mb``;
bigger selections (NSD-sized subjects) are read batch by batch, only the rows of the batch.
Targets (``store.features(space, kind)`` per target name) are read the same way, by stimulus.

A batch holds trials of ONE subject (decoders have a per-subject input layer);
:class:`SubjectBatchSampler` shuffles each subject's trials, cuts them into batches and
interleaves the subjects' batches in a seeded random order. Under data parallelism every
process iterates the same global batches and takes its own contiguous slice of each.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import zarr
from pydantic import BaseModel, ConfigDict, Field
from torch.utils.data import Dataset, Sampler

from mindzoo.datasets.store import TensorStore
from mindzoo.errors import UserInputError


class DataConfig(BaseModel):
    """How a decoder's training data is drawn from the store.

    ``targets`` maps each model output name to a cached feature ``"space/kind"``; empty means
    one target, the evaluated feature space, named by its kind (e.g. ``global``).
    """

    model_config = ConfigDict(extra="forbid")

    targets: dict[str, str] = Field(
        default_factory=dict, description="Output name -> 'space/kind' of a cached feature."
    )
    val_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="Train stimuli held out for validation (if no val split)."
    )
    split_seed: int = Field(0, description="Seed choosing the validation stimuli.")
    cache_mb: float = Field(
        1024.0,
        ge=0.0,
        description="Keep a subject's split (or a target) in memory up to this size.",
    )


@dataclass
class Batch:
    """Trials of one subject: voxels ``[B, V]``, targets ``{name: [B, *shape]}``, stimuli ``[B]``."""

    subject: str
    voxels: torch.Tensor
    targets: dict[str, torch.Tensor]
    stimulus_index: torch.Tensor

    def __len__(self) -> int:
        return int(self.voxels.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.subject,
            self.voxels.to(device),
            {k: v.to(device) for k, v in self.targets.items()},
            self.stimulus_index.to(device),
        )


class _Rows:
    """Selected rows of an array, read on first use (all at once) or per request (too big)."""

    def __init__(self, array: zarr.Array | np.ndarray, rows: np.ndarray, cache_bytes: float):
        self.array = array
        self.rows = np.asarray(rows, dtype=np.int64)
        row_bytes = int(np.prod(array.shape[1:], dtype=np.int64)) * 4  # served as float32
        self.keep = len(self.rows) * row_bytes <= cache_bytes
        self._cached: np.ndarray | None = None

    def _read(self, rows: np.ndarray) -> np.ndarray:
        if isinstance(self.array, np.ndarray):
            return self.array[rows].astype(np.float32, copy=False)
        if not len(rows):
            return np.empty((0, *self.array.shape[1:]), dtype=np.float32)
        return np.asarray(self.array.get_orthogonal_selection((rows,)), dtype=np.float32)

    def take(self, positions: np.ndarray) -> np.ndarray:
        """Rows at ``positions`` (indices into ``rows``), float32."""
        if self.keep:
            if self._cached is None:
                self._cached = self._read(self.rows)
            return self._cached[positions]
        # Zarr reads each needed chunk once for sorted unique rows; repeats are re-expanded.
        wanted, inverse = np.unique(self.rows[positions], return_inverse=True)
        return self._read(wanted)[inverse]


@dataclass
class _SubjectPart:
    subject: str
    signals: _Rows
    stimulus_index: np.ndarray  # [n] stimulus of each row


class FMRIDataset(Dataset):
    """Trials of one split for several subjects, indexed 0..N-1 subject after subject.

    ``dataset[i]`` is one trial as a dict; :meth:`batch` reads a subject-homogeneous list of
    indices at once (what :class:`SubjectBatchSampler` yields) and returns a :class:`Batch`.
    With a torch DataLoader: ``DataLoader(dataset, batch_sampler=sampler, collate_fn=lambda b: b)``
    (the batched fetch already returns a :class:`Batch`).
    """

    def __init__(
        self,
        parts: Sequence[_SubjectPart],
        targets: Mapping[str, _Rows],
        target_positions: np.ndarray,
    ) -> None:
        self.parts = list(parts)
        self.targets = dict(targets)
        # stimulus index -> row position in each target reader (-1 where not needed)
        self._target_position = target_positions
        self.sizes = [len(p.stimulus_index) for p in self.parts]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)

    @property
    def subjects(self) -> list[str]:
        return [p.subject for p in self.parts]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def subject_slice(self, subject: str) -> slice:
        """Global index range of ``subject``'s trials."""
        i = self.subjects.index(subject)
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))

    def _locate(self, indices: Sequence[int]) -> tuple[_SubjectPart, np.ndarray]:
        idx = np.asarray(indices, dtype=np.int64)
        if not len(idx) or idx.min() < 0 or idx.max() >= len(self):
            raise IndexError(f"indices outside 0..{len(self) - 1}")
        part = np.searchsorted(self.offsets, idx, side="right") - 1
        if np.any(part != part[0]):
            raise ValueError("a batch must hold trials of one subject; use SubjectBatchSampler")
        return self.parts[int(part[0])], idx - self.offsets[part[0]]

    def batch(self, indices: Sequence[int], augment: bool = False) -> Batch:
        """The trials at global ``indices`` (all of one subject) as tensors.

        ``augment`` is accepted for the trainer's sake (it asks every view for augmented training
        batches); fMRI betas have no augmentation, so it changes nothing here.
        """
        part, local = self._locate(indices)
        stim = part.stimulus_index[local]
        positions = self._target_position[stim]
        return Batch(
            subject=part.subject,
            voxels=torch.from_numpy(part.signals.take(local)),
            targets={k: torch.from_numpy(r.take(positions)) for k, r in self.targets.items()},
            stimulus_index=torch.from_numpy(stim.astype(np.int64)),
        )

    __getitems__ = batch  # torch DataLoader's batched fetch

    def __getitem__(self, index: int) -> dict:
        one = self.batch([index])
        return {
            "subject": one.subject,
            "voxels": one.voxels[0],
            "targets": {k: v[0] for k, v in one.targets.items()},
            "stimulus_index": one.stimulus_index[0],
        }

    def stimuli(self, subject: str) -> np.ndarray:
        """Stimulus index of each of ``subject``'s rows, in dataset order."""
        return self.parts[self.subjects.index(subject)].stimulus_index

    def target_statistics(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per-element mean and std of each target over this split's distinct stimuli."""
        stim = np.unique(np.concatenate([p.stimulus_index for p in self.parts]))
        stats = {}
        for name, reader in self.targets.items():
            values = reader.take(self._target_position[stim]).astype(np.float64)
            stats[name] = (values.mean(axis=0), values.std(axis=0))
        return stats


class SubjectBatchSampler(Sampler[list[int]]):
    """Subject-homogeneous batches of global indices, seeded per epoch.

    ``sizes`` are the per-subject trial counts in dataset order (``FMRIDataset.sizes``).
    ``batch_size`` is the *global* batch; with ``world_size > 1`` each rank receives its
    contiguous share of every batch, so all ranks step through the same number of batches.
    A subject's last, partial batch is kept unless it has fewer rows than ``world_size``.
    With ``shuffle=False`` the order is fixed: subjects' batches interleaved round-robin.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < world_size:
            raise UserInputError(
                f"Batch size {batch_size} is smaller than the {world_size} processes; "
                "raise trainer.batch_size"
            )
        self.sizes = [int(s) for s in sizes]
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order :meth:`__iter__` yields (same on every rank)."""
        self.epoch = epoch

    def _global_batches(self) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch])
        offsets = np.concatenate([[0], np.cumsum(self.sizes)])
        per_subject = []
        for offset, size in zip(offsets[:-1], self.sizes, strict=True):
            order = rng.permutation(size) if self.shuffle else np.arange(size)
            cuts = [order[i : i + self.batch_size] for i in range(0, size, self.batch_size)]
            per_subject.append([offset + c for c in cuts if len(c) >= self.world_size])
        if self.shuffle:
            flat = [b for batches in per_subject for b in batches]
            return [flat[i] for i in rng.permutation(len(flat))]
        longest = max((len(b) for b in per_subject), default=0)
        return [b[i] for i in range(longest) for b in per_subject if i < len(b)]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self._global_batches():
            yield np.array_split(batch, self.world_size)[self.rank].tolist()

    def __len__(self) -> int:
        full, rest = zip(*(divmod(s, self.batch_size) for s in self.sizes), strict=True)
        return sum(full) + sum(1 for r in rest if r >= max(1, self.world_size))


def parse_target(spec: str) -> tuple[str, str]:
    """``"efficientnet-lite0/global"`` -> ``("efficientnet-lite0", "global")``."""
    space, sep, kind = spec.rpartition("/")
    if not sep or not space or not kind:
        raise UserInputError(f"Bad target {spec!r}: expected 'space/kind', e.g. pixels/global")
    return space, kind


def _val_stimuli(train_stimuli: Sequence[np.ndarray], fraction: float, seed: int) -> np.ndarray:
    """A seeded ``fraction`` of the distinct training stimuli of all subjects together."""
    pool = np.unique(np.concatenate(train_stimuli)) if train_stimuli else np.empty(0, int)
    n_val = int(round(fraction * len(pool)))
    if fraction > 0 and n_val == 0 and len(pool) > 1:
        n_val = 1
    return np.sort(np.random.default_rng(seed).choice(pool, size=n_val, replace=False))


def make_splits(
    store: TensorStore,
    subjects: Sequence[str],
    targets: Mapping[str, str],
    config: DataConfig | None = None,
) -> dict[str, FMRIDataset]:
    """Train / val / test datasets of ``subjects`` with targets ``{name: "space/kind"}``."""
    config = config or DataConfig()
    if not subjects:
        raise UserInputError(f"No subjects chosen from store {store.path}")
    features = {name: store.features(*parse_target(spec)) for name, spec in targets.items()}
    tables = {s: store.trials(s) for s in subjects}
    rows = {}
    for split in ("train", "val", "test"):
        rows[split] = {s: np.flatnonzero(t["split"].to_numpy() == split) for s, t in tables.items()}
    stim_of = {s: t["stimulus_index"].to_numpy() for s, t in tables.items()}
    for subject, train_rows in rows["train"].items():
        if not len(train_rows):
            raise UserInputError(f"{subject} has no training trials in store {store.path}")
    if not any(len(r) for r in rows["val"].values()):
        held = _val_stimuli(
            [stim_of[s][r] for s, r in rows["train"].items()],
            config.val_fraction,
            config.split_seed,
        )
        for subject, train_rows in list(rows["train"].items()):
            in_val = np.isin(stim_of[subject][train_rows], held)
            rows["val"][subject] = train_rows[in_val]
            rows["train"][subject] = train_rows[~in_val]
    cache = config.cache_mb * 2**20
    splits = {}
    for split in ("train", "val"):
        parts = [
            _SubjectPart(
                s, _Rows(store.signals(s), rows[split][s], cache), stim_of[s][rows[split][s]]
            )
            for s in subjects
        ]
        splits[split] = _with_targets(parts, features, cache)
    test_parts = []
    for subject in subjects:
        voxels, stim, _ = store.split(subject, "test", average_repeats=True)
        test_parts.append(_SubjectPart(subject, _Rows(voxels, np.arange(len(stim)), cache), stim))
    splits["test"] = _with_targets(test_parts, features, cache)
    return splits


def _with_targets(
    parts: list[_SubjectPart], features: Mapping[str, zarr.Array], cache: float
) -> FMRIDataset:
    """Attach target readers for exactly the stimuli the parts use."""
    n_stimuli = next(iter(features.values())).shape[0] if features else 0
    used = np.unique(np.concatenate([p.stimulus_index for p in parts]).astype(np.int64))
    position = np.full(max(n_stimuli, int(used.max(initial=-1)) + 1), -1, dtype=np.int64)
    position[used] = np.arange(len(used))
    readers = {name: _Rows(array, used, cache) for name, array in features.items()}
    return FMRIDataset(parts, readers, position)
