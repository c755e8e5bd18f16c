"""synthetic-ieeg: the simulator's BIDS output, and `prepare` of it into an ephys store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mindzoo.datasets.store import TensorStore, verify_store
from mindzoo.datasets.synthetic.ieeg import (
    SPEECH_REGIONS,
    SyntheticIEEGConfig,
    simulate_bids,
    word_list,
)
from mindzoo.pipelines.prepare import prepare_dataset

TINY = {
    "n_subjects": 2,
    "n_words": 4,
    "repetitions": 10,
    "n_runs": 2,
    "shafts": (3, 4),
    "contacts": (8, 9),
    "hg_gain": 2.0,
}


def tiny_sets() -> list[str]:
    """TINY as `--set simulator.KEY=VALUE` overrides for prepare."""
    return [f"simulator.{k}={list(v) if isinstance(v, tuple) else v}" for k, v in TINY.items()]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simulate_bids(
        tmp_path_factory.mktemp("sim") / "bids", SyntheticIEEGConfig(**TINY), progress=False
    )


def test_bids_layout_and_sidecars(tiny_root: Path) -> None:
    folder = tiny_root / "sub-01" / "ieeg"
    runs = sorted(folder.glob("*_ieeg.vhdr"))
    assert [p.name for p in runs] == [
        "sub-01_task-wordreading_run-1_ieeg.vhdr",
        "sub-01_task-wordreading_run-2_ieeg.vhdr",
    ]
    electrodes = pd.read_csv(next(folder.glob("*_electrodes.tsv")), sep="\t")
    assert {"name", "x", "y", "z", "group", "region"} <= set(electrodes.columns)
    assert set(SPEECH_REGIONS) <= set(electrodes["region"])
    assert 3 * 8 <= len(electrodes) <= 4 * 9
    # contacts 3.5 mm apart along each shaft
    first = electrodes[electrodes["group"] == "LA"][["x", "y", "z"]].to_numpy()
    np.testing.assert_allclose(np.linalg.norm(np.diff(first, axis=0), axis=1), 3.5, atol=0.02)
    coords = json.loads(next(folder.glob("*_coordsystem.json")).read_text())
    assert coords["iEEGCoordinateUnits"] == "mm"
    channels = pd.read_csv(
        runs[0].with_name(runs[0].name.replace("_ieeg.vhdr", "_channels.tsv")), sep="\t"
    )
    assert channels["name"].tolist() == electrodes["name"].tolist()
    assert (channels["status"] == "bad").sum() == 2
    events = [pd.read_csv(p, sep="\t") for p in sorted(folder.glob("*_events.tsv"))]
    words = pd.concat(events)["trial_type"]
    assert words.value_counts().to_dict() == dict.fromkeys(word_list(4), 10)


def test_same_seed_same_data(tiny_root: Path, tmp_path: Path) -> None:
    again = simulate_bids(tmp_path / "again", SyntheticIEEGConfig(**TINY), progress=False)
    name = "sub-02/ieeg/sub-02_task-wordreading_run-1_ieeg.eeg"
    assert (again / name).read_bytes() == (tiny_root / name).read_bytes()
    other = SyntheticIEEGConfig(**{**TINY, "n_subjects": 1, "seed": 1})
    changed = simulate_bids(tmp_path / "other", other, progress=False)
    assert (changed / name.replace("02", "01")).read_bytes() != (
        tiny_root / name.replace("02", "01")
    ).read_bytes()


def test_prepare_synthetic_ieeg_store(tmp_path: Path) -> None:
    sets = tiny_sets()
    out = tmp_path / "store"
    result = prepare_dataset("synthetic-ieeg", out, overrides=sets, progress=False)
    assert verify_store(out).ok
    store = TensorStore.open(out)
    assert store.manifest["modality"] == "ieeg"
    assert store.manifest["pipeline"]["name"] == "ieeg"
    assert store.stimulus_labels == word_list(4)
    assert store.stimulus_ids == [f"class-{w}" for w in word_list(4)]
    for subject in ("sub-01", "sub-02"):
        signals = store.signals(subject)
        arrays, attrs = store.axis(subject)
        assert signals.shape[0] == 40 and signals.shape[2] == 100  # 1 s at 100 Hz
        assert signals.dtype == np.float32
        assert attrs["sfreq"] == 100.0 and attrs["tmin"] == 0.0
        assert len(attrs["names"]) == signals.shape[1] == arrays["xyz"].shape[0]
        assert all("-" in name for name in attrs["names"])  # bipolar
        assert set(attrs["types"]) == {"seeg"}
        assert len(attrs["bads_dropped"]) == 2
        assert not any(
            bad in name.split("-") for name in attrs["names"] for bad in attrs["bads_dropped"]
        )
        assert attrs["coord_frame"] == "MNI152NLin2009aSym"
        trials = store.trials(subject)
        assert trials["split"].value_counts().to_dict() == {"train": 32, "val": 4, "test": 4}
        assert (trials.groupby("label")["split"].apply(lambda s: (s == "test").sum()) == 1).all()
        np.testing.assert_array_equal(
            np.asarray(store.stimulus_labels)[trials["stimulus_index"]], trials["label"]
        )
        train = np.asarray(signals)[trials["split"].to_numpy() == "train"]
        np.testing.assert_allclose(train.mean(axis=(0, 2)), 0.0, atol=1e-4)
        np.testing.assert_allclose(train.std(axis=(0, 2)), 1.0, atol=1e-3)
    again = prepare_dataset("synthetic-ieeg", out, overrides=sets, progress=False)
    assert again.cache_hit and again.version_dir == result.version_dir


def test_word_information_only_in_speech_regions(tmp_path: Path) -> None:
    """Nearest-centroid decoding of the high-gamma envelope: speech channels far above chance,
    the others at chance (the simulator puts word patterns in vSMC/STG only)."""
    sets = tiny_sets()
    sets += ["simulator.repetitions=20", "simulator.n_subjects=1"]
    store = TensorStore.open(
        prepare_dataset(
            "synthetic-ieeg", tmp_path / "s", overrides=sets, progress=False
        ).version_dir
    )
    arrays, attrs = store.axis("sub-01")
    speech = np.isin(np.asarray(attrs["region_names"])[arrays["region"]], SPEECH_REGIONS)
    x = np.asarray(store.signals("sub-01"))
    y = store.trials("sub-01")["stimulus_index"].to_numpy()
    train = np.arange(len(y)) % 2 == 0

    def accuracy(mask: np.ndarray) -> float:
        feats = x[:, mask].reshape(len(x), -1)
        centroids = np.stack([feats[train & (y == k)].mean(axis=0) for k in range(4)])
        guess = np.argmin(((feats[~train, None] - centroids[None]) ** 2).sum(-1), axis=1)
        return float((guess == y[~train]).mean())

    assert accuracy(speech) > 0.8
    assert accuracy(~speech) < 0.5


def test_free_speech_recording_shares_the_subjects(tiny_root: Path, tmp_path: Path) -> None:
    """simulator.speech_seconds adds an unlabeled task-speech run per subject without changing
    the word-reading runs; its utterances raise high gamma in speech contacts only; prepared as
    synthetic-ieeg-speech it has the channels of the labeled store."""
    import mne

    config = SyntheticIEEGConfig(**{**TINY, "n_subjects": 1, "speech_seconds": 60.0})
    root = simulate_bids(tmp_path / "bids", config, progress=False)
    folder = root / "sub-01" / "ieeg"
    reading = "sub-01_task-wordreading_run-1_ieeg.eeg"
    assert (folder / reading).read_bytes() == (tiny_root / "sub-01" / "ieeg" / reading).read_bytes()
    events = pd.read_csv(folder / "sub-01_task-speech_run-1_events.tsv", sep="\t")
    assert set(events["trial_type"]) == {"utterance"}
    gaps = np.diff(events["onset"].to_numpy())
    assert gaps.min() >= 0.8 - 1e-3 and gaps.max() <= 1.6 + 1e-3
    assert 30 <= len(events) <= 75 and events["onset"].max() + 1.0 <= 60.0

    raw = mne.io.read_raw_brainvision(
        folder / "sub-01_task-speech_run-1_ieeg.vhdr", preload=True, verbose="error"
    )
    assert raw.times[-1] == pytest.approx(60.0, abs=0.01)
    electrodes = pd.read_csv(next(folder.glob("*_electrodes.tsv")), sep="\t").set_index("name")
    raw.notch_filter([50, 100, 150], verbose="error")
    raw.filter(70, 170, verbose="error")
    power = raw.get_data() ** 2
    sfreq = raw.info["sfreq"]
    mask = np.zeros(power.shape[1], dtype=bool)
    for onset in events["onset"]:
        mask[int((onset + 0.2) * sfreq) : int((onset + 0.8) * sfreq)] = True
    ratio = power[:, mask].mean(axis=1) / power[:, ~mask].mean(axis=1)
    regions = electrodes.loc[raw.ch_names, "region"].to_numpy()
    bads = pd.read_csv(folder / "sub-01_task-speech_run-1_channels.tsv", sep="\t")["status"]
    good = bads.to_numpy() == "good"
    speech = np.isin(regions, SPEECH_REGIONS) & good
    silent = (regions == "white-matter") & good
    assert np.median(ratio[speech]) > 1.1
    assert np.median(ratio[silent]) == pytest.approx(1.0, abs=0.05)

    sets = tiny_sets()
    sets += ["simulator.n_subjects=1", "simulator.speech_seconds=60.0"]
    unlabeled = TensorStore.open(
        prepare_dataset(
            "synthetic-ieeg-speech", tmp_path / "pre", overrides=sets, progress=False
        ).version_dir
    )
    labeled = TensorStore.open(
        prepare_dataset(
            "synthetic-ieeg", tmp_path / "lab", overrides=sets, progress=False
        ).version_dir
    )
    assert unlabeled.stimulus_labels == ["window"]
    assert unlabeled.signals("sub-01").shape[0] == 60  # back-to-back 1 s windows of 60 s
    assert unlabeled.axis("sub-01")[1]["names"] == labeled.axis("sub-01")[1]["names"]
