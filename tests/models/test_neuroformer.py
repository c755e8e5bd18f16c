"""Neuroformer on a tiny hand-made spikes store: shapes, loss, likelihood, causality, sampling,
coupling, few-shot init and the paper preset."""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mindzoo.datasets.spike_store import Behaviour, SpikeSubject
from mindzoo.datasets.spike_views import SpikeDataConfig, SpikeInfo, SpikeWindows
from mindzoo.datasets.store import StoreWriter, TensorStore
from mindzoo.models import count_parameters
from mindzoo.models.neuroformer import INIT, Neuroformer, NeuroformerConfig
from mindzoo.models.trainable import InitRun

TINY = NeuroformerConfig(
    n_embd=16,
    n_head=2,
    n_encoder_layers=1,
    n_frame_layers=1,
    n_history_layers=1,
    n_stimulus_layers=1,
    n_state_layers=1,
    dropout=0.0,
    max_tokens=20,
    max_prev_tokens=40,
    clip_dim=8,
    order="official",  # most tests check the official factorisation; canonical: its own tests
    behaviour_readout="finetune",  # gradient tests; the probe has its own test
    behaviour_features="mean",  # the official read-out; the others: test_behaviour_features
)
DATA = SpikeDataConfig(max_tokens=20, max_prev_tokens=40, behaviour=["speed"])


def write_store(root: Path, n_units: int = 6, rate: float = 20.0, seed: int = 0) -> Path:
    """One subject, 8 trials of 1 s (6 train, 1 val, 1 test), 4 random 8x8 images, Poisson
    spikes at ``rate`` Hz per unit, a speed trace at 100 Hz."""
    rng = np.random.default_rng(seed)
    t_stop = 8.0
    n = rng.poisson(rate * n_units * t_stop)
    times = np.sort(rng.uniform(0, t_stop, n))
    units = rng.integers(0, n_units, n).astype(np.int32)
    splits = ["train"] * 6 + ["val", "test"]
    trials = pd.DataFrame(
        {
            "start": np.arange(8.0),
            "stop": np.arange(8.0) + 1,
            "stimulus_index": np.arange(8) % 4,
            "session": 0,
            "run": 0,
            "repetition": 0,
            "split": splits,
        }
    )
    unit_table = pd.DataFrame(
        {
            "id": [f"u{i}" for i in range(n_units)],
            "electrode_group": "g",
            "location": "V1",
            "quality": "good",
        }
    )
    images = rng.integers(0, 255, (4, 8, 8, 3), dtype=np.uint8)
    speed = Behaviour(values=rng.normal(5, 2, 800).astype(np.float32), rate=100.0, start=0.0)
    subject = SpikeSubject(
        times=times,
        units=units,
        unit_table=unit_table,
        trials=trials,
        t_start=0.0,
        t_stop=t_stop,
        frame_times=np.arange(8.0),
        frame_index=np.arange(8) % 4,
        behaviour={"speed": speed},
    )
    with StoreWriter(root / "store", "x") as writer:
        writer.write_stimuli(images, [f"s{i}" for i in range(4)], ["a"] * 4, ["train"] * 4)
        writer.write_spikes("mouse", subject)
        writer.commit({"dataset": "x", "modality": "spikes"})
    return root / "store"


@pytest.fixture(scope="module")
def view(tmp_path_factory: pytest.TempPathFactory) -> SpikeWindows:
    store = TensorStore.open(write_store(tmp_path_factory.mktemp("nf")))
    return SpikeWindows(store, ["mouse"], "train", DATA)


def model_for(info: SpikeInfo, seed: int = 0, **changes) -> Neuroformer:
    torch.manual_seed(seed)
    return Neuroformer(TINY.model_copy(update=changes), info).eval()


def test_shapes_and_loss_parts(view: SpikeWindows) -> None:
    model = model_for(view.info)
    batch = view.batch(range(8))
    out = model(batch)
    assert set(out) == {"loss", "id", "dt", "clip", "behaviour", "pooled", "features"}
    assert torch.equal(out["features"], out["pooled"])  # behaviour_features=mean
    assert out["pooled"].shape == (8, 16)
    # fresh model: id/dt CE near log of the allowed vocab (units + EOS, bins + EOS)
    assert abs(out["id"].item() - math.log(6 + 1)) < 0.2
    assert abs(out["dt"].item() - math.log(view.info.n_dt + 1)) < 0.2
    expected = 0.75 * (0.6 * out["id"] + 0.4 * out["dt"]) + out["clip"] / 4 + out["behaviour"]
    assert torch.allclose(out["loss"], expected)
    assert model.predict_behaviour(batch).shape == (8, 1)
    assert model.frames.n_tokens == 4  # kernel (3, 4, 4) over 3 x 8 x 8


def test_loss_decreases_when_overfitting_one_batch(view: SpikeWindows) -> None:
    model = model_for(view.info).train()
    batch = view.batch(range(16))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        loss, logs = model.training_step(batch)
        first = first if first is not None else float(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert set(logs) >= {"loss", "id", "dt", "clip"}
    assert float(loss) < 0.6 * first


def test_window_log_likelihood_is_minus_the_token_ce(view: SpikeWindows) -> None:
    model = model_for(view.info, contrastive=False)
    batch = view.batch(range(10))
    ll = model.window_log_likelihood(batch)
    assert ll.dtype == torch.float64 and ll.shape == (10,)
    out = model(batch)
    n_targets = int((batch.length - 1).sum())
    total = -(float(out["id"]) + float(out["dt"])) * n_targets
    assert float(ll.sum()) == pytest.approx(total, rel=1e-4)
    # an empty window is [SOS, EOS]: one target
    assert (ll < 0).all()


def test_probabilities_of_all_windows_sum_to_at_most_one(tmp_path: Path) -> None:
    """1 unit, 1 bin, max 3 spikes: every token sequence the heads can emit ((unit|EOS) x
    (bin|dt EOS) per step, stop at EOS or after 3 units) has total probability 1; the windows
    (canonical sequences) are a subset, so their probabilities sum to <= 1."""
    store = TensorStore.open(write_store(tmp_path, n_units=1, rate=30.0))
    cfg = SpikeDataConfig(
        window=0.01, prev_window=0.01, max_tokens=3, max_prev_tokens=40, n_frames=0
    )
    view = SpikeWindows(store, ["mouse"], "train", cfg)
    model = model_for(view.info, n_stimulus_layers=0)
    n_dt = view.info.n_dt
    assert n_dt == 1
    rows, canonical = [], []
    for n in range(4):
        for unit_dts in itertools.product([0, n_dt], repeat=n):
            for eos_dt in [0, n_dt] if n < 3 else [None]:
                ids, dts = [2] + [0] * n, [n_dt + 1, *unit_dts]
                if eos_dt is not None:
                    ids, dts = ids + [1], dts + [eos_dt]
                canonical.append(all(d == 0 for d in unit_dts) and eos_dt in (None, n_dt))
                rows.append((ids, dts))
    b = len(rows)
    template = view.batch([0] * b)
    id_ = torch.full((b, 5), 3)
    dt_ = torch.full((b, 5), n_dt + 2)
    for k, (ids, dts) in enumerate(rows):
        id_[k, : len(ids)], dt_[k, : len(dts)] = torch.tensor(ids), torch.tensor(dts)
    lengths = torch.tensor([len(ids) for ids, _ in rows])
    batch = dataclasses.replace(template, id=id_, dt=dt_, length=lengths)
    probs = model.window_log_likelihood(batch).exp()
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-6)
    windows = float(probs[torch.tensor(canonical)].sum())
    assert 0 < windows < 1


def test_canonical_order_is_a_distribution_over_count_matrices(tmp_path: Path) -> None:
    """2 units x 2 bins, canonical order: the complete windows of <= 2 spikes and the 3-spike
    prefixes (truncated windows) partition all outcomes, so their probabilities sum to 1 --
    no mass on non-canonical orders; the same unit may repeat inside a bin."""
    store = TensorStore.open(write_store(tmp_path, n_units=2, rate=30.0))
    cfg = SpikeDataConfig(
        window=0.02, prev_window=0.02, max_tokens=3, max_prev_tokens=40, n_frames=0
    )
    view = SpikeWindows(store, ["mouse"], "train", cfg)
    model = model_for(view.info, n_stimulus_layers=0, order="canonical")
    n_dt = view.info.n_dt
    assert n_dt == 2
    eos, sos, pad = view.info.specials("mouse")
    rows = []
    for n in range(4):
        for cells in itertools.combinations_with_replacement(range(4), n):
            ids = [sos] + [c % 2 for c in cells] + ([eos] if n < 3 else [])
            dts = [n_dt + 1] + [c // 2 for c in cells] + ([n_dt] if n < 3 else [])
            rows.append((ids, dts))
    b = len(rows)
    template = view.batch([0] * b)
    id_, dt_ = torch.full((b, 5), pad), torch.full((b, 5), n_dt + 2)
    for k, (ids, dts) in enumerate(rows):
        id_[k, : len(ids)], dt_[k, : len(dts)] = torch.tensor(ids), torch.tensor(dts)
    lengths = torch.tensor([len(ids) for ids, _ in rows])
    batch = dataclasses.replace(template, id=id_, dt=dt_, length=lengths)
    probs = model.window_log_likelihood(batch).exp()
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-6)
    # a non-canonical order (unit 1 before unit 0 in bin 0) is impossible
    bad = dataclasses.replace(
        template,
        id=torch.tensor([[sos, 1, 0, eos, pad]] * b),
        dt=torch.tensor([[n_dt + 1, 0, 0, n_dt, n_dt + 2]] * b),
        length=torch.full((b,), 4),
    )
    assert torch.isinf(model.window_log_likelihood(bad)).all()
    draws = model.sample(view.batch(range(6)), torch.Generator().manual_seed(0))
    for bins, units in draws:  # samples come out in canonical order
        cells = bins * 2 + units
        assert (np.diff(cells) >= 0).all() and len(cells) <= 3


def test_causal_later_tokens_do_not_change_earlier_log_probs(view: SpikeWindows) -> None:
    model = model_for(view.info)
    batch = view.batch(range(4))
    ids, dts = batch.id[:, :6].clone(), batch.dt[:, :6].clone()
    ctx = model.context(batch)
    a = model.logits("mouse", model.decode("mouse", ids, dts, ctx)["x"])[0]
    ids[:, 4], dts[:, 4] = 1, 2
    b = model.logits("mouse", model.decode("mouse", ids, dts, ctx)["x"])[0]
    assert torch.allclose(a[:, :4], b[:, :4], atol=1e-6)
    assert not torch.allclose(a[:, 4:], b[:, 4:])


def test_sample_returns_valid_spikes_and_respects_max_tokens(view: SpikeWindows) -> None:
    model = model_for(view.info)
    # no EOS: every draw runs to max_tokens
    logits = model.logits

    def no_eos(subject: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lid, ldt = logits(subject, x)
        lid = lid.index_fill(-1, torch.tensor([view.info.units["mouse"]]), float("-inf"))
        return lid.log_softmax(-1), ldt

    model.logits = no_eos
    batch = view.batch(range(5))
    draws = model.sample(batch, torch.Generator().manual_seed(0))
    assert len(draws) == 5
    for bins, units in draws:
        assert len(bins) == len(units) == DATA.max_tokens
        assert units.min() >= 0 and units.max() < 6
        assert bins.min() >= 0 and bins.max() < view.info.n_bins
    fresh = model_for(view.info)
    lengths = [len(u) for _, u in fresh.sample(batch, torch.Generator().manual_seed(1))]
    assert max(lengths) <= DATA.max_tokens


def test_coupling_shape_and_normalisation(view: SpikeWindows) -> None:
    model = model_for(view.info)
    score = model.coupling(view, "mouse")
    assert score.shape == (6, 6)
    # with keys of near-uniform attention at init the normalised score is ~1
    assert np.all(score > 0.5) and np.all(score < 2.0)


def test_init_copies_weights_and_leaves_the_behaviour_head_fresh(
    view: SpikeWindows, tmp_path: Path
) -> None:
    from safetensors.torch import save_file

    info = view.info
    pre_info = SpikeInfo(**{**info.__dict__, "behaviour": [], "behaviour_dims": []})
    pre = model_for(pre_info, seed=1)
    save_file(
        {k: v.contiguous() for k, v in pre.state_dict().items()}, tmp_path / "model.safetensors"
    )
    init = InitRun(tmp_path, {"settings": {"model": TINY.model_dump()}})
    settings, extras = INIT.prepare({"n_embd": 99}, init)
    assert settings["n_embd"] == 16 and extras == {}
    tuned = model_for(info, seed=2)
    head = tuned.behaviour_head.weight.clone()
    INIT.apply(tuned, init)
    assert torch.equal(tuned.head_dt.weight, pre.head_dt.weight)
    assert torch.equal(tuned.tok_emb["mouse"].weight, pre.tok_emb["mouse"].weight)
    assert torch.equal(tuned.behaviour_head.weight, head)


def test_optimizer_groups_decay_linear_weights_only(view: SpikeWindows) -> None:
    model = model_for(view.info)
    decay, no_decay = model.optimizer_groups(model.parameters())
    assert no_decay["weight_decay"] == 0.0
    ids = {id(p) for p in decay["params"]}
    assert id(model.head_dt.weight) in ids and id(model.pos) not in ids
    assert id(model.tok_emb["mouse"].weight) not in ids
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_paper_preset_resolves_to_the_paper_sizes() -> None:
    from mindzoo.training.spikes import resolve_spike_settings

    settings = resolve_spike_settings("neuroformer", ["preset=paper"])
    cfg = NeuroformerConfig(**settings.model)
    assert (cfg.n_embd, cfg.n_head, cfg.dropout) == (256, 8, 0.2)
    layers = itertools.repeat(6, 5)
    assert (
        cfg.n_encoder_layers,
        cfg.n_frame_layers,
        cfg.n_history_layers,
        cfg.n_stimulus_layers,
        cfg.n_state_layers,
    ) == tuple(layers)
    assert settings.trainer["lr"] == 1e-4 and settings.trainer["weight_decay"] == 1.0
    assert settings.data["max_prev_tokens"] == 700
    from mindzoo.models.neuroformer import REFERENCE_SHAPES

    n = count_parameters(Neuroformer(cfg, **REFERENCE_SHAPES))
    assert 23e6 < n < 25e6, n  # 30 blocks of 256 wide (~0.79 M each) + embeddings, heads
    default = count_parameters(Neuroformer(NeuroformerConfig(), **REFERENCE_SHAPES))
    assert default < 1e6


def test_probe_is_a_ridge_on_the_frozen_features(view: SpikeWindows) -> None:
    model = model_for(view.info, behaviour_readout="probe", behaviour_alphas=[3.0])
    assert not model.needs_training and model.init_required is not None
    before = {k: v.clone() for k, v in model.state_dict().items() if "behaviour" not in k}
    model.fit(view)
    assert model.probe_alpha == 3.0
    for key, value in model.state_dict().items():
        if "behaviour" not in key:
            assert torch.equal(value, before[key]), key
    batch = view.batch(range(len(view)))
    with torch.no_grad():
        x = model(batch)["features"].double().numpy()
        fitted = model.behaviour_head(model(batch)["features"]).double().numpy()
    z = ((batch.behaviour - model.behaviour_mean) / model.behaviour_std).double().numpy()
    xs = (x - x.mean(0)) / x.std(0)
    w = np.linalg.solve(xs.T @ xs + 3.0 * np.eye(x.shape[1]), xs.T @ (z - z.mean(0)))
    np.testing.assert_allclose(fitted, xs @ w + z.mean(0), atol=1e-4)
    # the default readout of the mean final features, its predictions in behaviour units
    pred = model.predict_behaviour(batch).double().numpy()
    std, mean = model.behaviour_std.double().numpy(), model.behaviour_mean.double().numpy()
    np.testing.assert_allclose(pred, fitted * std + mean, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind,width", [("sum", 16), ("sum+past", 32)])
def test_behaviour_features(view: SpikeWindows, kind: str, width: int) -> None:
    model = model_for(view.info, behaviour_features=kind)
    batch = view.batch(range(8))
    out = model(batch)
    assert out["features"].shape == (8, width)
    n = batch.length.clamp_max(int(batch.length.max())).to(out["pooled"].dtype) - 1
    torch.testing.assert_close(out["features"][:, :16], out["pooled"] * n.clamp_min(1)[:, None])
