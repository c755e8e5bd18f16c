"""Spike metrics: AUROC, bits per spike, PSTH correlation and R^2 on hand-computed examples,
and :func:`evaluate_spike_model` (closed-loop generation, figures) on a tiny simulated store."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mindzoo.datasets.spike_store import Behaviour, SpikeSubject
from mindzoo.datasets.spike_views import SpikeDataConfig, SpikeWindows
from mindzoo.datasets.store import StoreWriter, TensorStore
from mindzoo.evaluation.spikes import (
    auroc,
    bits_per_spike,
    coupling_metrics,
    evaluate_spike_model,
    generate_trials,
    psth,
    psth_correlation,
    r2_score,
)
from mindzoo.models.registry import create_model
from mindzoo.models.spike_base import poisson_log_likelihood
from mindzoo.models.spike_baselines import iter_batches

DATA = SpikeDataConfig(n_frames=2, behaviour=["y"])


def write_spike_store(path: Path, seed: int = 0, n_trials: int = 60) -> TensorStore:
    """A 4-unit session: unit 0 at 30 Hz drives unit 1 one 10 ms bin later (log-rate +2),
    units 2 and 3 follow condition-dependent PSTHs; behaviour ``y`` is a linear function of
    the counts of the 100 ms (past + current window) around each grid point."""
    rng = np.random.default_rng(seed)
    dt, trial_bins, gap = 0.01, 50, 10
    starts = gap + (trial_bins + gap) * np.arange(n_trials)  # bins
    n_bins = int(starts[-1] + trial_bins + gap)
    condition = np.arange(n_trials) % 2
    tt = np.full(n_bins, -1.0)  # trial time of each bin (s), -1 outside trials
    cond = np.zeros(n_bins, int)
    for j, s in enumerate(starts):
        tt[s : s + trial_bins] = dt * np.arange(trial_bins)
        cond[s : s + trial_bins] = condition[j]
    in_trial = tt >= 0
    peak = np.where(cond == 0, 0.15, 0.35)
    rate2 = 5 + in_trial * 80 * np.exp(-(((tt - peak) / 0.05) ** 2))
    ramp = np.where(cond == 0, tt / 0.5, 1 - tt / 0.5)
    rate3 = np.where(in_trial, 10 + 40 * ramp, 10.0)
    counts = np.zeros((4, n_bins), int)
    counts[0] = rng.poisson(30 * dt, n_bins)
    drive = np.concatenate([[0], counts[0, :-1] > 0])
    counts[1] = rng.poisson(5 * dt * np.exp(2.0 * drive))
    counts[2] = rng.poisson(rate2 * dt)
    counts[3] = rng.poisson(rate3 * dt)
    units, bins = np.nonzero(counts)
    reps = counts[units, bins]
    units, bins = np.repeat(units, reps), np.repeat(bins, reps)
    times = (bins + rng.uniform(0.1, 0.9, len(bins))) * dt
    order = np.argsort(times)
    times, units = times[order], units[order]
    beta = np.array([0.5, 0.0, 1.0, -0.7])
    padded = np.pad(counts, ((0, 0), (7, 2)))
    around = sum(padded[:, k : k + n_bins] for k in range(10))  # bins k-7 .. k+2
    y = beta @ around + rng.normal(0, 0.1, n_bins)
    split = np.where(np.arange(n_trials) % 5 == 3, "test", "train").astype(object)
    split[np.arange(n_trials) % 10 == 1] = "val"
    trials = pd.DataFrame(
        {
            "start": starts * dt,
            "stop": (starts + trial_bins) * dt,
            "stimulus_index": condition,
            "session": 1,
            "run": 1,
            "repetition": np.arange(n_trials) // 2,
            "split": split,
        }
    )
    unit_table = pd.DataFrame(
        {"id": np.arange(4), "electrode_group": "g", "location": "V1", "quality": "good"}
    )
    truth = np.zeros((4, 4))
    truth[0, 1] = 2.0
    images = np.zeros((2, 8, 8, 3), np.uint8)
    images[0, :, :4], images[1, :, 4:] = 255, 255
    subject = SpikeSubject(
        times=times,
        units=units.astype(np.int32),
        unit_table=unit_table,
        trials=trials,
        t_start=0.0,
        t_stop=n_bins * dt,
        frame_times=starts * dt,
        frame_index=condition,
        behaviour={"y": Behaviour(y.astype(np.float32), rate=100.0, start=0.005)},
        truth={"coupling": truth},
    )
    with StoreWriter(path, "ab" * 32) as writer:
        writer.write_stimuli(images, ["a", "b"], ["a", "b"], ["train", "train"])
        writer.write_spikes("sub-01", subject)
        writer.commit({"dataset": "tiny-spikes", "modality": "spikes"})
    return TensorStore.open(path)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> TensorStore:
    return write_spike_store(tmp_path_factory.mktemp("spikes") / "store")


def fitted(name: str, store: TensorStore) -> torch.nn.Module:
    train = SpikeWindows(store, ["sub-01"], "train", DATA)
    model = create_model(name, {}, info=train.info)
    model.fit(train)
    return model.eval()


def test_auroc_hand_values_with_ties() -> None:
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    # positives {0.5, 0.9} vs negatives {0.5, 0.5}: two ties (1/2 each) and two wins
    assert auroc(np.array([0.5, 0.5, 0.5, 0.9]), np.array([1, 0, 0, 1])) == 0.75
    assert auroc(np.array([1.0, 1.0, 2.0, 2.0]), np.array([0, 1, 0, 1])) == 0.5
    assert auroc(np.array([3.0, 2.0, 1.0]), np.array([1, 0, 0])) == 1.0
    assert math.isnan(auroc(np.array([1.0, 2.0]), np.array([1, 1])))


def test_bits_per_spike_hand_example() -> None:
    # one bin with 2 spikes: model rate 2 vs reference rate 1
    counts = torch.tensor([2.0])
    ll_model = float(poisson_log_likelihood(counts, torch.tensor([2.0])).sum())
    ll_ref = float(poisson_log_likelihood(counts, torch.tensor([1.0])).sum())
    assert ll_model - ll_ref == pytest.approx(2 * math.log(2) - 1)
    expected = (2 * math.log(2) - 1) / (2 * math.log(2))
    assert bits_per_spike(ll_model, ll_ref, 2) == pytest.approx(expected)
    assert bits_per_spike(-3.0, -3.0 - 2 * math.log(2), 2) == pytest.approx(1.0)
    assert math.isnan(bits_per_spike(0.0, 0.0, 0))


def test_r2_and_psth_correlation_hand_values() -> None:
    true = np.array([[1.0, 0.0], [2.0, 1.0], [3.0, 2.0]])
    pred = np.array([[1.0, 1.0], [2.0, 1.0], [4.0, 1.0]])
    np.testing.assert_allclose(r2_score(true, pred), [1 - 1 / 2, 1 - 2 / 2])
    counts = np.array([[1.0, 0.0], [3.0, 2.0], [2.0, 2.0], [0.0, 2.0]])
    table = psth(counts, np.array([0, 0, 0, 1]), np.array([0, 0, 1, 0]), 2)
    np.testing.assert_allclose(table[0], [[2.0, 2.0], [1.0, 2.0]])  # [unit, window]
    np.testing.assert_allclose(table[1, :, 0], [0.0, 2.0])
    assert np.isnan(table[1, :, 1]).all()
    mean, pooled = psth_correlation(table, table)
    assert mean == pytest.approx(1.0) and pooled == pytest.approx(1.0)


def test_coupling_metrics_hand_example() -> None:
    truth = np.zeros((3, 3))
    truth[0, 1], truth[2, 0] = 1.0, -1.0
    score = np.array([[9.0, 0.8, 0.1], [0.3, 9.0, 0.2], [-0.6, 0.05, 9.0]])
    metrics = coupling_metrics(score, truth, hub_fraction=0.34)
    # |score| off-diagonal: positives 0.8, 0.6; negatives 0.1, 0.3, 0.2, 0.05
    assert metrics["coupling_auroc"] == 1.0
    # signed, excitatory only: positive 0.8 beats all five others
    assert metrics["coupling_auroc_excitatory"] == 1.0
    # 0->1: 0.8 > 0.3; 2->0: 0.6 > 0.1
    assert metrics["coupling_direction_accuracy"] == 1.0
    assert metrics["coupling_hub_recall"] == 1.0  # k=1: unit 0 (tie with 2, first) vs 0
    score[1, 0] = 0.9
    assert coupling_metrics(score, truth)["coupling_direction_accuracy"] == 0.5


def test_homogeneous_against_itself_is_zero(store: TensorStore) -> None:
    model = fitted("spike-homogeneous", store)
    metrics = evaluate_spike_model(model, store, ["sub-01"], DATA, generate=False)["sub-01"]
    assert metrics["bits_per_spike"] == 0.0
    assert metrics["n_windows"] == 120 and metrics["n_truncated"] == 0
    assert "behaviour_r2" not in metrics and "coupling_auroc" not in metrics


def test_psth_evaluation_generation_and_figures(store: TensorStore, tmp_path: Path) -> None:
    model = fitted("spike-psth", store)
    metrics = evaluate_spike_model(model, store, ["sub-01"], DATA, seed=1, figures_dir=tmp_path)[
        "sub-01"
    ]
    assert metrics["bits_per_spike"] > 0.1
    assert metrics["ll_per_spike_nats"] > metrics["ll_homogeneous_per_spike_nats"]
    assert 0.8 < metrics["generated_rate_ratio"] < 1.2
    assert metrics["psth_corr"] > 0.15  # units 0 and 1 have flat PSTHs: near 0 there
    assert metrics["psth_corr_pooled"] > 0.45
    assert -1 <= metrics["psth_corr_recorded_split_half"] <= 1
    path = tmp_path / "sub-01_raster.png"
    assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "sub-01_coupling.png").exists()  # the PSTH scores no coupling


def test_generation_stays_in_trials_at_the_models_rates(store: TensorStore) -> None:
    model = fitted("spike-psth", store)
    test = SpikeWindows(store, ["sub-01"], "test", DATA)
    rows, generated, recorded = generate_trials(
        model, test, "sub-01", torch.Generator().manual_seed(0)
    )
    assert generated.shape == recorded.shape == (120, 4, 5)
    np.testing.assert_array_equal(rows["start"].to_numpy(), test.windows["start"].to_numpy())
    expected = sum(float(model.rates(b).sum()) for b in iter_batches(test, "sub-01"))
    assert abs(generated.sum() - expected) < 4 * math.sqrt(expected)
    np.testing.assert_array_equal(
        recorded.sum(), sum(float(b.counts.sum()) for b in iter_batches(test, "sub-01"))
    )
    again = generate_trials(model, test, "sub-01", torch.Generator().manual_seed(0))[1]
    np.testing.assert_array_equal(again, generated)  # seeded


@pytest.mark.parametrize("prev_window,n_recorded", [(0.05, 1), (0.25, 5)])
def test_closed_loop_feeds_generated_spikes_back(
    store: TensorStore, prev_window: float, n_recorded: int
) -> None:
    """A model that never spikes: a window's past holds recorded spikes only while it reaches
    back before the trial's first window; later pasts are the (empty) generated windows."""
    data = DATA.model_copy(update={"prev_window": prev_window})

    class Echo(torch.nn.Module):
        info = SpikeWindows(store, ["sub-01"], "test", data).info
        seen: list[float] = []

        def sample(self, batch, generator):
            self.seen.append(float(batch.prev_counts.sum()))
            return [(np.zeros(0, int), np.zeros(0, int)) for _ in range(len(batch))]

    test = SpikeWindows(store, ["sub-01"], "test", data)
    model = Echo()
    generate_trials(model, test, "sub-01", torch.Generator())
    assert len(model.seen) == 10  # one batch per window of the 0.5 s trials
    assert all(seen > 0 for seen in model.seen[:n_recorded])
    assert model.seen[n_recorded:] == [0.0] * (10 - n_recorded)


def test_ridge_behaviour_figure(store: TensorStore, tmp_path: Path) -> None:
    model = fitted("spike-ridge", store)
    metrics = evaluate_spike_model(model, store, ["sub-01"], DATA, figures_dir=tmp_path)
    assert metrics["sub-01"]["behaviour_r2_y"] == metrics["sub-01"]["behaviour_r2"]
    assert (tmp_path / "sub-01_behaviour.png").stat().st_size > 1000
