"""A BIDS-valid ``n/a`` as an event's ``trial_type`` is no event: the row is not epoched, the
prepare still succeeds, and the summary and ``metrics.json`` count the rows left out (it used to
end in a TypeError traceback while sorting the labels)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from factories.cli import cli, sets

SMALL = ["simulator.n_subjects=1", "simulator.n_categories=2", "simulator.repetitions=6"]


def test_na_trial_types_are_skipped_and_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    simulated = tmp_path / "simulated"
    assert cli("prepare", "synthetic-eeg", "--out", str(simulated), *sets(SMALL)) == 0
    (raw,) = (simulated / "raw").iterdir()
    source = tmp_path / "bids"
    shutil.copytree(raw, source)
    (events,) = source.rglob("*_events.tsv")
    lines = events.read_text().splitlines()
    column = lines[0].split("\t").index("trial_type")
    for row in (1, 4):  # two events lose their type
        cells = lines[row].split("\t")
        cells[column] = "n/a"
        lines[row] = "\t".join(cells)
    events.write_text("\n".join(lines) + "\n")

    plain = tmp_path / "plain"
    assert cli("prepare", "bids-eeg", "--source", str(raw), "--out", str(plain)) == 0
    out = tmp_path / "store"
    capsys.readouterr()
    assert cli("prepare", "bids-eeg", "--source", str(source), "--out", str(out)) == 0
    said = capsys.readouterr().out
    assert "2 events.tsv row(s) with n/a" in said
    before = json.loads((plain / "metrics.json").read_text())["subjects"]["sub-01"]
    after = json.loads((out / "metrics.json").read_text())["subjects"]["sub-01"]
    assert after["n_trials"] == before["n_trials"] - 2
    assert after["events_without_value"] == 2 and "events_without_value" not in before
    if after["n_test_trials"] == 0:  # 10 trials of 2 classes leave none for testing: said
        assert "warning: sub-01: no test trials" in said
    else:
        assert "no test trials" not in said


def test_a_store_without_test_trials_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "store"
    few = ["simulator.n_subjects=1", "simulator.n_categories=2", "simulator.repetitions=2"]
    capsys.readouterr()
    assert cli("prepare", "synthetic-eeg", "--out", str(out), *sets(few)) == 0
    said = capsys.readouterr().out
    sizes = json.loads((out / "metrics.json").read_text())["subjects"]["sub-01"]
    assert sizes["n_test_trials"] == 0
    assert "warning: sub-01: no test trials" in said
