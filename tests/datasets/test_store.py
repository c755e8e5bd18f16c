"""The tensor store: atomic writes, lazy reads, views, cache lookup and checksums."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mindzoo.datasets.store import (
    StoreWriter,
    TensorStore,
    find_version,
    resolve_store,
    verify_store,
)
from mindzoo.errors import UserInputError


def _trials() -> pd.DataFrame:
    # stimuli 0..3 train once, stimuli 4,5 test three times each
    stim = [0, 1, 4, 2, 5, 3, 4, 5, 4, 5]
    split = ["train", "train", "test", "train", "test", "train", "test", "test", "test", "test"]
    reps = [0, 0, 0, 0, 0, 0, 1, 1, 2, 2]
    return pd.DataFrame(
        {
            "stimulus_index": stim,
            "session": [1] * 5 + [2] * 5,
            "run": [1, 1, 1, 2, 2, 1, 1, 2, 2, 2],
            "repetition": reps,
            "split": split,
            "label": ["a", "b", "c", "a", "b", "c", "c", "b", "c", "b"],
            "onset": np.arange(10, dtype=float) * 4.0,
        }
    )


def write_tiny_store(store_dir: Path, config_hash: str = "ab" * 32) -> Path:
    rng = np.random.default_rng(0)
    signals = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    with StoreWriter(store_dir, config_hash) as writer:
        writer.write_stimuli(
            rng.integers(0, 255, (6, 4, 4, 3), dtype=np.uint8),
            [f"s{i}" for i in range(6)],
            ["a", "b", "a", "b", "c", "b"],
            ["train"] * 4 + ["test"] * 2,
        )
        writer.write_features("pixels", {"global": rng.random((6, 48), dtype=np.float32)})
        writer.write_subject(
            "sub-01",
            signals,
            _trials(),
            "voxels",
            {"ijk": np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], dtype=np.int32)},
            {"affine": np.eye(4).tolist(), "roi_names": ["V1"]},
        )
        return writer.commit({"dataset": "tiny", "config": {"x": 1}})


def test_write_then_read_roundtrip(tmp_path: Path) -> None:
    version = write_tiny_store(tmp_path / "store")
    store = TensorStore.open(tmp_path / "store")
    assert store.path == version
    assert store.subjects == ["sub-01"]
    assert store.dataset == "tiny"
    np.testing.assert_array_equal(store.signals("sub-01")[2], [6.0, 7.0, 8.0])
    trials = store.trials("sub-01")
    assert list(trials["split"][:3]) == ["train", "train", "test"]
    assert list(trials["label"][:3]) == ["a", "b", "c"]
    assert store.features("pixels").shape == (6, 48)
    arrays, attrs = store.axis("sub-01")
    assert arrays["ijk"].shape == (3, 3) and attrs["roi_names"] == ["V1"]
    assert store.voxel_rois("sub-01") is None  # no per-voxel roi codes written
    assert store.pick_subjects(None) == store.pick_subjects(["01"]) == ["sub-01"]
    with pytest.raises(UserInputError, match="sub-02 is not in store .*available: sub-01"):
        store.pick_subjects(["sub-01", "02"])
    # no temporary directories remain
    assert [p.name for p in (tmp_path / "store" / "versions").iterdir()] == [version.name]


def test_split_average_repeats(tmp_path: Path) -> None:
    write_tiny_store(tmp_path / "store")
    store = TensorStore.open(tmp_path / "store")
    x, stim, _ = store.split("sub-01", "test")
    assert x.shape == (6, 3) and sorted(set(stim)) == [4, 5]
    avg, stim_avg, rows = store.split("sub-01", "test", average_repeats=True)
    np.testing.assert_array_equal(stim_avg, [4, 5])
    # stimulus 4 sits at trial rows 2, 6, 8 -> signal rows mean
    full = store.signals("sub-01")[...]
    np.testing.assert_allclose(avg[0], full[[2, 6, 8]].mean(axis=0))
    np.testing.assert_allclose(avg[1], full[[4, 7, 9]].mean(axis=0))
    reps, stim_rep = store.repeats("sub-01")
    assert reps.shape == (2, 3, 3)
    np.testing.assert_allclose(reps[0], full[[2, 6, 8]])


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    store_dir = tmp_path / "new-store"
    with pytest.raises(RuntimeError), StoreWriter(store_dir, "cd" * 32) as writer:
        writer.write_features("pixels", {"global": np.zeros((2, 3), dtype=np.float32)})
        raise RuntimeError("pipeline failed half-way")
    assert not store_dir.exists()


def test_failed_write_keeps_existing_versions(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    first = write_tiny_store(store_dir)
    with pytest.raises(RuntimeError), StoreWriter(store_dir, "cd" * 32):
        raise RuntimeError("boom")
    assert first.exists() and [p.name for p in (store_dir / "versions").iterdir()] == [first.name]
    assert TensorStore.open(store_dir).path == first


def test_find_version_and_new_version(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    first = write_tiny_store(store_dir, "ab" * 32)
    assert find_version(store_dir, "ab" * 32) == first
    assert find_version(store_dir, "ef" * 32) is None
    second = write_tiny_store(store_dir, "ef" * 32)
    assert first.exists() and second.exists() and first != second
    assert resolve_store(store_dir) == second  # CURRENT follows the last prepare


def test_verify_catches_a_flipped_byte_in_every_array(tmp_path: Path) -> None:
    version = write_tiny_store(tmp_path / "store")
    assert verify_store(version).ok
    manifest = json.loads((version / "manifest.json").read_text())
    chunk_files = [rel for rel in manifest["checksums"] if "/c/" in rel or rel.endswith("/c")]
    arrays = {rel.split("/c/")[0] for rel in chunk_files}
    assert {"subjects/sub-01/signals", "stimuli/images", "features/pixels/global"} <= arrays
    for rel in chunk_files:
        file = version / rel
        original = file.read_bytes()
        flipped = bytearray(original)
        flipped[len(flipped) // 2] ^= 0x01
        file.write_bytes(bytes(flipped))
        report = verify_store(version)
        assert not report.ok and any(rel in p for p in report.problems), rel
        file.write_bytes(original)
    assert verify_store(version).ok


def test_verify_reports_missing_file(tmp_path: Path) -> None:
    version = write_tiny_store(tmp_path / "store")
    next(p for p in version.rglob("*") if "signals/c" in str(p) and p.is_file()).unlink()
    assert any("missing file" in p for p in verify_store(version).problems)


def test_open_not_a_store(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="No store at"):
        TensorStore.open(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="not a mindzoo store"):
        TensorStore.open(tmp_path / "empty")
