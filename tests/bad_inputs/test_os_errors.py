"""Places the operating system will not let a command write: an ``--out`` that is a file or
lies below one, an ``--out`` on a read-only file system, and a CUDA device on a machine without
one. Each is one ``error:`` line naming the path or value, exit 2, nothing written."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from factories.cli import TINY, cli, sets
from factories.refusals import assert_refused


@pytest.fixture(scope="module")
def ridge_run(shared_tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("os-errors") / "ridge"
    args = ["train", "ridge", "--store", str(shared_tiny_store), "--out", str(run)]
    assert cli(*args, "--subjects", "01") == 0
    return run


def _commands(store: Path, run: Path, out: Path) -> dict[str, list[str]]:
    return {
        "prepare": ["prepare", "synthetic-fmri", "--seed", "3", *sets(TINY), "--out", str(out)],
        "train": ["train", "ridge", "--store", str(store), "--subjects", "01", "--out", str(out)],
        "evaluate": ["evaluate", str(run), "--out", str(out)],
        "reconstruct": ["reconstruct", str(run), "--store", str(store), "--out", str(out)],
        "adapt": [
            *["adapt", str(run), "--store", str(store), "--subject", "02"],
            *["--n-trials", "5", "--out", str(out)],
        ],
    }


@pytest.mark.parametrize("command", ["prepare", "train", "evaluate", "reconstruct", "adapt"])
def test_an_out_that_is_a_file_is_refused(
    command: str,
    shared_tiny_store: Path,
    ridge_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "a-file"
    out.write_text("not a directory")
    args = _commands(shared_tiny_store, ridge_run, out)[command]
    line = assert_refused(capsys, args, out, (tmp_path, ridge_run.parent))
    assert "is a file" in line


@pytest.mark.parametrize("command", ["prepare", "train", "evaluate"])
def test_an_out_below_a_file_is_refused(
    command: str,
    shared_tiny_store: Path,
    ridge_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    out = tmp_path / "a-file" / "out"
    args = _commands(shared_tiny_store, ridge_run, out)[command]
    line = assert_refused(capsys, args, out, (tmp_path, ridge_run.parent))
    assert f"below {tmp_path / 'a-file'}" in line


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A read-only tmpfs (root ignores file modes, so chmod would not stop it)."""
    place = tmp_path / "read-only"
    place.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(place)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield place
    finally:
        subprocess.run(["umount", str(place)], check=True)


@pytest.mark.parametrize("command", ["prepare", "train", "evaluate", "reconstruct"])
def test_an_out_on_a_read_only_file_system_is_refused(
    command: str,
    shared_tiny_store: Path,
    ridge_run: Path,
    read_only_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = read_only_dir / "out"
    args = _commands(shared_tiny_store, ridge_run, out)[command]
    line = assert_refused(capsys, args, out, (read_only_dir, ridge_run.parent))
    assert "read-only file system" in line


def test_cuda_without_a_gpu_is_refused(
    shared_tiny_store: Path, ridge_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    out = tmp_path / "recon"
    args = [*_commands(shared_tiny_store, ridge_run, out)["reconstruct"], "--device", "cuda"]
    line = assert_refused(capsys, args, "--device cuda", (tmp_path, ridge_run.parent))
    assert "no CUDA GPU" in line


@pytest.mark.parametrize(
    ("command", "place"),
    [
        ("prepare", "/proc/mindzoo-x/out"),  # /proc refuses new directories
        ("train", "/proc/mindzoo-x/out"),
        ("evaluate", "/proc/mindzoo-x/out"),
        ("train", "/sys/mindzoo-out"),  # /sys: operation not permitted, even for root
        ("evaluate", "/sys/mindzoo-out"),
    ],
)
def test_an_out_the_kernel_will_not_create_is_one_line(
    command: str,
    place: str,
    shared_tiny_store: Path,
    ridge_run: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = Path("/", Path(place).parts[1])
    if not root.is_dir():
        pytest.skip(f"no {root} on this machine")
    args = _commands(shared_tiny_store, ridge_run, Path(place))[command]
    line = assert_refused(capsys, args, place, (ridge_run.parent,))
    assert "cannot be written" in line and "writable --out" in line
