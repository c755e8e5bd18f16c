"""The EEG pipeline on real recordings (EDF, BDF, BrainVision) converted to BIDS by mne-bids,
and on the synthetic-eeg simulator."""

from __future__ import annotations

import warnings
from pathlib import Path

import mne
import numpy as np
import pytest

from mindzoo.datasets.store import TensorStore, verify_store
from mindzoo.pipelines.prepare import prepare_dataset

REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "eeg"
# (file, mne-bids format): the originals copied as they are, and BrainVision converted to EEGLAB
CASES = [("test.edf", "auto"), ("test.bdf", "auto"), ("test.vhdr", "auto"), ("test.vhdr", "EEGLAB")]
WINDOW = [
    "pipeline.fixed_length=0.25",
    "pipeline.tmin=0",
    "pipeline.tmax=0.25",
    "pipeline.l_freq=1",
    "pipeline.sfreq=128",
]


def _to_bids(name: str, root: Path, fmt: str = "auto") -> mne.io.BaseRaw:
    """Write ``name`` as sub-01 task rest with mne-bids (``fmt`` as its ``format``); returns the
    original recording."""
    from mne_bids import BIDSPath, write_raw_bids

    path = REAL / name
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared real EEG recordings are not on this machine)")
    raw = mne.io.read_raw(path, preload=fmt != "auto", verbose="error")
    raw.info["line_freq"] = 50
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mne-bids warns about the missing participant details
        write_raw_bids(
            raw,
            BIDSPath(subject="01", task="rest", datatype="eeg", root=root),
            format=fmt,
            allow_preload=fmt != "auto",
            verbose="error",
        )
    return raw


@pytest.mark.parametrize(("name", "fmt"), CASES)
def test_real_recording_through_the_eeg_pipeline(name: str, fmt: str, tmp_path: Path) -> None:
    raw = _to_bids(name, tmp_path / "bids", fmt)
    expected_suffix = ".set" if fmt == "EEGLAB" else Path(name).suffix
    assert list((tmp_path / "bids").glob(f"sub-01/eeg/*_eeg{expected_suffix}"))
    out = tmp_path / "store"
    prepare_dataset("bids-eeg", out, source=tmp_path / "bids", overrides=WINDOW, progress=False)
    assert verify_store(out).ok
    store = TensorStore.open(out)
    signals = store.signals("sub-01")
    arrays, attrs = store.axis("sub-01")
    eeg = [
        ch for ch, kind in zip(raw.ch_names, raw.get_channel_types(), strict=True) if kind == "eeg"
    ]
    duration = raw.n_times / raw.info["sfreq"]
    assert attrs["names"] == eeg and signals.shape[1] == len(eeg)
    assert attrs["sfreq"] == 128.0 and signals.shape[2] == 32
    assert signals.shape[0] == int(np.floor((duration - 0.25) / 0.25 + 1e-9)) + 1
    assert store.manifest["modality"] == "eeg"
    assert np.isfinite(np.asarray(signals)).all()


def test_brainvision_annotations_become_trials(tmp_path: Path) -> None:
    raw = _to_bids("test.vhdr", tmp_path / "bids")
    described = list(raw.annotations.description)
    expected = ["a"] * described.count("Stimulus/S253") + ["b"] * described.count("Stimulus/S255")
    assert len(expected) >= 3
    out = tmp_path / "store"
    prepare_dataset(
        "bids-eeg",
        out,
        source=tmp_path / "bids",
        overrides=[
            "pipeline.event_values=[Stimulus/S253,Stimulus/S255]",
            "pipeline.labels={Stimulus/S253: a, Stimulus/S255: b}",
            "pipeline.tmin=0",
            "pipeline.tmax=0.2",
            "pipeline.l_freq=1",
            "pipeline.sfreq=100",
        ],
        progress=False,
    )
    store = TensorStore.open(out)
    assert store.stimulus_labels == ["a", "b"]
    trials = store.trials("sub-01")
    assert sorted(trials["label"]) == expected
    np.testing.assert_allclose(
        sorted(trials["onset"]),
        sorted(
            o
            for o, d in zip(raw.annotations.onset, described, strict=True)
            if d.startswith("Stimulus/S25") and d[-1] in "35"
        ),
        atol=1e-3,
    )
    assert store.signals("sub-01").shape == (len(expected), 26, 20)


def test_synthetic_eeg_store(tmp_path: Path) -> None:
    sets = [
        "simulator.n_subjects=1",
        "simulator.n_categories=3",
        "simulator.repetitions=10",
        "simulator.category_uv=15",
    ]
    out = tmp_path / "store"
    prepare_dataset("synthetic-eeg", out, overrides=sets, progress=False)
    assert verify_store(out).ok
    store = TensorStore.open(out)
    arrays, attrs = store.axis("sub-01")
    signals = np.asarray(store.signals("sub-01"))
    assert signals.shape == (30, 31, 250)  # 32 electrodes less 1 bad; -0.2 to 0.8 s at 250 Hz
    assert attrs["tmin"] == -0.2 and attrs["coord_frame"] == "CapTrak"
    assert len(attrs["bads_dropped"]) == 1 and attrs["bads_dropped"][0] not in attrs["names"]
    assert np.isfinite(arrays["xyz"]).all()
    assert store.stimulus_labels == ["animal", "body", "building"]
    # the category patterns (0.2 s after the image) differ: class means lie further apart than
    # those of shuffled labels
    y = store.trials("sub-01")["stimulus_index"].to_numpy()
    signals = signals[:, :, 88:113]  # 0.15-0.25 s at 250 Hz from -0.2 s
    means = np.stack([signals[y == k].mean(axis=0) for k in range(3)])
    spread = np.linalg.norm(means[0] - means[1]) + np.linalg.norm(means[1] - means[2])
    shuffled = np.random.default_rng(0).permutation(y)
    null = np.stack([signals[shuffled == k].mean(axis=0) for k in range(3)])
    assert spread > 2 * (np.linalg.norm(null[0] - null[1]) + np.linalg.norm(null[1] - null[2]))
