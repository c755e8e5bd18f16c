"""Refusals whose advice must fit the mistake: a model given a store of the wrong modality says
the store's modality and what the model needs; `adapt` and `reconstruct` of an EEG/iEEG run say
what they need; `evaluate` of a run whose store moved says to pass ``--store`` (and refuses a
``--store`` of another config). Exit 2, one line naming the store, run or value, nothing written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from factories.cli import cli, sets
from factories.ephys import write_ephys_store
from factories.refusals import assert_refused


@pytest.fixture(scope="module")
def places(shared_tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An EEG store (synthetic-eeg), an iEEG store with an eegnet run, an fMRI ridge run."""
    root = tmp_path_factory.mktemp("advice")
    eeg = root / "eeg"
    small = ["simulator.n_subjects=1", "simulator.n_categories=3", "simulator.repetitions=10"]
    assert cli("prepare", "synthetic-eeg", "--out", str(eeg), *sets(small)) == 0
    ieeg = write_ephys_store(root / "ieeg", seed=5)
    eegnet = root / "eegnet"
    args = ["train", "eegnet", "--store", str(ieeg), "--out", str(eegnet)]
    assert cli(*args, "--set", "trainer.epochs=1") == 0
    ridge = root / "ridge"
    args = ["train", "ridge", "--store", str(shared_tiny_store), "--out", str(ridge)]
    assert cli(*args, "--subjects", "01") == 0
    return {"eeg": eeg, "ieeg": ieeg, "eegnet": eegnet, "ridge": ridge, "root": root}


def _cases(places: dict[str, Path], fmri: Path, out: Path) -> dict[str, tuple[list[str], str]]:
    eeg, eegnet = places["eeg"], places["eegnet"]
    train = ["train", "--out", str(out), "--store"]
    return {
        "ridge on an EEG store": ([*train, str(eeg), "ridge"], "holds eeg data"),
        "brain-it on an EEG store": ([*train, str(eeg), "brain-it"], "holds eeg data"),
        "diffusion on an EEG store": ([*train, str(eeg), "diffusion"], "holds eeg data"),
        "ridge on an iEEG store": ([*train, str(places["ieeg"]), "ridge"], "holds ieeg data"),
        "eegnet on an fMRI store": ([*train, str(fmri), "eegnet"], "holds fmri data"),
        "shallow-fbcsp on an fMRI store": ([*train, str(fmri), "shallow-fbcsp"], "holds fmri data"),
        "adapt of an EEG/iEEG run": (
            [
                *["adapt", str(eegnet), "--store", str(places["ieeg"]), "--subject", "02"],
                *["--n-trials", "5", "--out", str(out)],
            ],
            str(eegnet),
        ),
        "reconstruct of an EEG/iEEG run": (
            ["reconstruct", str(eegnet), "--store", str(places["ieeg"]), "--out", str(out)],
            str(eegnet),
        ),
    }


CASES = [
    "ridge on an EEG store",
    "brain-it on an EEG store",
    "diffusion on an EEG store",
    "ridge on an iEEG store",
    "eegnet on an fMRI store",
    "shallow-fbcsp on an fMRI store",
    "adapt of an EEG/iEEG run",
    "reconstruct of an EEG/iEEG run",
]


@pytest.mark.parametrize("case", CASES)
def test_the_advice_fits_the_mistake(
    case: str,
    places: dict[str, Path],
    shared_tiny_store: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    args, named = _cases(places, shared_tiny_store, out)[case]
    roots = (places["root"], shared_tiny_store.parent, tmp_path)
    line = assert_refused(capsys, args, named, roots)
    assert "features=" not in line and "not a torch" not in line  # the old, misleading advice
    assert " not ;" not in line  # "[trial, channel, time]" was eaten as markup
    if "store" in case:
        assert "fmri" in line.lower() and ("eeg" in line.lower())


def test_the_cases_are_all_run(places: dict[str, Path], shared_tiny_store: Path) -> None:
    assert sorted(_cases(places, shared_tiny_store, Path("x"))) == sorted(CASES)


@pytest.fixture
def moved(places: dict[str, Path], tmp_path: Path) -> Path:
    """A copy of the ridge run whose store is no longer where the run recorded it."""
    run = tmp_path / "run"
    shutil.copytree(places["ridge"], run)
    config = json.loads((run / "config.json").read_text())
    config["store"] = str(tmp_path / "gone" / "versions" / Path(config["store"]).name)
    (run / "config.json").write_text(json.dumps(config))
    return run


def test_evaluate_of_a_moved_store_says_to_pass_store(
    moved: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = assert_refused(capsys, ["evaluate", moved], tmp_path / "gone", (tmp_path,))
    assert "--store" in line and "prepare" not in line


def test_evaluate_store_of_another_config_is_refused(
    moved: Path, places: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["evaluate", moved, "--store", places["eeg"]]
    line = assert_refused(capsys, args, f"--store {places['eeg']}", (tmp_path, places["root"]))
    assert "config hash" in line


def test_evaluate_store_finds_the_moved_store(
    moved: Path, shared_tiny_store: Path, places: dict[str, Path], tmp_path: Path
) -> None:
    """The refusal's advice works: with ``--store`` the moved run scores as the original."""
    assert cli("evaluate", str(moved), "--store", str(shared_tiny_store)) == 0
    assert cli("evaluate", str(places["ridge"]), "--out", str(tmp_path / "original")) == 0
    metrics = json.loads((moved / "eval" / "metrics.json").read_text())
    original = json.loads((tmp_path / "original" / "metrics.json").read_text())
    assert list(metrics["subjects"]) == ["sub-01"]
    assert metrics["mean"] == original["mean"]
