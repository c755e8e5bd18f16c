"""Tensor files carry their checksum: every damaged weights/predictions file is caught on read."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from mindzoo.errors import DamagedFileError
from mindzoo.tensorfile import (
    CHECKSUM_KEY,
    content_hash,
    load_arrays,
    load_state,
    save_arrays,
    save_state,
)


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "01/test_pred": rng.standard_normal((5, 7)).astype(np.float32),
        "01/labels": np.arange(5, dtype=np.int64),
        "scalar": np.array(3.5, dtype=np.float64),
    }


def test_round_trip_and_the_same_hash_from_numpy_and_torch(tmp_path: Path) -> None:
    arrays = _arrays()
    save_arrays(arrays, tmp_path / "a.safetensors")
    loaded = load_arrays(tmp_path / "a.safetensors")
    assert sorted(loaded) == sorted(arrays)
    for key, value in arrays.items():
        np.testing.assert_array_equal(loaded[key], value)
    state = {k: torch.from_numpy(v) for k, v in arrays.items()}
    assert content_hash(state) == content_hash(arrays)
    save_state(state, tmp_path / "b.safetensors")
    assert content_hash(load_arrays(tmp_path / "b.safetensors")) == content_hash(arrays)
    bf16 = {"w": torch.randn(3, 4).to(torch.bfloat16)}
    save_state(bf16, tmp_path / "c.safetensors")
    assert torch.equal(load_state(tmp_path / "c.safetensors")["w"], bf16["w"])


def test_the_hash_sees_names_dtypes_shapes_and_values() -> None:
    base = content_hash({"a": np.zeros((2, 3), np.float32)})
    assert content_hash({"b": np.zeros((2, 3), np.float32)}) != base
    assert content_hash({"a": np.zeros((3, 2), np.float32)}) != base
    assert content_hash({"a": np.zeros((2, 3), np.int32)}) != base
    changed = np.zeros((2, 3), np.float32)
    changed[1, 2] = 1e-30
    assert content_hash({"a": changed}) != base


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_flipped_data_byte_is_caught(tmp_path: Path) -> None:
    path = tmp_path / "predictions.safetensors"
    save_arrays(_arrays(), path)
    _flip(path, path.stat().st_size - 3)  # the last tensor's bytes
    with pytest.raises(DamagedFileError, match="predictions.safetensors is damaged"):
        load_arrays(path)
    with pytest.raises(DamagedFileError, match="checksum"):
        load_state(path)


def test_a_flipped_header_byte_is_caught(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_state({"w": torch.arange(6.0)}, path)
    header = path.read_bytes()[8:]
    for offset in (0, header.index(b'"w"') + 1, header.index(CHECKSUM_KEY.encode()) + 60):
        copy = tmp_path / f"m{offset}.safetensors"
        copy.write_bytes(path.read_bytes())
        _flip(copy, 8 + offset)
        with pytest.raises(DamagedFileError, match=copy.name):
            load_state(copy)


def test_truncated_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_state({"w": torch.arange(600.0)}, path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DamagedFileError, match="not a plain safetensors"):
        load_state(path)
    with pytest.raises(DamagedFileError, match="missing"):
        load_arrays(tmp_path / "gone.safetensors")


class _Planted:
    def __reduce__(self) -> tuple:
        return (Path.touch, (Path(self.target),))

    def __init__(self, target: Path) -> None:
        self.target = str(target)


def test_a_planted_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps(_Planted(marker)))
    with pytest.raises(DamagedFileError, match="a pickle, never loaded") as info:
        load_state(path)
    assert "weights_only=False" not in str(info.value)
    assert not marker.exists()


def test_files_without_a_checksum_are_read_unchecked(tmp_path: Path) -> None:
    path = tmp_path / "foreign.safetensors"
    save_file({"x": np.ones(3, np.float32)}, str(path))
    np.testing.assert_array_equal(load_arrays(path)["x"], np.ones(3, np.float32))
