"""A prepare split into jobs (one per subject, stimuli, feature chunks) writes a serial prepare's
bytes, records every job, and fails with the failed job's log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from factories.cli import TINY, cli, error_lines, sets

from mindzoo.datasets.store import TensorStore
from mindzoo.pipelines.fmri_store import feature_slices


def _manifest(store: Path) -> dict:
    return TensorStore.open(store).manifest


def test_parallel_prepare_writes_the_serial_bytes(tmp_path: Path) -> None:
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    args = ("prepare", "synthetic-fmri", "--seed", "5", *sets(TINY))
    assert cli(*args, "--out", str(serial)) == 0
    assert cli(*args, "--out", str(parallel), "--jobs", "2", "--cpus", "1") == 0
    a, b = _manifest(serial), _manifest(parallel)
    assert a["config_hash"] == b["config_hash"]
    assert len(a["checksums"]) > 40
    assert a["checksums"] == b["checksums"]  # every array, chunk and metadata file
    assert a["source"]["n_files_read"] == b["source"]["n_files_read"]
    names = [job["name"] for job in b["jobs"]]
    n_stimuli = len(TensorStore.open(parallel).stimulus_ids)
    assert names == [f"features:0:{n_stimuli}", "stimuli", "sub-01", "sub-02"]
    assert all(job["wall_s"] > 0 and 50 < job["peak_rss_mb"] < 8000 for job in b["jobs"])
    assert "jobs" not in a
    metrics = json.loads((parallel / "metrics.json").read_text())
    assert metrics["subjects"]["sub-01"]["n_trials"] == 84


def test_feature_slices_cover_whole_chunks() -> None:
    assert feature_slices(68, 2) == [(0, 68)]
    assert feature_slices(2050, 2) == [(0, 1280), (1280, 2050)]
    assert feature_slices(2050, 100) == [(i, min(2050, i + 256)) for i in range(0, 2050, 256)]
    assert feature_slices(512, 1) == [(0, 512)]


def test_bad_executor_values_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "store"
    assert cli("prepare", "synthetic-fmri", "--out", str(out), "--executor", "pbs") == 2
    assert error_lines(capsys.readouterr().err) == [
        "error: Unknown executor 'pbs'; choose from local, slurm"
    ]
    assert cli("prepare", "synthetic-fmri", "--out", str(out), "--slurm-set", "qos") == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
    assert not out.exists()
