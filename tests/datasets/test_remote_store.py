"""Stores and runs on object storage (moto's S3 server on localhost): publish, open, verify, a
killed upload that stays invisible, runs uploaded and fetched, and the arrays' dimension names."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from factories.s3 import S3Server, s3_server

from mindzoo.datasets import remote
from mindzoo.datasets.remote import RemotePath
from mindzoo.datasets.store import StoreWriter, TensorStore, resolve_store, verify_store
from mindzoo.datasets.verified import sha256_files
from mindzoo.errors import UserInputError


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("MINDZOO_CACHE", str(tmp_path_factory.mktemp("cache")))
        with s3_server(monkeypatch) as server:
            yield server


def _trials(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "stimulus_index": np.arange(n) % 6,
            "session": [1] * n,
            "run": [1] * n,
            "repetition": np.arange(n) // 6,
            "split": ["train" if i % 6 < 4 else "test" for i in range(n)],
            "label": ["a" if i % 2 else "b" for i in range(n)],
        }
    )


def write_store(store_dir: Path, config_hash: str, offset: float = 0.0) -> Path:
    """Six stimuli with images and two feature kinds, an fMRI subject [12, 3] and an ephys
    subject [12, 2, 5]."""
    rng = np.random.default_rng(0)
    with StoreWriter(store_dir, config_hash) as writer:
        writer.write_stimuli(
            rng.integers(0, 255, (6, 4, 4, 3), dtype=np.uint8),
            [f"s{i}" for i in range(6)],
            ["a", "b"] * 3,
            ["train"] * 4 + ["test"] * 2,
        )
        writer.write_features(
            "toy",
            {
                "global": rng.random((6, 4), dtype=np.float32),
                "spatial": rng.random((6, 2, 3), dtype=np.float32),
            },
        )
        writer.write_subject(
            "sub-01",
            np.arange(36, dtype=np.float32).reshape(12, 3) + offset,
            _trials(12),
            "voxels",
            {"ijk": np.eye(3, dtype=np.int32), "roi": np.zeros(3, dtype=np.int16)},
            {"roi_names": ["V1"], "affine": np.eye(4).tolist()},
        )
        writer.write_subject(
            "sub-02",
            rng.random((12, 2, 5), dtype=np.float32),
            _trials(12),
            "channels",
            {"region": np.zeros(2, dtype=np.int16)},
            {"names": ["c1", "c2"], "types": ["seeg"] * 2, "sfreq": 100.0},
        )
        return writer.commit({"dataset": "toy", "config": {"offset": offset}})


def _assert_same_store(a: TensorStore, b: TensorStore) -> None:
    assert a.manifest == b.manifest and a.subjects == b.subjects
    assert a.stimulus_ids == b.stimulus_ids and a.feature_spaces() == b.feature_spaces()
    np.testing.assert_array_equal(a.images()[...], b.images()[...])
    np.testing.assert_array_equal(
        a.features("toy", "spatial")[...], b.features("toy", "spatial")[...]
    )
    for subject in a.subjects:
        np.testing.assert_array_equal(a.signals(subject)[...], b.signals(subject)[...])
        pd.testing.assert_frame_equal(a.trials(subject), b.trials(subject))
        for name, values in a.axis(subject)[0].items():
            np.testing.assert_array_equal(values, b.axis(subject)[0][name])
    x_a, stim_a, _ = a.split("sub-01", "test", average_repeats=True)
    x_b, stim_b, _ = b.split("sub-01", "test", average_repeats=True)
    np.testing.assert_array_equal(x_a, x_b)
    np.testing.assert_array_equal(stim_a, stim_b)


def test_urls_and_remote_paths() -> None:
    assert remote.is_url("s3://bucket/store") and remote.is_url("memory://x")
    assert not remote.is_url("stores/default") and not remote.is_url(Path("/tmp/s3:/x"))
    path = RemotePath("s3://bucket/store/") / "versions" / "abc"
    assert str(path) == "s3://bucket/store/versions/abc" == str(path.resolve())
    assert path.name == "abc" and str(path.parent.parent) == "s3://bucket/store"


@pytest.mark.s3
def test_publish_open_verify_roundtrip(s3: S3Server, tmp_path: Path) -> None:
    local = write_store(tmp_path / "store", "11" * 32)
    url = s3.url("roundtrip")
    published = remote.publish_version(local, url)
    assert published.uploaded and published.version == RemotePath(f"{url}/versions/{local.name}")
    store = TensorStore.open(url)
    assert store.path == published.version and str(store.path.resolve()) == str(published.version)
    assert remote.read_text(f"{url}/CURRENT").strip() == local.name
    _assert_same_store(store, TensorStore.open(local))
    # a version URL opens the same; verification re-hashes the remote files
    assert TensorStore.open(str(published.version)).manifest == store.manifest
    local_report, remote_report = verify_store(local), verify_store(url)
    assert remote_report.ok, remote_report.problems
    assert (remote_report.n_files, remote_report.n_bytes) == (
        local_report.n_files,
        local_report.n_bytes,
    )
    # publishing the same config again uploads nothing
    again = remote.publish_version(local, url)
    assert not again.uploaded and again.version == published.version and again.n_files == 0


@pytest.mark.s3
def test_verify_finds_a_corrupt_and_a_missing_remote_file(s3: S3Server, tmp_path: Path) -> None:
    local = write_store(tmp_path / "store", "22" * 32)
    url = s3.url("corrupt")
    version = remote.publish_version(local, url).version
    fs, root = remote.filesystem(version)
    chunk = f"{root}/subjects/sub-01/signals/c/0/0"
    original = fs.cat_file(chunk)
    fs.pipe_file(chunk, bytes([original[0] ^ 0xFF]) + original[1:])
    report = verify_store(url)
    assert report.problems == ["checksum mismatch in subjects/sub-01/signals/c/0/0"]
    fs.rm(chunk)
    assert verify_store(url).problems == ["missing file subjects/sub-01/signals/c/0/0"]
    fs.pipe_file(chunk, original)
    assert verify_store(url).ok


@pytest.mark.s3
@pytest.mark.parametrize("fail_at", ["manifest", "data"])
def test_a_killed_upload_leaves_no_visible_version(
    s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_at: str
) -> None:
    url = s3.url(f"killed-{fail_at}")
    first = write_store(tmp_path / "one", "33" * 32)
    remote.publish_version(first, url)
    second = write_store(tmp_path / "two", "44" * 32, offset=100.0)
    put, calls = remote._put, []

    def killed(fs, local, targets):
        calls.append(targets)
        if (fail_at == "manifest" and targets[-1].endswith(remote.MANIFEST)) or (
            fail_at == "data" and len(calls) == 2
        ):
            raise KeyboardInterrupt  # the job is killed mid-upload
        put(fs, local, targets)

    monkeypatch.setattr(remote, "_BATCH", 4)  # several upload calls for the data
    monkeypatch.setattr(remote, "_put", killed)
    with pytest.raises(KeyboardInterrupt):
        remote.publish_version(second, url)
    monkeypatch.setattr(remote, "_put", put)
    leftover = RemotePath(url) / "versions" / second.name
    assert remote.list_files(leftover)  # half uploaded ...
    assert remote.find_remote_version(url, "44" * 32) is None  # ... and invisible
    assert TensorStore.open(url).path.name == first.name
    with pytest.raises(UserInputError, match="No store at"):
        resolve_store(str(leftover))
    # the next publish replaces the leftovers and commits
    published = remote.publish_version(second, url)
    assert published.uploaded and TensorStore.open(url).path.name == second.name
    report = verify_store(url)
    assert report.ok and report.n_files == verify_store(second).n_files
    assert TensorStore.open(url).signals("sub-01")[0, 0] == 100.0


@pytest.mark.s3
def test_runs_upload_last_marker_and_fetch_idempotently(s3: S3Server, tmp_path: Path) -> None:
    url = s3.url("runs/ridge")
    run = remote.stage_run(url)
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": "ridge"}))
    (run / "sub" / "weights.bin").parent.mkdir()
    (run / "sub" / "weights.bin").write_bytes(b"\x00\x01" * 100)
    with pytest.raises(ValueError, match="no metrics.json"):
        remote.upload_run(run, url)  # an unfinished run is not uploaded
    with pytest.raises(UserInputError, match="No finished run at"):
        remote.fetch_run(url)
    (run / "metrics.json").write_text('{"a": 1}')
    assert remote.upload_run(run, url) == RemotePath(url)
    with pytest.raises(UserInputError, match="exists; choose another --out"):
        remote.stage_run(url)
    with pytest.raises(UserInputError, match="already finished"):
        remote.stage_run(url, resume=True)
    shutil.rmtree(run)  # another node: nothing cached
    fetched = remote.fetch_run(url)
    assert (fetched / "sub" / "weights.bin").read_bytes() == b"\x00\x01" * 100
    assert json.loads((fetched / "metrics.json").read_text()) == {"a": 1}
    (fetched / "eval").mkdir()  # what evaluate leaves in the cached copy stays
    assert remote.fetch_run(url) == fetched and (fetched / "eval").is_dir()
    # a re-uploaded run (new metrics) is fetched again
    staged = remote.stage_run(url, overwrite=True)
    staged.mkdir(parents=True, exist_ok=True)
    (staged / "metrics.json").write_text('{"a": 2}')
    remote.upload_run(staged, url)
    shutil.rmtree(staged)
    fetched = remote.fetch_run(url)
    assert json.loads((fetched / "metrics.json").read_text()) == {"a": 2}
    assert sorted(p.name for p in fetched.iterdir()) == ["metrics.json"]


def test_any_fsspec_url_works(tmp_path: Path) -> None:
    local = write_store(tmp_path / "store", "55" * 32)
    url = "memory://mindzoo-test/store"
    assert remote.publish_version(local, url).uploaded
    _assert_same_store(TensorStore.open(url), TensorStore.open(local))
    assert verify_store(url).ok


def test_missing_s3fs_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_s3fs(url: str, **kwargs):
        raise ImportError("Install s3fs to access S3")

    monkeypatch.setattr(remote.fsspec, "url_to_fs", no_s3fs)
    with pytest.raises(UserInputError, match=r"pip install 'mindzoo\[s3\]'"):
        TensorStore.open("s3://bucket/store")


@pytest.mark.s3
def test_a_missing_remote_store_is_one_line(s3: S3Server) -> None:
    with pytest.raises(UserInputError, match="No store at s3://.*/nothing; create one with"):
        TensorStore.open(s3.url("nothing"))


def test_arrays_name_their_dimensions(tmp_path: Path) -> None:
    local = write_store(tmp_path / "store", "66" * 32)
    root = zarr.open_group(str(local), mode="r")

    def dims(name: str) -> tuple[str, ...] | None:
        return root[name].metadata.dimension_names

    assert dims("stimuli/images") == ("stimulus", "y", "x", "rgb")
    assert dims("features/toy/global") == ("stimulus", "global_1")
    assert dims("features/toy/spatial") == ("stimulus", "spatial_1", "spatial_2")
    assert dims("subjects/sub-01/signals") == ("trial", "voxel")
    assert dims("subjects/sub-02/signals") == ("trial", "channel", "time")
    assert dims("subjects/sub-01/trials/label") == ("trial",)
    assert dims("subjects/sub-01/trials/stimulus_index") == ("trial",)
    assert dims("subjects/sub-01/voxels/ijk") == ("voxel", "ijk_1")
    assert dims("subjects/sub-02/channels/region") == ("channel",)
    on_disk = json.loads((local / "subjects/sub-01/signals/zarr.json").read_text())
    assert on_disk["dimension_names"] == ["trial", "voxel"]


def test_stores_without_dimension_names_still_open(tmp_path: Path) -> None:
    """Stores written before dimension names: the same schema version, read the same."""
    local = write_store(tmp_path / "store", "77" * 32)
    for meta in local.rglob("zarr.json"):
        data = json.loads(meta.read_text())
        data.pop("dimension_names", None)
        meta.write_text(json.dumps(data))
    manifest_path = next(local.rglob("manifest.json"))  # as such a store was written: the
    manifest = json.loads(manifest_path.read_text())  # checksums of the files it has
    version = manifest_path.parent
    manifest["checksums"] = sha256_files(version, manifest["checksums"])
    manifest_path.write_text(json.dumps(manifest))
    store = TensorStore.open(tmp_path / "store")
    assert store.signals("sub-01").metadata.dimension_names is None
    np.testing.assert_array_equal(store.signals("sub-01")[1], [3.0, 4.0, 5.0])
    assert list(store.trials("sub-01")["split"][:5]) == ["train"] * 4 + ["test"]
