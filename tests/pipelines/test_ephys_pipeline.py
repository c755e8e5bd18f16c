"""Unit tests of the ephys pipeline steps, and its bad-input errors through `prepare`."""

from __future__ import annotations

from pathlib import Path

import mne
import numpy as np
import pandas as pd
import pytest

from mindzoo.datasets.store import TensorStore
from mindzoo.errors import UserInputError
from mindzoo.pipelines.ephys import (
    ChannelSettings,
    bipolar_matrix,
    check_pairs,
    check_rates,
    filter_raw,
    neighbour_pairs,
    rank_channels,
    resample,
    select_channels,
    split_contact,
    stratified_split,
    zscore_with_train,
)
from mindzoo.pipelines.ephys.config import IEEGPipelineConfig
from mindzoo.pipelines.prepare import prepare_dataset


def test_split_contact_names() -> None:
    assert split_contact("LA12") == ("LA", 12)
    assert split_contact("B'3") == ("B'", 3)
    assert split_contact("EKG") == ("EKG", None)


def test_bipolar_matrix_is_anode_minus_cathode() -> None:
    names = ["A1", "A2", "A3", "B1"]
    matrix = bipolar_matrix(names, [("A1", "A2"), ("A2", "A3")])
    np.testing.assert_array_equal(matrix, [[1, -1, 0, 0], [0, 1, -1, 0]])
    data = np.array([[1.0, 2.0], [10.0, 20.0], [100.0, 200.0], [5.0, 5.0]])
    np.testing.assert_array_equal(matrix @ data, [[-9.0, -18.0], [-90.0, -180.0]])


def test_neighbour_pairs_follow_numbers_shafts_and_positions() -> None:
    names = ["A1", "A2", "A3", "A5", "B2", "B1", "B3"]
    shafts = ["A", "A", "A", "A", "B", "B", "B"]
    xyz = np.array(
        [[0, 0, 0], [3.5, 0, 0], [7, 0, 0], [14, 0, 0], [0, 9, 0], [0, 5.5, 0], [0, 30, 0]],
        dtype=float,
    )
    # A3-A5 are not consecutive numbers; B2-B3 lie 21 mm apart (> 2.5 x the 3.5 mm spacing)
    assert neighbour_pairs(names, shafts, xyz) == [("A1", "A2"), ("A2", "A3"), ("B1", "B2")]
    # without positions, consecutive numbers pair
    unknown = np.full_like(xyz, np.nan)
    assert ("B2", "B3") in neighbour_pairs(names, shafts, unknown)


def test_explicit_pair_across_shafts_is_refused() -> None:
    with pytest.raises(UserInputError, match="spans two shafts"):
        check_pairs([("A1", "B1")], ["A1", "B1"], ["A", "B"], [], "rec")
    with pytest.raises(UserInputError, match="bad channel A1"):
        check_pairs([("A1", "A2")], ["A1", "A2"], ["A", "A"], ["A1"], "rec")


def test_high_gamma_envelope_tracks_amplitude_modulation() -> None:
    sfreq, seconds = 1000.0, 2.0
    t = np.arange(int(sfreq * seconds)) / sfreq
    modulation = 1 + 0.8 * np.sin(2 * np.pi * 2.0 * t)
    rng = np.random.default_rng(0)
    carrier = np.sin(2 * np.pi * 110 * t)
    slow = 5 * np.sin(2 * np.pi * 8 * t)  # outside the band: must not reach the envelope
    data = np.stack([modulation * carrier + slow, 0.01 * rng.standard_normal(len(t))])
    raw = mne.io.RawArray(data, mne.create_info(["A1", "A2"], sfreq, "seeg"), verbose="error")
    filter_raw(raw, IEEGPipelineConfig(high_gamma=True, line_freq=None))
    envelope = raw.get_data()[0, 500:-500]
    assert np.corrcoef(envelope, modulation[500:-500])[0, 1] > 0.99
    assert envelope.mean() == pytest.approx(1.0, abs=0.05)


def test_zscore_uses_training_trials_only() -> None:
    signals = np.zeros((4, 2, 3), dtype=np.float32)
    signals[:2, 0] = [[1, 2, 3], [3, 4, 5]]  # training trials of channel 0: mean 3, std sqrt(5/3)
    signals[2:, 0] = 100.0  # held-out trials must not shift the statistics
    signals[:, 1] = 7.0  # a flat channel stays finite
    train = np.array([True, True, False, False])
    out = zscore_with_train(signals, train)
    std = np.std([1, 2, 3, 3, 4, 5])
    np.testing.assert_allclose(out[0, 0], (np.array([1, 2, 3]) - 3) / std, rtol=1e-6)
    np.testing.assert_allclose(out[2, 0], (100 - 3) / std, rtol=1e-6)
    np.testing.assert_array_equal(out[:, 1], 0.0)


def test_stratified_split_per_label_and_seeded() -> None:
    labels = np.array(["a"] * 20 + ["b"] * 10)
    splits = stratified_split(labels, (0.8, 0.1, 0.1), seed=3)
    table = pd.crosstab(labels, splits)
    assert table.loc["a"].to_dict() == {"test": 2, "train": 16, "val": 2}
    assert table.loc["b"].to_dict() == {"test": 1, "train": 8, "val": 1}
    assert list(stratified_split(labels, (0.8, 0.1, 0.1), seed=3)) == list(splits)
    assert list(stratified_split(labels, (0.8, 0.1, 0.1), seed=4)) != list(splits)


def _informative(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Trials [120, 6, 20] where only channels 1 and 4 carry the class."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.array(["x", "y", "z"]), 40)
    signals = rng.standard_normal((120, 6, 20)).astype(np.float32)
    code = {"x": -1.0, "y": 0.0, "z": 1.0}
    for i, label in enumerate(labels):
        signals[i, [1, 4]] += 2.0 * code[label]
    train = np.zeros(120, dtype=bool)
    train[rng.permutation(120)[:90]] = True
    return signals, labels, train


def test_top_k_ranks_the_informative_channels_first() -> None:
    signals, labels, train = _informative()
    order = rank_channels(signals, labels, train, sfreq=100.0, alpha=1.0)
    assert set(order[:2]) == {1, 4}
    keep = select_channels(
        "sub-01", signals, ["r"] * 6, labels, train, 100.0, ChannelSettings(top_k=2)
    )
    np.testing.assert_array_equal(keep, [1, 4])


def test_top_k_ignores_held_out_trials() -> None:
    signals, labels, train = _informative()
    altered = signals.copy()
    altered[~train, 0] += 50.0 * (labels[~train] == "x")[:, None]
    np.testing.assert_array_equal(
        rank_channels(signals, labels, train, 100.0, 1.0),
        rank_channels(altered, labels, train, 100.0, 1.0),
    )


def test_region_selection_and_empty_selection() -> None:
    signals, labels, train = _informative()
    regions = ["vSMC", "STG", "MTG", "vSMC", "white-matter", "STG"]
    keep = select_channels(
        "sub-01", signals, regions, labels, train, 100.0, ChannelSettings(regions=["vSMC", "STG"])
    )
    np.testing.assert_array_equal(keep, [0, 1, 3, 5])
    with pytest.raises(UserInputError, match="no channel in regions"):
        select_channels(
            "sub-01", signals, regions, labels, train, 100.0, ChannelSettings(regions=["IFG"])
        )


def test_sampling_rate_checks() -> None:
    with pytest.raises(UserInputError, match="too low for the band up to 200"):
        check_rates(250.0, IEEGPipelineConfig(sfreq=250.0), "rec.vhdr")
    with pytest.raises(UserInputError, match="cannot hold the band"):
        check_rates(1000.0, IEEGPipelineConfig(sfreq=250.0), "rec.vhdr")
    check_rates(500.0, IEEGPipelineConfig(high_gamma=True, sfreq=100.0), "rec.vhdr")


def test_resample_keeps_a_slow_sine() -> None:
    t = np.arange(2000) / 1000.0
    out = resample(np.sin(2 * np.pi * 5 * t)[None], 1000.0, 100.0)
    assert out.shape == (1, 200)
    np.testing.assert_allclose(out[0, 20:-20], np.sin(2 * np.pi * 5 * t[::10])[20:-20], atol=0.02)


# --- bad input through prepare: one line, nothing written -------------------------------------


@pytest.fixture(scope="module")
def tiny_bids(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mindzoo.datasets.synthetic.ieeg import SyntheticIEEGConfig, simulate_bids

    root = tmp_path_factory.mktemp("ephys") / "bids"
    config = SyntheticIEEGConfig(
        n_subjects=1, n_words=3, repetitions=4, n_runs=2, shafts=(3, 3), contacts=(8, 8), n_bad=1
    )
    return simulate_bids(root, config, progress=False)


def _copy(root: Path, tmp_path: Path) -> Path:
    import shutil

    target = tmp_path / "bids"
    shutil.copytree(root, target)
    return target


def _prepare_fails(source: Path, out: Path, *sets: str) -> str:
    with pytest.raises(UserInputError) as info:
        prepare_dataset(
            "bids-ieeg",
            out,
            source=source,
            overrides=[
                "pipeline.task=wordreading",
                "pipeline.tmax=0.5",
                "pipeline.sfreq=500",
                *sets,
            ],
            progress=False,
        )
    message = str(info.value)
    assert "\n" not in message
    assert not out.exists(), "a failed prepare must leave nothing behind"
    return message


def test_prepare_bad_inputs(tiny_bids: Path, tmp_path: Path) -> None:
    out = tmp_path / "store"
    assert "spans two shafts (LA, LB)" in _prepare_fails(
        tiny_bids, out, "pipeline.bipolar_pairs=[[LA1,LB1]]"
    )
    assert "too low for the band up to 300" in _prepare_fails(tiny_bids, out, "pipeline.h_freq=300")
    assert "no channel in regions ['IFG']" in _prepare_fails(
        tiny_bids, out, "pipeline.channels.regions=[IFG]"
    )


def test_prepare_rejects_channels_tsv_mismatch(tiny_bids: Path, tmp_path: Path) -> None:
    root = _copy(tiny_bids, tmp_path)
    channels = next(root.glob("sub-01/ieeg/*_channels.tsv"))
    table = pd.read_csv(channels, sep="\t")
    table.iloc[:-1].to_csv(channels, sep="\t", index=False)
    message = _prepare_fails(root, tmp_path / "store")
    assert "channels.tsv disagrees with" in message and "recording channels missing" in message


def test_prepare_rejects_events_outside_the_recording(tiny_bids: Path, tmp_path: Path) -> None:
    root = _copy(tiny_bids, tmp_path)
    events = next(root.glob("sub-01/ieeg/*_events.tsv"))
    table = pd.read_csv(events, sep="\t")
    table.loc[2, "onset"] = 1e4
    table.to_csv(events, sep="\t", index=False)
    assert "event at 10000.000 s" in _prepare_fails(root, tmp_path / "store")


def _brainvision_to_nwb(vhdr: Path) -> None:
    """Replace a BrainVision recording by the same data as a BIDS iEEG NWB file."""
    from datetime import datetime, timezone

    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.ecephys import ElectricalSeries

    raw = mne.io.read_raw(vhdr, preload=True, verbose="error")
    nwb = NWBFile(
        session_description="mindzoo test",
        identifier=vhdr.stem,
        session_start_time=datetime(2024, 1, 1, tzinfo=timezone.utc),
    )
    device = nwb.create_device(name="amplifier")
    group = nwb.create_electrode_group(
        name="shafts", description="depth electrodes", location="brain", device=device
    )
    for _ in raw.ch_names:
        nwb.add_electrode(group=group, location="brain")
    electrodes = nwb.create_electrode_table_region(list(range(len(raw.ch_names))), "all")
    microvolts = (raw.get_data().T * 1e6).astype(np.float32)
    nwb.add_acquisition(
        ElectricalSeries(
            name="ieeg",
            data=microvolts,
            electrodes=electrodes,
            rate=raw.info["sfreq"],
            conversion=1e-6,
        )
    )
    with NWBHDF5IO(str(vhdr.with_suffix(".nwb")), "w") as io:
        io.write(nwb)
    for suffix in (".vhdr", ".eeg", ".vmrk"):
        vhdr.with_suffix(suffix).unlink()


def test_nwb_recording_gives_the_brainvision_values(tiny_bids: Path, tmp_path: Path) -> None:
    root = _copy(tiny_bids, tmp_path)
    _brainvision_to_nwb(next(root.glob("sub-01/ieeg/*_ieeg.vhdr")))
    sets = ["pipeline.task=wordreading", "pipeline.tmax=0.5", "pipeline.sfreq=500"]
    stores = []
    for name, source in (("bv", tiny_bids), ("nwb", root)):
        result = prepare_dataset(
            "bids-ieeg", tmp_path / name, source=source, overrides=sets, progress=False
        )
        stores.append(TensorStore.open(result.version_dir))
    bv, nwb = stores
    assert nwb.axis("sub-01")[1]["names"] == bv.axis("sub-01")[1]["names"]
    assert nwb.axis("sub-01")[1]["bads_dropped"] == bv.axis("sub-01")[1]["bads_dropped"]
    np.testing.assert_allclose(nwb.signals("sub-01")[...], bv.signals("sub-01")[...], atol=1e-4)


def test_runs_without_the_chosen_events_are_skipped(tiny_bids: Path, tmp_path: Path) -> None:
    from mindzoo.pipelines.ephys import input_files

    root = _copy(tiny_bids, tmp_path)
    run1, run2 = sorted(root.glob("sub-01/ieeg/*_events.tsv"))
    kept = pd.read_csv(run1, sep="\t")
    pd.read_csv(run2, sep="\t").assign(trial_type="rest").to_csv(run2, sep="\t", index=False)
    words = sorted(set(kept["trial_type"]))
    config = IEEGPipelineConfig(task="wordreading", event_values=words)
    fetched = {p.name for p in input_files(root, config)}
    assert "sub-01_task-wordreading_run-1_ieeg.eeg" in fetched
    assert not any("run-2_ieeg" in name for name in fetched)
    sets = [
        "pipeline.task=wordreading",
        "pipeline.tmax=0.5",
        "pipeline.sfreq=500",
        f"pipeline.event_values=[{','.join(words)}]",
    ]
    out = tmp_path / "store"
    prepare_dataset("bids-ieeg", out, source=root, overrides=sets, progress=False)
    trials = TensorStore.open(out).trials("sub-01")
    assert len(trials) == len(kept) and set(trials["run"]) == {"1"}
    np.testing.assert_allclose(sorted(trials["onset"]), sorted(kept["onset"]))
    message = _prepare_fails(root, tmp_path / "none", "pipeline.event_values=[speak]")
    assert "none of pipeline.event_values ['speak']" in message and "rest" in message
