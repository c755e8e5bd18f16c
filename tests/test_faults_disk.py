"""A full disk (ENOSPC) and a read-only file system (EROFS) under ``--out``.

A small tmpfs holds an earlier, complete output of the same command; it is then shrunk to what
it holds plus a little, so the next command runs out of space part-way through writing. Each
command must end with status 2 and one ``error: no space left on device writing PATH; ...``
line (no traceback), leave nothing half-written (no new output, no ``.tmp-*``) and leave the
earlier output byte for byte as it was. A tmpfs remounted read-only gets one line each too.

Mounting needs root (CI runs as root); elsewhere these tests are skipped with the reason.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from factories.cli import TINY, cli, error_lines, sets

DIFFUSION = [
    "model.image_size=16",
    "model.channels=[16,32]",
    "model.norm_groups=8",
    "model.attention_head_dim=8",
    "trainer.steps=1",
    "trainer.batch_size=8",
]
DECODER = ["trainer.epochs=1", "trainer.batch_size=32", "model.hidden_dim=64"]
RECONSTRUCT = ["--subjects", "01", "--no-control", "--steps", "2"]
MiB = 1024 * 1024


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, check=False)


@contextmanager
def small_disk(directory: Path, size: int = 64 * MiB) -> Iterator[Path]:
    """A tmpfs of ``size`` bytes mounted on ``directory`` (skips the test where that is not
    possible); always unmounted at the end."""
    directory.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        pytest.skip("no mount command: cannot make a small file system to fill")
    done = _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory))
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {done.stderr.strip() or done.returncode}")
    try:
        yield directory
    finally:
        if subprocess.run(["umount", str(directory)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(directory)], check=True)


def shrink(disk: Path, spare: int) -> None:
    """Resize the tmpfs ``disk`` to what it holds now plus ``spare`` bytes."""
    size = shutil.disk_usage(disk).used + spare
    done = _mount("-o", f"remount,size={size}", str(disk))
    assert done.returncode == 0, done.stderr
    assert shutil.disk_usage(disk).free <= spare + 4096


def hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def one_error(capsys: pytest.CaptureFixture[str], *phrases: str) -> str:
    """The one ``error:`` line of the command just run (no traceback), which says ``phrases``."""
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1, lines
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])
    return lines[0]


def test_disk_full_during_prepare(
    shared_tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second version (other settings, the same simulation) into a store on a full disk:
    its temporary is removed; the store (finished version, CURRENT, metrics.json) stays."""
    with small_disk(tmp_path / "disk") as disk:
        store = disk / "store"
        shutil.copytree(shared_tiny_store, store)
        before = hashes(store)
        shrink(disk, 64 * 1024)
        args = ["prepare", "synthetic-fmri", "--out", str(store), "--seed", "3", *sets(TINY)]
        capsys.readouterr()
        assert cli(*args, "--set", "features=[]") == 2
        one_error(capsys, "no space left on device", str(store))
        assert hashes(store) == before and list(store.rglob(".tmp-*")) == []
        assert cli("verify", str(store)) == 0


def test_disk_full_during_train_ridge(
    shared_tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["train", "ridge", "--store", str(shared_tiny_store)]
    with small_disk(tmp_path / "disk") as disk:
        assert cli(*base, "--subjects", "01", "--out", str(disk / "first")) == 0
        before = hashes(disk)
        shrink(disk, 1 * MiB)  # the second run's weights alone are 2.8 MB
        capsys.readouterr()
        assert cli(*base, "--out", str(disk / "second")) == 2
        one_error(capsys, "no space left on device", f"writing {disk / 'second'};")
        assert hashes(disk) == before
        assert sorted(p.name for p in disk.iterdir()) == ["first"]


def test_disk_full_during_torch_training(
    shared_tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The disk fills while the first checkpoint's optimizer state is written (``torch.save``,
    which says only ``RuntimeError``): one line, the half-written checkpoint and the run
    directory this call made are removed, the earlier run stays."""
    base = ["train", "mindeye-mlp", "--store", str(shared_tiny_store), *sets(DECODER)]
    with small_disk(tmp_path / "disk") as disk:
        assert cli(*base, "--out", str(disk / "first")) == 0
        before = hashes(disk)
        (checkpoint,) = (disk / "first" / "checkpoints").iterdir()
        sizes = {p.name: p.stat().st_size for p in checkpoint.iterdir()}
        first = ("rng-rank0.safetensors", "model.safetensors", "best.safetensors")
        written_first = [name for name in first if name in sizes]  # before optimizer.pt
        pages = 4096 * (len(written_first) + 4)  # each file takes whole pages; config.json
        shrink(disk, sum(sizes[n] for n in written_first) + pages + sizes["optimizer.pt"] // 2)
        capsys.readouterr()
        assert cli(*base, "--out", str(disk / "second")) == 2
        one_error(capsys, "no space left on device", str(disk / "second"))
        assert hashes(disk) == before
        assert sorted(p.name for p in disk.iterdir()) == ["first"]


def test_disk_full_during_evaluate(
    shared_tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Re-evaluating a run whose eval/ is there, and evaluating into a new --out, on a full
    disk: the earlier eval/ stays whole; no partial eval/ appears."""
    with small_disk(tmp_path / "disk") as disk:
        run = disk / "run"
        train = ["train", "ridge", "--store", str(shared_tiny_store), "--subjects", "01"]
        assert cli(*train, "--out", str(run)) == 0
        assert cli("evaluate", str(run)) == 0
        before = hashes(disk)
        assert "run/eval/metrics.json" in before and "run/eval/report.md" in before
        shrink(disk, 128 * 1024)  # metrics.json and a figure or two: not the whole report
        capsys.readouterr()
        assert cli("evaluate", str(run)) == 2
        one_error(capsys, "no space left on device", f"writing {run / 'eval'};")
        assert hashes(disk) == before and list(disk.rglob(".tmp-*")) == []
        assert cli("evaluate", str(run), "--out", str(disk / "new" / "eval")) == 2
        one_error(capsys, "no space left on device", str(disk / "new" / "eval"))
        assert hashes(disk) == before and sorted(p.name for p in disk.iterdir()) == ["run"]


@pytest.fixture(scope="module")
def diffusion_weights(shared_tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-step embedded diffusion model (its quality does not matter here)."""
    out = tmp_path_factory.mktemp("disk") / "diffusion"
    args = ["train", "diffusion", "--store", str(shared_tiny_store), "--out", str(out)]
    assert cli(*args, *sets(DIFFUSION)) == 0
    return out


@pytest.fixture(scope="module")
def ridge_run(shared_tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("disk") / "ridge"
    assert cli("train", "ridge", "--store", str(shared_tiny_store), "--out", str(out)) == 0
    return out


def test_disk_full_during_reconstruct(
    shared_tiny_store: Path,
    diffusion_weights: Path,
    ridge_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    base = ["reconstruct", str(ridge_run), "--store", str(shared_tiny_store)]
    base += ["--weights", str(diffusion_weights), *RECONSTRUCT]
    with small_disk(tmp_path / "disk") as disk:
        assert cli(*base, "--out", str(disk / "first")) == 0
        before = hashes(disk)
        assert len(before) >= 10  # 8 images, the grid, features, metrics
        shrink(disk, 16 * 1024)  # a few files' worth
        capsys.readouterr()
        assert cli(*base, "--out", str(disk / "second")) == 2
        one_error(capsys, "no space left on device", f"writing {disk / 'second'};")
        assert hashes(disk) == before
        assert sorted(p.name for p in disk.iterdir()) == ["first"]


def test_read_only_output(
    shared_tiny_store: Path,
    diffusion_weights: Path,
    ridge_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--out`` in a read-only file system: one line naming it, exit 2, for every command
    that writes (nothing is written: nothing can be)."""
    store = str(shared_tiny_store)
    with small_disk(tmp_path / "disk", 1 * MiB) as disk:
        (disk / "parent").mkdir()
        assert _mount("-o", "remount,ro", str(disk)).returncode == 0
        parent = disk / "parent"
        commands = {
            "prepare": ["prepare", "synthetic-fmri", "--out", str(parent / "store"), *sets(TINY)],
            "ridge": ["train", "ridge", "--store", store, "--out", str(parent / "run")],
            "decoder": [
                "train",
                "mindeye-mlp",
                "--store",
                store,
                "--out",
                str(parent / "mlp"),
                *sets(["trainer.epochs=1", "model.hidden_dim=16"]),
            ],
            "evaluate": ["evaluate", str(ridge_run), "--out", str(parent / "eval")],
            "reconstruct": [
                "reconstruct",
                str(ridge_run),
                "--store",
                store,
                "--weights",
                str(diffusion_weights),
                *RECONSTRUCT,
                "--out",
                str(parent / "recon"),
            ],
        }
        capsys.readouterr()
        for name, args in commands.items():
            assert cli(*args) == 2, name
            one_error(capsys, "read-only file system", args[args.index("--out") + 1])
        assert list(parent.iterdir()) == []
    assert not (tmp_path / "disk" / "parent").exists()  # unmounted
