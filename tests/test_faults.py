"""Faults and small things users notice: temporaries left by ``kill -9`` are reclaimed (never a
live writer's), written files honour the umask, CLI output is not wrapped at 80 columns outside
a terminal, and the progress bar shows no validation loss when there is no validation split."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from factories.cli import TINY, cli, sets

import mindzoo
from mindzoo.atomic import (
    atomic_directory,
    host_tag,
    reclaim_stale,
    temp_name,
)
from mindzoo.datasets.store import StoreWriter
from mindzoo.tensorfile import save_arrays
from mindzoo.training import checkpoint as ckpt
from mindzoo.training.trainer import _val_text


def _dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _temp(directory: Path, name: str, pid: int, size: int = 1000) -> Path:
    """A temporary directory as a writer owned by ``pid`` names it, with ``size`` bytes in it."""
    path = directory / f".tmp-{name}-{pid}@{host_tag()}-0123abcd"
    path.mkdir(parents=True)
    (path / "chunk").write_bytes(b"x" * size)
    return path


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    for item in [path, *path.rglob("*")]:
        os.utime(item, (then, then))


def test_a_store_writer_reclaims_dead_temporaries_and_keeps_live_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    versions = tmp_path / "store" / "versions"
    dead = _temp(versions, "0123456789ab", _dead_pid(), size=2048)
    live = _temp(versions, "0123456789ab", os.getpid())
    old = versions / ".tmp-0123456789ab-deadbeef"  # the ownerless format of earlier versions
    old.mkdir()
    _age(old, 2 * 3600)
    recent_old = versions / ".tmp-0123456789ab-cafef00d"  # maybe a running older mindzoo
    recent_old.mkdir()
    foreign = versions / ".tmp-0123456789ab-1@00000000-0123abcd"  # another host's writer
    foreign.mkdir()
    with StoreWriter(tmp_path / "store", "0123456789ab" + "0" * 52) as writer:
        assert writer.tmp_dir.name.startswith(f".tmp-0123456789ab-{os.getpid()}@{host_tag()}-")
    assert not dead.exists() and not old.exists()
    assert live.exists() and recent_old.exists() and foreign.exists()
    lines = [line for line in capsys.readouterr().err.splitlines() if "stale" in line]
    assert len(lines) == 1, lines
    assert "removed 2 stale temporaries (2.0 KiB)" in lines[0] and dead.name in lines[0]


def test_other_writers_reclaim_too(tmp_path: Path) -> None:
    """Run directories (atomic_directory), weights and arrays: each reclaims where it writes."""
    for write in (
        lambda: atomic_directory(tmp_path / "run").__enter__(),
        lambda: save_arrays({"a": np.zeros(2)}, tmp_path / "p.safetensors"),
        lambda: ckpt.save_weights(tmp_path / "m.safetensors", {"w": torch.zeros(2)}),
        lambda: ckpt.write_json(tmp_path / "config.json", {}),
    ):
        dead = _temp(tmp_path, "run", _dead_pid())
        live = tmp_path / temp_name("run")
        live.mkdir()
        write()
        assert not dead.exists() and live.exists()
    assert reclaim_stale(tmp_path / "missing") == []


def test_kill_9_during_prepare_then_rerun(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL while a version is being built; the next prepare removes the leftover, finishes
    and verifies, and leaves no temporary behind."""
    out = tmp_path / "store"
    args = ["prepare", "synthetic-fmri", "--out", str(out), "--seed", "3", *sets(TINY)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mindzoo", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(Path(mindzoo.__file__).parents[1])},
    )
    deadline = time.monotonic() + 60
    try:
        while not list((out / "versions").glob(".tmp-*")):
            assert proc.poll() is None, "prepare ended before it built a version"
            assert time.monotonic() < deadline, "no temporary version appeared"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    left = list((out / "versions").glob(".tmp-*"))
    assert len(left) == 1 and not (out / "CURRENT").exists()
    capsys.readouterr()
    assert cli(*args) == 0
    assert "removed 1 stale temporary" in capsys.readouterr().err
    assert cli("verify", str(out)) == 0
    assert [p for p in out.rglob(".tmp-*")] == []


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_written_files_honour_the_umask(tmp_path: Path) -> None:
    save_arrays({"a": np.zeros(2)}, tmp_path / "a.safetensors")
    ckpt.save_weights(tmp_path / "b.safetensors", {"w": torch.zeros(2)})
    old = os.umask(0o027)
    try:
        save_arrays({"a": np.zeros(2)}, tmp_path / "c.safetensors")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.safetensors") == 0o666 & ~old
    assert _mode(tmp_path / "b.safetensors") == 0o666 & ~old
    assert _mode(tmp_path / "c.safetensors") == 0o640


def test_a_ridge_run_is_readable_and_its_hint_is_one_line(
    shared_tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every file of a run gets the umask's mode (0644 under 022); the ``next:`` hint with a
    path far longer than 80 columns stays on one line when stdout is not a terminal."""
    out = tmp_path / ("a-rather-long-directory-name-" * 4) / "ridge-run"
    args = ["train", "ridge", "--store", str(shared_tiny_store), "--out", str(out)]
    assert cli(*args, "--subjects", "01") == 0
    printed = capsys.readouterr().out
    hint = f"(next: braindecode-cli evaluate {out})"
    assert len(hint) > 120
    assert any(line.rstrip().endswith(hint) for line in printed.splitlines()), printed
    umask = os.umask(0o022)
    os.umask(umask)
    modes = {p.name: _mode(p) for p in out.iterdir() if p.is_file()}
    assert "model.safetensors" in modes and "predictions.safetensors" in modes
    assert set(modes.values()) == {0o666 & ~umask}, modes


def test_no_validation_split_shows_n_a() -> None:
    assert _val_text(None) == "n/a"
    assert _val_text(0.0) == "0.0000"
    assert _val_text(1.23456) == "1.2346"
