"""Writers of one store are serialised by a lock, and a failed prepare removes only what it
wrote: never a version another prepare finished in the store meanwhile."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from factories.bids import write_bids_fmri

from mindzoo.datasets.store import finished_versions, verify_store
from mindzoo.pipelines import prepare as prepare_module
from mindzoo.pipelines.prepare import prepare_dataset, store_lock


@pytest.fixture
def source(tmp_path: Path) -> Path:
    root = tmp_path / "bids"
    write_bids_fmri(root, n_subjects=1, n_sessions=1, n_runs=2, n_train_per_run=3, seed=1)
    return root


def _prepare(source: Path, out: Path, *sets: str) -> Path:
    result = prepare_dataset(
        "bids-fmri", out, source=source, overrides=["features=[]", *sets], progress=False
    )
    return result.version_dir


def test_a_second_prepare_waits_for_the_first(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "store"
    done: list[Path] = []
    with store_lock(out):  # another prepare holds the store
        worker = threading.Thread(target=lambda: done.append(_prepare(source, out)))
        worker.start()
        time.sleep(1.5)
        assert worker.is_alive() and not done and not out.exists()
    worker.join(timeout=120)
    assert done and verify_store(out).ok
    assert "waiting for another prepare of" in capsys.readouterr().err


def test_a_failed_prepare_keeps_a_version_finished_meanwhile(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "store"
    other = tmp_path / "other"
    finished = _prepare(source, other)  # a complete version, as another writer would leave it
    real = prepare_module._build_version

    def fail_after_another_writer_finished(*args, **kwargs):
        import shutil

        shutil.copytree(finished, out / "versions" / finished.name)
        raise RuntimeError("killed mid-way")

    monkeypatch.setattr(prepare_module, "_build_version", fail_after_another_writer_finished)
    with pytest.raises(RuntimeError, match="killed mid-way"):
        _prepare(source, out, "pipeline.glm=lss")
    assert [p.name for p in finished_versions(out)] == [finished.name]
    monkeypatch.setattr(prepare_module, "_build_version", real)
    assert _prepare(source, out).name == finished.name  # and it is a cache hit


def test_a_failed_prepare_removes_the_store_it_created(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "store"

    def fail(*args, **kwargs):
        raise RuntimeError("killed mid-way")

    monkeypatch.setattr(prepare_module, "_build_version", fail)
    with pytest.raises(RuntimeError):
        _prepare(source, out)
    assert not out.exists()


def test_a_lock_file_removed_by_its_last_holder_is_not_trusted(tmp_path: Path) -> None:
    """The first holder leaves no store, so it removes the lock file while a second waits on
    it: the second must notice its file is gone and lock the one at the path instead."""
    import fcntl
    import os

    out = tmp_path / "deeper" / "store"
    lock_path = out.parent / ".store.lock"
    held: list[int] = []
    release = threading.Event()

    def second() -> None:
        with store_lock(out) as fd:
            held.append(os.fstat(fd).st_ino)
            release.wait(30)

    with store_lock(out):
        first_inode = lock_path.stat().st_ino
        worker = threading.Thread(target=second)
        worker.start()
        time.sleep(0.5)
        assert worker.is_alive() and not held  # waiting
    deadline = time.time() + 10
    while not held and time.time() < deadline:
        time.sleep(0.05)
    assert held and lock_path.is_file() and lock_path.stat().st_ino == held[0]
    probe = os.open(lock_path, os.O_RDWR)
    try:  # the file at the path is really locked by the second holder
        with pytest.raises(BlockingIOError):
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(probe)
    release.set()
    worker.join(10)
    assert first_inode is not None
    assert not lock_path.exists() and not out.parent.exists()  # nothing left behind
