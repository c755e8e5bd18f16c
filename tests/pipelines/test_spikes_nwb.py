"""The NWB spikes pipeline on NWB files written here with pynwb: optional fields, store
values, malformed files (one-line errors, no store left), and the CLI end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from factories.cli import cli, error_lines, sets
from factories.nwb import Series, write_nwb

from mindzoo.datasets.store import TensorStore, verify_store
from mindzoo.errors import UserInputError
from mindzoo.pipelines.prepare import prepare_dataset

UNITS = [np.array([0.1, 0.5, 2.25, 3.0]), np.array([1.0, 1.5]), np.array([0.2, 2.0, 3.9])]


def _prepare(source: Path, out: Path, *overrides: str) -> TensorStore:
    prepare_dataset("nwb-spikes", out, source=source, overrides=list(overrides), progress=False)
    assert verify_store(out).ok, verify_store(out).problems
    return TensorStore.open(out)


def _frames() -> tuple[np.ndarray, np.ndarray]:
    """Grey frames [6, 4, 4]: grey, A, B, grey, A, B at 0, 0.5, ... s (3 distinct)."""
    grey, a, b = (np.full((4, 4), v, np.uint8) for v in (128, 10, 250))
    return np.stack([grey, a, b, grey, a, b]), 0.5 * np.arange(6)


def test_full_file_reaches_the_store(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    irregular = np.sort(rng.uniform(0, 4, 60))
    trials = pd.DataFrame(
        {
            "start_time": [0.5, 1.5, 2.0, 2.5, 0.0, 3.0],
            "stop_time": [1.0, 2.0, 2.5, 3.0, 0.5, 4.0],
            "trial_type": ["a", "b", "a", "b", "a", "b"],
            "reward": [1.0, 0.0, 1.0, 1.0, 0.0, 1.0],
        }
    )
    write_nwb(
        tmp_path / "raw" / "sub-07_ses-1_ecephys.nwb",
        UNITS,
        subject_id="07",
        groups=[("shankA", "V1"), ("shankB", "LM")],
        unit_groups=[0, 1, 0],
        quality=["good", "mua", "good"],
        obs_intervals=[[[0.0, 2.0], [2.5, 4.0]], [[0.0, 4.0]], [[0.1, 4.5]]],
        behaviour={
            "RunningSpeed": Series(
                np.arange(40, dtype=float),
                rate=10.0,
                starting_time=10.0,
                conversion=0.5,
                offset=1.0,
            ),
            "pupil": Series(np.sin(irregular), timestamps=irregular, container=True),
        },
        frames=_frames(),
        trials=trials,
        coupling=np.arange(9, dtype=np.float32).reshape(3, 3),
    )
    store = _prepare(tmp_path / "raw", tmp_path / "store")
    assert store.subjects == ["sub-07"]
    rec = store.spikes("sub-07")
    times, units = rec.all_spikes()
    assert np.all(np.diff(times) >= 0)
    assert np.array_equal(np.sort(times), np.sort(np.concatenate(UNITS)))
    for k, expected in enumerate(UNITS):
        assert np.array_equal(times[units == k], expected)
    table = rec.unit_table()
    assert table["n_spikes"].tolist() == [4, 2, 3]
    assert table["electrode_group"].tolist() == ["shankA", "shankB", "shankA"]
    assert table["location"].tolist() == ["V1", "LM", "V1"]
    assert table["quality"].tolist() == ["good", "mua", "good"]
    assert table["obs_start"].tolist() == [0.0, 0.0, 0.1]
    assert table["obs_end"].tolist() == [4.0, 4.0, 4.5]
    speed = rec.behaviour("running_speed")
    assert (speed.rate, speed.start, speed.unit) == (10.0, 10.0, "cm/s")
    np.testing.assert_allclose(speed.values, np.arange(40) * 0.5 + 1.0)
    pupil = rec.behaviour("pupil")
    step = np.median(np.diff(irregular))
    assert pupil.rate == pytest.approx(1 / step) and pupil.start == pytest.approx(irregular[0])
    grid = pupil.start + np.arange(len(pupil.values)) / pupil.rate
    assert grid[-1] <= irregular[-1] + 1e-9
    np.testing.assert_allclose(
        pupil.values, np.interp(grid, irregular, np.sin(irregular)), atol=1e-6
    )
    trial_table = rec.trials()
    assert trial_table["start"].tolist() == trials["start_time"].tolist()
    assert trial_table["stop"].tolist() == trials["stop_time"].tolist()
    assert trial_table["condition"].tolist() == trials["trial_type"].tolist()
    assert trial_table["reward"].tolist() == trials["reward"].tolist()
    assert trial_table["repetition"].tolist() == [0, 0, 1, 1, 2, 2]
    assert set(trial_table["split"]) <= {"train", "val", "test"}
    assert (trial_table["split"] == "train").sum() >= 2
    # frames: 3 distinct, stored as RGB; the frame on screen at each trial's start (the last one,
    # B from 2.5 s, stays for one frame time: still on at 3.0 s)
    assert store.images().shape == (3, 4, 4, 3)
    assert store.stimulus_ids == ["movie/0", "movie/1", "movie/2"]
    images = np.asarray(store.images()[...])
    assert np.all(images[1] == 10) and np.all(images[2] == 250)
    assert trial_table["stimulus_index"].tolist() == [1, 0, 1, 2, 0, 2]
    onsets, rows = rec.frames()
    assert onsets.tolist() == _frames()[1].tolist() and rows.tolist() == [0, 1, 2, 0, 1, 2]
    np.testing.assert_array_equal(rec.truth("coupling"), np.arange(9).reshape(3, 3))


def test_minimal_file_gets_intervals_and_defaults(tmp_path: Path) -> None:
    write_nwb(tmp_path / "raw" / "rec.nwb", UNITS, subject_id=None)
    store = _prepare(tmp_path / "raw", tmp_path / "store", "pipeline.interval=1.0")
    assert store.subjects == ["sub-rec"]
    rec = store.spikes("sub-rec")
    table = rec.unit_table()
    assert table["quality"].tolist() == ["unknown"] * 3
    assert table["location"].tolist() == [""] * 3 and table["electrode_group"].tolist() == [""] * 3
    assert np.isnan(table["obs_start"]).all() and np.isnan(table["obs_end"]).all()
    trials = rec.trials()
    # recording 0.1 .. 3.9 s: three whole 1 s intervals
    np.testing.assert_allclose(trials["start"], [0.1, 1.1, 2.1])
    np.testing.assert_allclose(trials["stop"], [1.1, 2.1, 3.1])
    assert trials["condition"].tolist() == ["all"] * 3
    assert trials["stimulus_index"].tolist() == [-1] * 3
    assert rec.behaviour_names == [] and rec.frames() is None
    assert rec.truth("coupling") is None


def test_sessions_of_one_subject_and_frames_shared_across_files(tmp_path: Path) -> None:
    for session in ("a", "b"):
        write_nwb(
            tmp_path / "raw" / f"s{session}.nwb",
            UNITS,
            subject_id="01",
            session_id=session,
            frames=_frames(),
        )
    store = _prepare(
        tmp_path / "raw",
        tmp_path / "store",
        "pipeline.split=[0.5,0.5,0.0]",
        "pipeline.interval=0.5",
    )
    assert store.subjects == ["sub-01_ses-a", "sub-01_ses-b"]
    assert store.images().shape[0] == 3  # the same frames in both files are stored once
    trials = store.spikes("sub-01_ses-b").trials()
    assert set(trials["session"]) == {"b"}
    assert trials["condition"].iloc[0] == "movie/0"
    counts = trials.groupby("condition")["split"].value_counts().unstack(fill_value=0)
    assert (counts["train"] >= counts.get("val", 0) - 1).all()
    assert "test" not in set(trials["split"])


def test_split_column_and_drop_empty_units(tmp_path: Path) -> None:
    trials = pd.DataFrame(
        {
            "start_time": [0.0, 1.0, 2.0],
            "stop_time": [1.0, 2.0, 3.0],
            "split": ["train", "none", "test"],
        }
    )
    write_nwb(
        tmp_path / "raw" / "sub-02.nwb", [*UNITS, np.array([])], subject_id=None, trials=trials
    )
    store = _prepare(tmp_path / "raw", tmp_path / "store", "pipeline.drop_empty_units=true")
    rec = store.spikes("sub-02")
    assert rec.n_units == 3
    assert rec.trials()["split"].tolist() == ["train", "test"]
    assert rec.trials()["start"].tolist() == [0.0, 2.0]


MALFORMED = {
    "no units": (None, "no Units table"),
    "out of order": ([np.array([0.3, 0.1, 0.2])], "out of order"),
    "negative": ([np.array([-0.5, 0.1])], "negative spike times"),
    "no spikes": ([np.array([0.1]), np.array([])], "unit 1 has no spikes"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_files_are_one_line_errors(case: str, tmp_path: Path) -> None:
    units, message = MALFORMED[case]
    write_nwb(tmp_path / "raw" / "sub-09_bad.nwb", units)
    out = tmp_path / "store"
    with pytest.raises(UserInputError) as error:
        prepare_dataset("nwb-spikes", out, source=tmp_path / "raw", progress=False)
    text = str(error.value)
    assert message in text and "sub-09_bad.nwb" in text and "\n" not in text
    assert not out.exists()


def test_empty_folder_and_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    out = tmp_path / "store"
    with pytest.raises(UserInputError, match="No NWB files"):
        prepare_dataset("nwb-spikes", out, source=tmp_path / "raw", progress=False)
    assert not out.exists()
    (tmp_path / "raw" / "broken.nwb").write_bytes(b"not an hdf5 file")
    with pytest.raises(UserInputError, match="broken.nwb: cannot be read") as error:
        prepare_dataset("nwb-spikes", out, source=tmp_path / "raw", progress=False)
    assert "\n" not in str(error.value)
    assert not out.exists()


def test_cli_prepares_and_verifies_synthetic_spikes(tmp_path: Path) -> None:
    out = tmp_path / "store"
    tiny = ["simulator.n_units=20", "simulator.repeats=2", "simulator.n_sessions=2"]
    assert cli("prepare", "synthetic-spikes", "--out", str(out), *sets(tiny)) == 0
    assert cli("verify", str(out)) == 0
    store = TensorStore.open(out)
    assert store.subjects == ["sub-01_ses-1", "sub-01_ses-2"]
    rec = store.spikes("sub-01_ses-1")
    assert rec.n_units == 20 and len(rec.trials()) == 8
    assert rec.truth("coupling").shape == (20, 20)
    assert rec.behaviour("running_speed").rate == 100.0
    assert set(rec.trials()["condition"]) == {"grating-x", "grating-y", "blob-on", "blob-off"}
    assert (rec.trials()["stimulus_index"] >= 0).all()
    assert store.images().shape[1:] == (16, 16, 3)


def test_cli_malformed_nwb_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_nwb(tmp_path / "raw" / "sub-03.nwb", [np.array([0.2, 0.1])])
    out = tmp_path / "store"
    assert cli("prepare", "nwb-spikes", "--source", str(tmp_path / "raw"), "--out", str(out)) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "sub-03.nwb" in lines[0] and "out of order" in lines[0]
    assert not out.exists()
