"""Damaged or malformed files a command reads: a run's config.json, a checkpoint's
trainer_state.json and optimizer.pt (`train --resume`), and the files of a BIDS source (empty,
truncated or foreign bold images, empty events, a corrupt PNG). Each is refused with exit 2,
one ``error:`` line naming the file, no traceback and nothing written."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from factories.bids import bold_path, write_bids_fmri
from factories.cli import cli
from factories.refusals import assert_refused


@pytest.fixture(scope="module")
def ridge_run(shared_tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("damaged") / "ridge"
    args = ["train", "ridge", "--store", str(shared_tiny_store), "--out", str(run)]
    assert cli(*args, "--subjects", "01") == 0
    return run


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


RUN_CONFIGS: dict[str, Callable[[Path], Path]] = {
    "config.json not JSON": lambda run: _write(run / "config.json", "{not json"),
    "config.json empty": lambda run: _write(run / "config.json", ""),
    "config.json truncated": lambda run: _write(
        run / "config.json", (run / "config.json").read_text()[:40]
    ),
    "config.json a list": lambda run: _write(run / "config.json", "[1, 2]"),
    "config.json without model and store": lambda run: _write(run / "config.json", "{}"),
}


CONFIG_CASES = [("evaluate", damage) for damage in RUN_CONFIGS] + [
    (command, damage)
    for command in ("reconstruct", "adapt")
    for damage in ("config.json not JSON", "config.json a list")
]


@pytest.mark.parametrize(("command", "damage"), CONFIG_CASES)
def test_a_damaged_run_config_is_refused(
    command: str,
    damage: str,
    ridge_run: Path,
    shared_tiny_store: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = tmp_path / "run"
    shutil.copytree(ridge_run, run)
    named = RUN_CONFIGS[damage](run)
    store, out = str(shared_tiny_store), tmp_path / "out"
    args = {
        "evaluate": ["evaluate", run],
        "reconstruct": ["reconstruct", run, "--store", store, "--out", out],
        "adapt": [
            "adapt",
            run,
            "--store",
            store,
            "--subject",
            "02",
            "--n-trials",
            "5",
            "--out",
            out,
        ],
    }[command]
    line = assert_refused(capsys, args, named, (run, out, shared_tiny_store.parent))
    assert "Traceback" not in line and "JSONDecodeError" not in line


# --- train --resume: a checkpoint's trainer_state.json and optimizer.pt ------------------------


@pytest.fixture(scope="module")
def unfinished_run(shared_tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A mindeye-mlp run of two epochs whose second epoch 'never happened': its last checkpoint
    and final files are removed, so `--resume` reads the first checkpoint."""
    run = tmp_path_factory.mktemp("resume") / "mlp"
    assert cli(*RESUME_ARGS(shared_tiny_store, run)) == 0
    for name in ("metrics.json", "model.safetensors", "predictions.safetensors"):
        (run / name).unlink(missing_ok=True)
    checkpoints = sorted((run / "checkpoints").iterdir())
    assert len(checkpoints) == 2
    shutil.rmtree(checkpoints[-1])
    return run


def RESUME_ARGS(store: Path, run: Path) -> list[str]:  # noqa: N802 - a constant's shape
    sets = ["trainer.epochs=2", "trainer.keep_checkpoints=2", "model.hidden_dim=16"]
    sets += ["model.n_blocks=1", "trainer.batch_size=32"]
    return [
        "train",
        "mindeye-mlp",
        "--store",
        str(store),
        "--out",
        str(run),
        "--subjects",
        "01",
        *[a for s in sets for a in ("--set", s)],
    ]


class _Planted:
    def __reduce__(self) -> tuple:
        return (print, ("a planted pickle ran",))


def _plant_pickle(checkpoint: Path, with_checksum: bool) -> Path:
    path = checkpoint / "optimizer.pt"
    torch.save({"optimizer": _Planted(), "scheduler": {}}, path)
    if with_checksum:  # the attacker rewrote the checksum as well
        (checkpoint / "optimizer.sha256").write_text(hashlib.sha256(path.read_bytes()).hexdigest())
    return path


CHECKPOINT_DAMAGE: dict[str, Callable[[Path], Path]] = {
    "trainer_state.json not JSON": lambda ck: _write(ck / "trainer_state.json", "{oops"),
    "trainer_state.json of other keys": lambda ck: _write(ck / "trainer_state.json", '{"x": 1}'),
    "optimizer.pt a pickle": lambda ck: _plant_pickle(ck, with_checksum=False),
    "optimizer.pt a pickle with its checksum": lambda ck: _plant_pickle(ck, with_checksum=True),
    "optimizer.pt empty": lambda ck: _write(ck / "optimizer.pt", ""),
}


@pytest.mark.parametrize("damage", list(CHECKPOINT_DAMAGE))
def test_a_damaged_checkpoint_is_refused_by_resume(
    damage: str,
    unfinished_run: Path,
    shared_tiny_store: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = tmp_path / "run"
    shutil.copytree(unfinished_run, run)
    checkpoint = next((run / "checkpoints").iterdir())
    named = CHECKPOINT_DAMAGE[damage](checkpoint)
    args = [*RESUME_ARGS(shared_tiny_store, run), "--resume"]
    line = assert_refused(capsys, args, named, (run, shared_tiny_store.parent))
    assert "weights_only=False" not in line
    if "pickle" in damage:
        assert "not a plain tensor file" in line or "does not match" in line, line
    assert "a planted pickle ran" not in capsys.readouterr().out


# --- prepare bids-fmri: damaged source files and bad events ---------------------------------


@pytest.fixture(scope="module")
def bids_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bids-damaged") / "raw"
    write_bids_fmri(root, n_subjects=1, n_sessions=1, n_runs=2, n_train_per_run=3, seed=1)
    return root


def _events(root: Path) -> Path:
    return next(root.rglob("*run-01_events.tsv"))


def _edit_events(root: Path, row: int, column: str, value: str) -> Path:
    path = _events(root)
    lines = [line.split("\t") for line in path.read_text().splitlines()]
    lines[row + 1][lines[0].index(column)] = value
    path.write_text("\n".join("\t".join(line) for line in lines) + "\n")
    return path


def _truncate(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _constant_bold(root: Path) -> Path:
    import nibabel as nib
    import numpy as np

    path = bold_path(root, "01", 1, 1)
    image = nib.load(path)
    nib.save(
        nib.Nifti1Image(np.full(image.shape, 100.0, np.float32), image.affine, image.header), path
    )
    return path


SOURCE_DAMAGE: dict[str, tuple[Callable[[Path], Path], str]] = {
    # case -> (damage, returning the file; what the error line names: "path" or "name")
    "zero-byte bold": (lambda r: _write(bold_path(r, "01", 1, 1), ""), "path"),
    "truncated bold .nii.gz": (lambda r: _truncate(bold_path(r, "01", 1, 1)), "path"),
    "bold that is not NIfTI": (lambda r: _write(bold_path(r, "01", 1, 1), "hello" * 40), "path"),
    "zero-byte events.tsv": (lambda r: _write(_events(r), ""), "path"),
    "corrupt PNG stimulus": (
        lambda r: _write(sorted((r / "stimuli").glob("*.png"))[0], "\x89PNG broken"),
        "path",
    ),
    "negative duration": (lambda r: _edit_events(r, 1, "duration", "-2.0"), "name"),
    "negative trial onset": (lambda r: _edit_events(r, 0, "onset", "-5.0"), "name"),
    "onset that is not a number": (lambda r: _edit_events(r, 0, "onset", "abc"), "name"),
    "constant (all-equal) run": (_constant_bold, "name"),
}


@pytest.mark.parametrize("damage", list(SOURCE_DAMAGE))
def test_a_damaged_bids_source_is_refused(
    damage: str, bids_source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "raw"
    shutil.copytree(bids_source, source)
    hurt, naming = SOURCE_DAMAGE[damage]
    path = hurt(source)
    out = tmp_path / "store"
    args = ["prepare", "bids-fmri", "--source", source, "--out", out]
    named = path if naming == "path" else path.name
    line = assert_refused(capsys, args, named, (tmp_path,))  # no lock file left beside out
    assert "aborted" not in line


def test_a_run_without_trials_is_left_out_with_a_warning(
    bids_source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An events table with no rows (real datasets have such runs) is not refused, but the
    run it drops is named and counted in prepare's summary and metrics.json."""
    source = tmp_path / "raw"
    shutil.copytree(bids_source, source)
    events = _events(source)
    events.write_text(events.read_text().splitlines()[0] + "\n")  # the header only
    out = tmp_path / "store"
    capsys.readouterr()
    assert cli("prepare", "bids-fmri", "--source", str(source), "--out", str(out)) == 0
    printed = capsys.readouterr().out
    run = bold_path(source, "01", 1, 1).name
    assert f"warning: sub-01: 1 run(s) left out, no events row names a stimulus: {run}" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["subjects"]["sub-01"]["runs_without_trials"] == [run]
    assert metrics["subjects"]["sub-01"]["n_trials"] == 3 + 3  # the other run's trials only
    assert cli("verify", str(out)) == 0


def test_an_eof_error_is_not_reported_as_ctrl_c(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """click turns every EOFError into an Abort; a truncated file is not a Ctrl-C (exit 130)."""
    import mindzoo.models

    def truncated() -> None:
        raise EOFError("Compressed file ended before the end-of-stream marker was reached")

    monkeypatch.setattr(mindzoo.models, "list_models", truncated)
    assert cli("models") == 2
    err = capsys.readouterr().err
    assert "aborted" not in err
    assert err.strip() == (
        "error: a file or input ended early (Compressed file ended before the end-of-stream "
        "marker was reached); it is truncated"
    )
