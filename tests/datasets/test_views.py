"""Torch views of the store: subject-homogeneous batches, splits, lazy reads, targets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from factories.toy_store import TOY_TARGETS, TOY_VOXELS, write_toy_store
from torch.utils.data import DataLoader

from mindzoo.datasets.store import TensorStore
from mindzoo.datasets.views import DataConfig, SubjectBatchSampler, make_splits
from mindzoo.errors import UserInputError


@pytest.fixture(scope="module")
def toy_store(tmp_path_factory: pytest.TempPathFactory) -> TensorStore:
    return write_toy_store(tmp_path_factory.mktemp("views") / "store")


def test_batches_are_subject_homogeneous_and_cover_every_trial_once(toy_store: TensorStore) -> None:
    splits = make_splits(toy_store, list(TOY_VOXELS), TOY_TARGETS)
    train = splits["train"]
    sampler = SubjectBatchSampler(train.sizes, batch_size=8, shuffle=True, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    seen = np.concatenate(batches)
    assert sorted(seen) == list(range(len(train)))  # each trial exactly once
    subjects = []
    for indices in batches:
        assert 1 <= len(indices) <= 8
        part = np.searchsorted(train.offsets, indices, side="right") - 1
        assert len(set(part)) == 1  # one subject per batch
        subjects.append(int(part[0]))
        batch = train.batch(indices)
        assert batch.voxels.shape == (len(indices), TOY_VOXELS[batch.subject])
    # subjects are interleaved, not one after the other
    changes = sum(a != b for a, b in zip(subjects, subjects[1:], strict=False))
    assert changes > len(TOY_VOXELS)
    # seeded: the same epoch gives the same order, another epoch another order
    again = SubjectBatchSampler(train.sizes, batch_size=8, shuffle=True, seed=1)
    assert [list(b) for b in again] == [list(b) for b in batches]
    again.set_epoch(1)
    assert [list(b) for b in again] != [list(b) for b in batches]
    # mixing subjects in one batch is refused
    mixed = [train.subject_slice("sub-01").stop - 1, train.subject_slice("sub-02").start]
    with pytest.raises(ValueError, match="one subject"):
        train.batch(mixed)


def test_ranks_take_contiguous_shares_of_the_same_global_batches() -> None:
    sizes = [21, 10, 17]
    whole = list(SubjectBatchSampler(sizes, batch_size=6, shuffle=True, seed=3))
    ranks = [
        list(SubjectBatchSampler(sizes, 6, shuffle=True, seed=3, rank=r, world_size=2))
        for r in range(2)
    ]
    assert len(ranks[0]) == len(ranks[1]) == len(whole)
    for full, first, second in zip(whole, ranks[0], ranks[1], strict=True):
        assert first + second == full
        assert abs(len(first) - len(second)) <= 1
    # a 1-row remainder cannot be shared by two processes: it is dropped (21 = 3 x 6 + 3 keeps)
    odd = SubjectBatchSampler([13], batch_size=6, shuffle=False, world_size=2)
    assert len(odd) == 2 and [len(b) for b in odd] == [3, 3]
    with pytest.raises(UserInputError, match="batch_size"):
        SubjectBatchSampler(sizes, batch_size=1, shuffle=False, world_size=2)


def test_batches_hold_the_stored_rows_and_their_targets(toy_store: TensorStore) -> None:
    splits = make_splits(toy_store, ["sub-02", "sub-01"], TOY_TARGETS)
    train = splits["train"]
    assert train.subjects == ["sub-02", "sub-01"]
    trials = toy_store.trials("sub-01")
    rows = np.flatnonzero(trials["split"] == "train")
    rows = rows[np.isin(trials["stimulus_index"].to_numpy()[rows], train.stimuli("sub-01"))]
    span = train.subject_slice("sub-01")
    indices = [span.start + 4, span.start, span.start + 4]  # unsorted, with a repeat
    batch = train.batch(indices)
    signals = toy_store.signals("sub-01")[...]
    np.testing.assert_array_equal(batch.voxels.numpy(), signals[rows[[4, 0, 4]]])
    stim = trials["stimulus_index"].to_numpy()[rows[[4, 0, 4]]]
    np.testing.assert_array_equal(batch.stimulus_index.numpy(), stim)
    features = toy_store.features("toy", "spatial")[...]
    np.testing.assert_array_equal(batch.targets["spatial"].numpy(), features[stim])
    assert batch.targets["global"].shape == (3, 8) and batch.voxels.dtype == torch.float32
    one = train[span.start]
    assert one["subject"] == "sub-01"
    torch.testing.assert_close(one["voxels"], batch.voxels[1])
    torch.testing.assert_close(one["targets"]["spatial"], batch.targets["spatial"][1])


def test_a_torch_dataloader_serves_the_same_batches(toy_store: TensorStore) -> None:
    train = make_splits(toy_store, list(TOY_VOXELS), TOY_TARGETS)["train"]
    sampler = SubjectBatchSampler(train.sizes, batch_size=8, shuffle=True, seed=2)
    loader = DataLoader(train, batch_sampler=sampler, collate_fn=lambda batch: batch)
    for indices, batch in zip(sampler, loader, strict=True):
        expected = train.batch(indices)
        assert batch.subject == expected.subject
        torch.testing.assert_close(batch.voxels, expected.voxels, rtol=0, atol=0)


def test_per_batch_reads_match_cached_reads(toy_store: TensorStore) -> None:
    cached = make_splits(toy_store, list(TOY_VOXELS), TOY_TARGETS)["train"]
    lazy = make_splits(toy_store, list(TOY_VOXELS), TOY_TARGETS, DataConfig(cache_mb=0))["train"]
    for indices in SubjectBatchSampler(cached.sizes, batch_size=16, shuffle=True, seed=0):
        a, b = cached.batch(indices), lazy.batch(indices)
        torch.testing.assert_close(a.voxels, b.voxels, rtol=0, atol=0)
        for name in TOY_TARGETS:
            torch.testing.assert_close(a.targets[name], b.targets[name], rtol=0, atol=0)


def test_val_is_carved_by_stimulus_over_all_subjects(toy_store: TensorStore) -> None:
    subjects = list(TOY_VOXELS)
    config = DataConfig(val_fraction=0.25, split_seed=4)
    splits = make_splits(toy_store, subjects, TOY_TARGETS, config)
    train_stim = {int(s) for sub in subjects for s in splits["train"].stimuli(sub)}
    val_stim = {int(s) for sub in subjects for s in splits["val"].stimuli(sub)}
    assert train_stim and val_stim and not train_stim & val_stim
    # every training trial of the store is in exactly one of train / val
    for subject in subjects:
        n_store = int((toy_store.trials(subject)["split"] == "train").sum())
        assert (
            len(splits["train"].stimuli(subject)) + len(splits["val"].stimuli(subject)) == n_store
        )
    fraction = len(val_stim) / len(train_stim | val_stim)
    assert fraction == pytest.approx(0.25, abs=0.02)
    same = make_splits(toy_store, subjects, TOY_TARGETS, config)["val"]
    assert all(np.array_equal(same.stimuli(s), splits["val"].stimuli(s)) for s in subjects)
    other = make_splits(toy_store, subjects, TOY_TARGETS, DataConfig(val_fraction=0.25))["val"]
    assert {int(s) for sub in subjects for s in other.stimuli(sub)} != val_stim


def test_a_store_val_split_is_used_as_is(tmp_path: Path) -> None:
    store = write_toy_store(tmp_path / "store", n_val=5)
    splits = make_splits(store, ["sub-01"], TOY_TARGETS, DataConfig(val_fraction=0.5))
    trials = store.trials("sub-01")
    expected = trials.loc[trials["split"] == "val", "stimulus_index"].to_numpy()
    np.testing.assert_array_equal(splits["val"].stimuli("sub-01"), expected)
    assert len(splits["train"].stimuli("sub-01")) == 48


def test_test_split_is_repeat_averaged(toy_store: TensorStore) -> None:
    test = make_splits(toy_store, ["sub-03"], TOY_TARGETS)["test"]
    assert len(test) == 6
    trials = toy_store.trials("sub-03")
    signals = toy_store.signals("sub-03")[...]
    batch = test.batch(range(6))
    for row, stim in enumerate(batch.stimulus_index.numpy()):
        repeats = signals[(trials["stimulus_index"] == stim).to_numpy()]
        assert len(repeats) == 3
        np.testing.assert_allclose(batch.voxels[row].numpy(), repeats.mean(axis=0), rtol=1e-5)


def test_target_statistics_are_over_distinct_training_stimuli(toy_store: TensorStore) -> None:
    train = make_splits(toy_store, list(TOY_VOXELS), TOY_TARGETS)["train"]
    stats = train.target_statistics()
    stim = np.unique(np.concatenate([train.stimuli(s) for s in TOY_VOXELS]))
    values = toy_store.features("toy", "global")[...][stim]
    np.testing.assert_allclose(stats["global"][0], values.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(stats["global"][1], values.std(axis=0), rtol=1e-6)
    assert stats["spatial"][0].shape == (4, 3)


def test_unknown_target_space_is_a_user_error(toy_store: TensorStore) -> None:
    with pytest.raises(UserInputError, match="nope/global"):
        make_splits(toy_store, ["sub-01"], {"global": "nope/global"})
    with pytest.raises(UserInputError, match="space/kind"):
        make_splits(toy_store, ["sub-01"], {"global": "toy"})
