"""Spike baselines: closed-form fits, the Poisson GLM's coupling, ridge behaviour decoding and
save/reload, on a tiny simulated session with known rates and coupling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from mindzoo.datasets.spike_store import Behaviour, SpikeSubject
from mindzoo.datasets.spike_views import SpikeDataConfig, SpikeWindows
from mindzoo.datasets.store import StoreWriter, TensorStore
from mindzoo.errors import UserInputError
from mindzoo.evaluation.spikes import evaluate_spike_model
from mindzoo.models.registry import create_model
from mindzoo.models.spike_baselines import SpikeRidge, SpikeRidgeConfig, iter_batches

DATA = SpikeDataConfig(n_frames=2, behaviour=["y"], prev_window=0.05)  # the 100 ms of y below


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


@pytest.fixture(scope="module")
def train(store: TensorStore) -> SpikeWindows:
    return SpikeWindows(store, ["sub-01"], "train", DATA)


def fitted(name: str, train: SpikeWindows, **config) -> torch.nn.Module:
    model = create_model(name, config, info=train.info)
    model.fit(train)
    return model.eval()


@pytest.fixture(scope="module")
def glm(train: SpikeWindows) -> torch.nn.Module:
    """The GLM trained full-batch with Adam on the training windows."""
    torch.manual_seed(0)
    model = fitted("spike-glm", train)
    batch = train.batch(range(len(train)))
    optimiser = torch.optim.Adam(model.parameters(), lr=0.1)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only contend
    try:
        for _ in range(100):
            optimiser.zero_grad()
            loss, logs = model.training_step(batch)
            loss.backward()
            optimiser.step()
    finally:
        torch.set_num_threads(threads)
    assert set(logs) == {"nll", "penalty"}
    return model.eval()


def test_homogeneous_rate_is_spikes_over_time(store: TensorStore, train: SpikeWindows) -> None:
    model = fitted("spike-homogeneous", train)
    times, units = store.spikes("sub-01").all_spikes()
    trials = store.trials("sub-01")
    rows = train.windows["trial"].unique()
    starts, stops = trials["start"].to_numpy()[rows], trials["stop"].to_numpy()[rows]
    inside = ((times[:, None] >= starts) & (times[:, None] < stops)).any(1)
    expected = np.bincount(units[inside], minlength=4) / (stops - starts).sum()
    np.testing.assert_allclose(model.unit_rates("sub-01").numpy(), expected, rtol=1e-9)
    assert expected[0] == pytest.approx(30, rel=0.2)
    batch = train.batch(range(3))
    np.testing.assert_allclose(model.rates(batch)[0, :, 0].numpy(), expected * 0.01, rtol=1e-9)
    assert not model.needs_training


def test_psth_follows_the_trial_time_course(train: SpikeWindows) -> None:
    model = fitted("spike-psth", train)
    assert float(model.pseudo) in model.config.pseudo_grid  # chosen on validation windows
    rows = train.windows.index[(train.windows["condition"] == 0)].to_numpy()
    batch = train.batch(rows)
    rates = model.rates(batch) / 0.01  # Hz
    k = np.round(batch.trial_time.numpy() / 0.05).astype(int)
    # unit 2 peaks at 150 ms (window 3) in condition 0, near 5 Hz at 450 ms (window 9)
    assert rates[k == 3, 2].mean() > 40 and rates[k == 9, 2].mean() < 15
    unseen = train.batch(rows[:2])
    unseen.condition[:] = 7
    base = model.get_buffer("base_sub-01")
    np.testing.assert_allclose(model.rates(unseen)[0, :, 0].numpy(), base.numpy())


def test_psth_too_long_trials_name_the_setting(train: SpikeWindows) -> None:
    model = create_model("spike-psth", {"max_trial_bins": 20}, info=train.info)
    with pytest.raises(UserInputError, match="max_trial_bins=50"):
        model.fit(train)


def test_glm_history_is_causal(glm: torch.nn.Module, train: SpikeWindows) -> None:
    batch = train.batch(range(4))
    before = glm.rates(batch).detach()
    batch.counts[:, 0, 2] += 3  # unit 0 spikes in bin 2: only bins 3, 4 may change
    after = glm.rates(batch).detach()
    torch.testing.assert_close(after[..., :3], before[..., :3])
    assert (after[:, 1, 3] > before[:, 1, 3]).all()


def test_glm_recovers_the_coupling(
    glm: torch.nn.Module, store: TensorStore, tmp_path: Path
) -> None:
    score = glm.coupling(None, "sub-01")
    assert score.shape == (4, 4)
    off = np.abs(score) * (1 - np.eye(4))
    assert np.unravel_index(off.argmax(), off.shape) == (0, 1)  # the strongest off-diagonal
    assert score[0, 1] > 0.8  # log-rate +2 at a 1-bin lag, spread over the smooth kernels
    metrics = evaluate_spike_model(
        glm, store, ["sub-01"], DATA, generate=False, figures_dir=tmp_path
    )["sub-01"]
    assert (tmp_path / "sub-01_coupling.png").read_bytes()[:4] == b"\x89PNG"
    assert metrics["coupling_direction_accuracy"] == 1.0
    assert metrics["coupling_auroc"] == 1.0
    assert metrics["bits_per_spike"] > 0.05


def test_ridge_decodes_a_linear_behaviour(store: TensorStore, train: SpikeWindows) -> None:
    model = fitted("spike-ridge", train)
    metrics = evaluate_spike_model(model, store, ["sub-01"], DATA, generate=False)["sub-01"]
    assert metrics["behaviour_r2"] > 0.8
    assert metrics["behaviour_pearson"] > 0.9
    assert "bits_per_spike" not in metrics
    with pytest.raises(UserInputError, match="behaviour decoder"):
        model.window_log_likelihood(train.batch(range(2)))


def test_ridge_features_sum_counts(train: SpikeWindows) -> None:
    batch = train.batch(range(4))
    total = batch.prev_counts.sum(-1) + batch.counts.sum(-1)
    model = fitted("spike-ridge", train)  # default: one count per unit, past + current
    assert torch.equal(model.features(batch), total.double())
    model = SpikeRidge(SpikeRidgeConfig(bin_factor=5), train.info)  # one per window
    features = model.features(batch).reshape(4, -1, 2)
    assert torch.equal(features[..., 0], batch.prev_counts.sum(-1).double())
    assert torch.equal(features[..., 1], batch.counts.sum(-1).double())


def test_ridge_needs_behaviour(store: TensorStore) -> None:
    view = SpikeWindows(store, ["sub-01"], "train", SpikeDataConfig(n_frames=0))
    with pytest.raises(UserInputError, match="data.behaviour"):
        fitted("spike-ridge", view)


@pytest.mark.parametrize("name", ["spike-homogeneous", "spike-psth", "spike-glm", "spike-ridge"])
def test_saved_model_reloads_identically(
    name: str, train: SpikeWindows, glm: torch.nn.Module, tmp_path: Path
) -> None:
    model = glm if name == "spike-glm" else fitted(name, train)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "m.st")
    fresh = create_model(name, model.config.model_dump(), info=train.info)
    fresh.load_state_dict(load_file(tmp_path / "m.st"))
    fresh.eval()
    batch = next(iter_batches(train, "sub-01", 64))
    with torch.no_grad():
        if name == "spike-ridge":
            torch.testing.assert_close(
                fresh.predict_behaviour(batch), model.predict_behaviour(batch)
            )
        else:
            ll = model.window_log_likelihood(batch)
            assert torch.equal(fresh.window_log_likelihood(batch), ll)
            assert torch.isfinite(ll).all()


def test_reference_models_build() -> None:
    for name in ("spike-homogeneous", "spike-psth", "spike-glm", "spike-ridge"):
        assert create_model(name).info.units == {"sub-01": 120}
