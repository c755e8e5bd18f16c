"""Damaged data is caught by the command that reads it, not only by ``verify``: a flipped byte,
a truncated or deleted chunk, a damaged ``zarr.json`` or ``manifest.json`` in a store; a
flipped byte, a damaged header or a planted pickle in a weights or predictions file. Each gives
exit 2, one ``error:`` line naming the file, and nothing written. ``verify --repair`` sets a
damaged version aside (after asking) so that ``prepare`` rebuilds it."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
from factories.cli import TINY, cli, error_lines, sets
from factories.refusals import assert_refused, listing

from mindzoo.datasets.store import TensorStore


@pytest.fixture(scope="module")
def runs(shared_tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A ridge run and a two-epoch mindeye-mlp run on sub-01 of the shared (intact) store."""
    root = tmp_path_factory.mktemp("checksum-runs")
    ridge, mlp = root / "ridge", root / "mlp"
    store = str(shared_tiny_store)
    assert cli("train", "ridge", "--store", store, "--out", str(ridge), "--subjects", "01") == 0
    args = ["train", "mindeye-mlp", "--store", store, "--out", str(mlp), "--subjects", "01"]
    assert cli(*args, *sets(MLP)) == 0
    return {"ridge": ridge, "mlp": mlp}


MLP = ["trainer.epochs=2", "trainer.keep_checkpoints=2"]  # one step per epoch: steps 1 and 2


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _chunk(version: Path) -> Path:
    return version / "subjects" / "sub-01" / "signals" / "c" / "0" / "0"


def _plant_pickle(path: Path) -> None:
    path.write_bytes(pickle.dumps({"w": list(range(10))}))


STORE_CASES = [
    "flipped byte in a chunk",
    "deleted chunk",
    "truncated chunk",
    "flipped byte in zarr.json",
    "malformed manifest.json",
]


def _damage_store(case: str, version: Path) -> tuple[Path, str]:
    """Damage ``version`` as ``case`` says; the file the error must name and what it says."""
    chunk = _chunk(version)
    if case == "flipped byte in a chunk":
        _flip(chunk, chunk.stat().st_size // 2)
        return chunk, "does not match its checksum"
    if case == "deleted chunk":
        chunk.unlink()
        return chunk, "is missing"
    if case == "truncated chunk":
        chunk.write_bytes(chunk.read_bytes()[:50])
        return chunk, "does not match its checksum"
    if case == "flipped byte in zarr.json":
        meta = version / "subjects" / "sub-01" / "signals" / "zarr.json"
        _flip(meta, 30)
        return meta, "does not match its checksum"
    (version / "manifest.json").write_text('{"schema_version": 1,')
    return version / "manifest.json", "is not valid JSON"


@pytest.mark.parametrize("case", STORE_CASES)
def test_train_refuses_a_damaged_store(
    case: str,
    shared_tiny_store: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = tmp_path / "store"
    shutil.copytree(shared_tiny_store, store)
    named, says = _damage_store(case, _v(store))
    out = tmp_path / "run"
    args = ["train", "ridge", "--store", store, "--out", out, "--subjects", "01"]
    line = assert_refused(capsys, args, named, (store, tmp_path))
    assert says in line and "verify" in line
    assert not out.exists()


def _v(store: Path) -> Path:
    return store / "versions" / (store / "CURRENT").read_text().strip()


def _damage_file(path: Path, how: str) -> None:
    if how == "flipped data byte":
        _flip(path, path.stat().st_size - 2)
    elif how == "flipped header byte":
        _flip(path, 9)  # the first character of the JSON header
    else:
        _plant_pickle(path)


RUN_DAMAGE = {
    # case -> (run, damaged file, how); the command is the case's first word
    "evaluate: predictions flipped": ("ridge", "predictions.safetensors", "flipped data byte"),
    "evaluate: predictions header": ("ridge", "predictions.safetensors", "flipped header byte"),
    "evaluate: predictions pickle": ("ridge", "predictions.safetensors", "planted pickle"),
    "reconstruct: predictions flipped": ("ridge", "predictions.safetensors", "flipped data byte"),
    "adapt: weights flipped": ("mlp", "model.safetensors", "flipped data byte"),
    "adapt: weights pickle": ("mlp", "model.safetensors", "planted pickle"),
}


@pytest.mark.parametrize("case", sorted(RUN_DAMAGE))
def test_readers_refuse_a_damaged_run_file(
    case: str,
    runs: dict[str, Path],
    shared_tiny_store: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    kind, name, how = RUN_DAMAGE[case]
    run = tmp_path / kind
    shutil.copytree(runs[kind], run)
    _damage_file(run / name, how)
    out = tmp_path / "out"
    command = case.split(":")[0]
    args = {
        "evaluate": ["evaluate", run, "--out", out],
        "reconstruct": ["reconstruct", run, "--store", shared_tiny_store, "--out", out],
        "adapt": ["adapt", run, "--store", shared_tiny_store, "--subject", "02", "--out", out],
    }[command]
    line = assert_refused(capsys, args, run / name, (tmp_path, shared_tiny_store))
    assert "damaged" in line and "weights_only=False" not in line
    if how == "planted pickle":
        assert "a pickle, never loaded" in line
    assert not out.exists()


@pytest.mark.parametrize("how", ["flipped byte", "planted pickle, no checksum file"])
def test_resume_refuses_a_damaged_optimizer_state(
    how: str,
    runs: dict[str, Path],
    shared_tiny_store: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = tmp_path / "mlp"
    shutil.copytree(runs["mlp"], run)
    for name in ("metrics.json", "model.safetensors", "predictions.safetensors"):
        (run / name).unlink()  # as if killed after the first epoch's checkpoint
    shutil.rmtree(run / "checkpoints" / "step-00000002")
    optimizer = run / "checkpoints" / "step-00000001" / "optimizer.pt"
    if how == "flipped byte":
        _flip(optimizer, optimizer.stat().st_size - 100)
    else:
        (optimizer.parent / "optimizer.sha256").unlink()
        _plant_pickle(optimizer)
    args = ["train", "mindeye-mlp", "--store", shared_tiny_store, "--out", run]
    args += ["--subjects", "01", *sets(MLP), "--resume"]
    line = assert_refused(capsys, args, optimizer, (tmp_path, shared_tiny_store))
    said = "does not match optimizer.sha256" if how == "flipped byte" else "not a plain tensor"
    assert said in line and "weights_only=False" not in line


def test_verify_repair_quarantines_after_asking_and_prepare_rebuilds(
    shared_tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    shutil.copytree(shared_tiny_store, store)
    version = _v(store)
    n_files = len(list(version.rglob("*")))
    (version / "manifest.json").write_text("{not json")
    capsys.readouterr()
    assert cli("verify", str(store)) == 1
    assert "manifest.json is not valid JSON" in capsys.readouterr().out

    before = listing(store)  # without a terminal and without --yes: asks nothing, moves nothing
    assert cli("verify", str(store), "--repair") == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "--yes" in lines[0] and str(store) in lines[0]
    assert listing(store) == before

    assert cli("verify", str(store), "--repair", "--yes") == 0
    moved = list((store / "quarantine").iterdir())
    assert len(moved) == 1 and moved[0].name.startswith(version.name)
    assert len(list(moved[0].rglob("*"))) == n_files  # set aside whole, nothing deleted
    assert not version.exists() and not (store / "CURRENT").exists()

    args = ["prepare", "synthetic-fmri", "--out", str(store), "--seed", "3", *sets(TINY)]
    assert cli(*args) == 0
    assert _v(store) == version
    capsys.readouterr()
    assert cli("verify", str(store)) == 0
    assert cli("verify", str(store), "--repair", "--yes") == 0
    assert "nothing to do" in capsys.readouterr().out


def test_prepare_rebuilds_a_version_whose_manifest_is_damaged(
    shared_tiny_store: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    shutil.copytree(shared_tiny_store, store)
    (_v(store) / "manifest.json").write_text("[]")
    args = ["prepare", "synthetic-fmri", "--out", str(store), "--seed", "3", *sets(TINY)]
    assert cli(*args) == 0
    assert cli("verify", str(store)) == 0


def test_an_intact_store_is_read_with_each_file_hashed_once(
    shared_tiny_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib

    from mindzoo.datasets import verified

    calls: list[int] = []
    real = hashlib.sha256

    def counting(data: bytes = b"") -> object:
        calls.append(len(data))
        return real(data)

    monkeypatch.setattr(verified.hashlib, "sha256", counting)
    store = TensorStore.open(shared_tiny_store)
    first = store.signals("sub-01")[:]
    n_first = len(calls)
    again = store.signals("sub-01")[:]
    assert n_first >= 1 and len(calls) == n_first  # the second read hashes nothing
    assert (first == again).all()
