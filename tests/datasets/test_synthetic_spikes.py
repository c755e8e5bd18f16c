"""synthetic-spikes: seeded bytes, rates, a directed hub graph that shows in the spikes,
behaviour gain, sorted spike times with a refractory period."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mindzoo.datasets.synthetic.spikes import (
    Session,
    SyntheticSpikesConfig,
    make_video,
    simulate_bids,
    simulate_session,
)

NWB = Path("sub-01") / "sub-01_ses-1_spikes.nwb"


@pytest.fixture(scope="module")
def session() -> Session:
    """60 units, 10 showings of each clip (100 s)."""
    config = SyntheticSpikesConfig(n_units=60, repeats=10, n_hubs=3)
    return simulate_session(np.random.default_rng(7), config, make_video(config))


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    config = SyntheticSpikesConfig(n_units=12, repeats=1)
    a = simulate_bids(tmp_path / "a", config, progress=False)
    b = simulate_bids(tmp_path / "b", config, progress=False)
    c = simulate_bids(tmp_path / "c", config.model_copy(update={"seed": 1}), progress=False)
    assert (a / NWB).read_bytes() == (b / NWB).read_bytes()
    assert (a / NWB).read_bytes() != (c / NWB).read_bytes()
    assert (a / "dataset_description.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_rates_in_range(session: Session) -> None:
    rates = np.array([len(t) for t in session.spike_times]) / session.duration
    assert 3.0 < rates.mean() < 10.0
    assert rates.min() > 0.2 and rates.max() < 60.0
    every = np.concatenate(session.spike_times)
    counts = np.histogram(every, np.arange(0, session.duration, 0.05))[0]
    # 60 units: half the default population; a window holds far fewer than 100/2 spikes
    assert np.percentile(counts, 99.9) < 50


def test_hub_graph_is_directed_and_shows_in_the_spikes(session: Session) -> None:
    weights, hubs = session.network.coupling, session.network.hubs
    strong = weights >= 0.6
    assert len(hubs) == 3
    assert all(15 <= strong[h].sum() <= 25 for h in hubs)
    others = np.setdiff1d(np.arange(len(weights)), hubs)
    assert strong[others].sum() == 0  # only hubs have strong outgoing edges
    assert not np.allclose(weights, weights.T)
    reverse = sum(int(weights[j, h] != 0) for h in hubs for j in np.flatnonzero(strong[h]))
    assert reverse < 0.2 * strong[hubs].sum()
    assert (weights < 0).sum() > 0  # a few inhibitory edges
    # spikes of a hub's targets follow the hub's spikes (2-12 ms after vs 2-12 ms before)
    after = before = 0
    for h in hubs:
        hub_times = session.spike_times[h]
        for j in np.flatnonzero(strong[h]):
            t = session.spike_times[j]
            after += np.sum(
                np.searchsorted(t, hub_times + 0.012) - np.searchsorted(t, hub_times + 0.002)
            )
            before += np.sum(
                np.searchsorted(t, hub_times - 0.002) - np.searchsorted(t, hub_times - 0.012)
            )
    assert after > 1.3 * before


def test_running_speed_modulates_the_chosen_units(session: Session) -> None:
    gain = session.network.speed_gain
    modulated = gain > 0
    assert 0.25 < modulated.mean() < 0.35
    assert session.speed.min() >= 0
    edges = np.arange(0, session.duration - 0.5, 0.5)
    speed = session.speed[: len(edges) * 50].reshape(len(edges), 50).mean(1)  # 100 Hz grid

    def correlation(rows: np.ndarray) -> float:
        times = np.concatenate([session.spike_times[k] for k in np.flatnonzero(rows)])
        counts = np.histogram(times, np.append(edges, edges[-1] + 0.5))[0]
        return float(np.corrcoef(counts, speed)[0, 1])

    assert correlation(modulated) > 0.3
    assert correlation(modulated) > correlation(~modulated) + 0.2


def test_spike_times_sorted_with_refractory_period(session: Session) -> None:
    for times in session.spike_times:
        isi = np.diff(times)
        assert np.all(isi > 0)
        assert isi.min() >= 0.003 - 1e-9  # no spike in the 2 ms after a spike
    assert session.frames.dtype == np.uint8 and session.frames.shape[1:] == (16, 16)
    assert len(session.trial_start) == 40
    assert np.all(np.diff(session.frame_times) > 0)
