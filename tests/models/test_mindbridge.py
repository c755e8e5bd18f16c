"""mindbridge: pooling, shapes, loss terms (cycle by hand), synthesis, reset-tuning, CLI train."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from factories.cli import cli, sets
from factories.toy_store import TOY_TARGETS, TOY_VOXELS, write_toy_store
from safetensors.numpy import load_file

from mindzoo.datasets.store import TensorStore
from mindzoo.datasets.views import FMRIDataset, make_splits
from mindzoo.errors import UserInputError
from mindzoo.models import load_model
from mindzoo.models.base import AdaptationContext
from mindzoo.models.mindbridge import MindBridge, MindBridgeConfig, ResetTuning
from mindzoo.training import checkpoint as ckpt
from mindzoo.training.decoders import predict
from mindzoo.training.trainer import Trainer, TrainerConfig, seed_everything

SHAPES = {"global": (5,), "spatial": (2, 3)}
SMALL = MindBridgeConfig(pool_size=16, hidden_dim=12, n_blocks=2, adapter_bottleneck=4)


def test_forward_shapes_pooling_and_input_checks() -> None:
    model = MindBridge(SMALL, {"sub-01": 7, "sub-02": 40, "sub-03": 16}, SHAPES)
    for subject, n in model.n_voxels.items():
        assert model.pooled(torch.randn(3, n), subject).shape == (3, 16)
        out = model(torch.randn(3, n), subject)
        assert {k: tuple(v.shape) for k, v in out.items()} == {
            "global": (3, 5),
            "spatial": (3, 2, 3),
        }
    # 40 voxels -> 16: adaptive windows [floor(16i/... )]; with voxels = their index the max of
    # each window is its last voxel, ceil(40 (i+1) / 16) - 1
    ramp = torch.arange(40.0).unsqueeze(0)
    expected = [int(np.ceil(40 * (i + 1) / 16)) - 1 for i in range(16)]
    assert model.pooled(ramp, "sub-02")[0].tolist() == expected
    assert torch.equal(model.pooled(ramp[:, :16], "sub-03"), ramp[:, :16])  # P == V: identity
    with pytest.raises(UserInputError, match=r"Expected voxels \[B, 7\] for sub-01"):
        model(torch.randn(2, 40), "sub-01")
    with pytest.raises(UserInputError, match="sub-09"):
        model(torch.randn(2, 7), "sub-09")


def _layer_norm(x: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.erf(x / np.sqrt(2)))


def _adapter(x: torch.Tensor, adapter) -> torch.Tensor:
    return (
        x
        + torch.clamp(x @ adapter.down.weight.T + adapter.down.bias, min=0) @ (adapter.up.weight.T)
        + adapter.up.bias
    )


def _embed(x: torch.Tensor, embedder) -> torch.Tensor:
    adapter, linear, norm = embedder[0], embedder[1], embedder[2]
    return _gelu(_layer_norm(_adapter(x, adapter) @ linear.weight.T + linear.bias, norm))


def _build(e: torch.Tensor, builder) -> torch.Tensor:
    linear, norm, adapter = builder[0], builder[1], builder[3]
    return _adapter(_gelu(_layer_norm(e @ linear.weight.T + linear.bias, norm)), adapter)


def test_loss_terms_match_a_hand_computation() -> None:
    torch.manual_seed(0)
    config = SMALL.model_copy(
        update={"embed_dropout": 0.0, "dropout": 0.0, "rec_weight": 0.7, "cycle_weight": 3.0}
    )
    model = MindBridge(config, {"sub-01": 20, "sub-02": 30}, SHAPES)
    for adapter in [m for m in model.modules() if type(m).__name__ == "Adapter"]:
        torch.nn.init.normal_(adapter.up.weight)  # not the identity, so the adapter is checked
    voxels = torch.randn(6, 20)
    model.train()
    out = model(voxels, "sub-01")
    targets = {k: torch.randn_like(v) for k, v in out.items()}
    total, logs = model.loss(out, targets)

    with torch.no_grad():
        pooled = F.adaptive_max_pool1d(voxels.unsqueeze(1), 16).squeeze(1)
        e_a = _embed(pooled, model.embedders["sub-01"])
        # the only other subject is the cycle partner: MSE(e_a, embedder_b(builder_b(e_a)))
        cycled = _embed(_build(e_a, model.builders["sub-02"]), model.embedders["sub-02"])
        cycle = float(((cycled - e_a) ** 2).mean())
        rec = float(((_build(e_a, model.builders["sub-01"]) - pooled) ** 2).mean())
    assert logs["cycle"] == pytest.approx(cycle, rel=1e-5)
    assert logs["voxel_rec"] == pytest.approx(rec, rel=1e-5)
    expected = logs["mse"] + logs["soft_clip"] + 0.7 * rec + 3.0 * cycle
    assert float(total.detach()) == pytest.approx(expected, rel=1e-5)
    # eval mode (validation): the target terms only
    model.eval()
    assert set(model.loss(model(voxels, "sub-01"), targets)[1]) == {"mse", "soft_clip"}
    # one subject: no partner, no cycle term
    single = MindBridge(config, {"sub-01": 20}, SHAPES).train()
    assert set(single.loss(single(voxels, "sub-01"), targets)[1]) == {
        "mse",
        "soft_clip",
        "voxel_rec",
    }


def test_synthesize_gives_pooled_fmri_of_the_target_subject() -> None:
    torch.manual_seed(1)
    model = MindBridge(SMALL, {"sub-01": 20, "sub-02": 30, "sub-03": 25}, SHAPES).eval()
    voxels = torch.randn(4, 20)
    to_2 = model.synthesize(voxels, "sub-01", "sub-02")
    to_3 = model.synthesize(voxels, "sub-01", "sub-03")
    assert to_2.shape == to_3.shape == (4, 16)
    assert (to_2 - to_3).abs().mean() > 0.1  # each subject's builder gives its own fMRI
    expected = model.builders["sub-02"](model.embedders["sub-01"](model.pooled(voxels, "sub-01")))
    torch.testing.assert_close(to_2, expected)
    with pytest.raises(UserInputError, match="sub-07"):
        model.synthesize(voxels, "sub-01", "sub-07")


def _fit(
    model: MindBridge, splits: dict[str, FMRIDataset], epochs: int, lr: float, **kwargs
) -> list[dict]:
    config = TrainerConfig(epochs=epochs, batch_size=16, lr=lr, device="cpu", patience=None)
    return (
        Trainer(config).fit(model, splits["train"], splits["val"], progress=False, **kwargs).history
    )


def _mean_r(model: MindBridge, test: FMRIDataset, subject: str) -> float:
    rows = test.subject_slice(subject)
    true = test.batch(range(rows.start, rows.stop)).targets["global"].numpy()
    pred = predict(model, test)[subject]["global"]
    return float(np.mean([np.corrcoef(p, t)[0, 1] for p, t in zip(pred, true, strict=True)]))


def test_training_lowers_the_loss_and_reset_tuning_trains_only_the_new_subject(
    tmp_path: Path,
) -> None:
    store = write_toy_store(tmp_path / "store")
    source = make_splits(store, ["sub-01", "sub-02"], TOY_TARGETS)
    seed_everything(0)
    # pool 32 > 20-30 toy voxels: pooling repeats voxels and loses nothing
    config = SMALL.model_copy(update={"pool_size": 32, "hidden_dim": 32, "embed_dropout": 0.0})
    shapes = {"global": (8,), "spatial": (4, 3)}
    model = MindBridge(config, {s: TOY_VOXELS[s] for s in ("sub-01", "sub-02")}, shapes)
    model.target_scaler.fit(source["train"].target_statistics())
    history = _fit(model, source, epochs=15, lr=3e-3)
    # SoftCLIP over 16-trial batches keeps the validation loss well above 0 on 48 toy trials
    assert min(e["val_loss"] for e in history) < 0.85 * history[0]["val_loss"]
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert _mean_r(model, source["test"], "sub-01") > 0.5
    before = ckpt.weights(model)

    # reset-tuning: the new subject's trials mixed with the source subjects' trials
    strategy = model.adaptation_strategy()
    assert isinstance(strategy, ResetTuning) and strategy.mixes_source_data
    mixed = make_splits(store, ["sub-01", "sub-02", "sub-03"], TOY_TARGETS)
    context = AdaptationContext("sub-03", 25, mixed["train"], store.axis("sub-03")[0])
    strategy.prepare(model, context)
    assert model.cycle_partner("sub-01") == "sub-03"  # source batches cycle through sub-03
    trainable = {
        ".".join(name.split(".")[:2]) for name, p in model.named_parameters() if p.requires_grad
    }
    assert trainable == {"embedders.sub-03", "builders.sub-03"}
    new = make_splits(store, ["sub-03"], TOY_TARGETS)
    fresh_r = _mean_r(model, new["test"], "sub-03")
    initial = {k: v.clone() for k, v in ckpt.weights(model).items() if ".sub-03." in k}
    _fit(model, mixed, epochs=5, lr=1e-2, stages=strategy.stages(model))
    after = ckpt.weights(model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # shared + source bit-identical
    assert all(not torch.equal(initial[k], after[k]) for k in initial if k.endswith("weight"))
    # the new subject decodes once its embedder is trained (here also on its own trials alone:
    # with subject-homogeneous batches the mixed run spends 2/3 of its steps on the cycle term)
    _fit(model, new, epochs=30, lr=1e-2, stages=strategy.stages(model))
    assert all(torch.equal(before[k], ckpt.weights(model)[k]) for k in before)
    assert _mean_r(model, new["test"], "sub-03") > max(fresh_r, 0.0) + 0.2


def test_reset_tuning_refuses_other_families_and_a_model_without_cycle_loss() -> None:
    from mindzoo.models.mindeye_mlp import MindEyeMLP, MindEyeMLPConfig

    other = MindEyeMLP(MindEyeMLPConfig(hidden_dim=4, n_blocks=0), {"sub-01": 3}, SHAPES)
    context = AdaptationContext("sub-02", 3, None, {})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="MindBridge"):
        ResetTuning().prepare(other, context)
    no_cycle = MindBridge(SMALL.model_copy(update={"cycle_weight": 0.0}), {"sub-01": 3}, SHAPES)
    with pytest.raises(UserInputError, match="cycle_weight"):
        ResetTuning().prepare(no_cycle, context)


# --- on the tiny synthetic-fmri store, through the CLI -------------------------------------


@pytest.fixture(scope="module")
def tiny_store(shared_tiny_store: Path) -> Path:
    """The session's read-only tiny store (tests/conftest.py)."""
    return shared_tiny_store


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This module's run folders (the shared store's folder is not written to)."""
    return tmp_path_factory.mktemp("mindbridge")


def test_cli_train_evaluate_beats_chance_and_reloads_identically(
    tiny_store: Path, runs: Path
) -> None:
    run = runs / "run"
    fast = sets(["trainer.epochs=15", "trainer.batch_size=16", "model.pool_size=256"])
    assert cli("train", "mindbridge", "--store", str(tiny_store), "--out", str(run), *fast) == 0
    config = json.loads((run / "config.json").read_text())
    store = TensorStore.open(tiny_store)
    assert config["build"]["n_voxels"] == {s: store.signals(s).shape[1] for s in store.subjects}
    out = run / "eval"
    assert cli("evaluate", str(run), "--out", str(out)) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "mindbridge"
    # chance: top-1 1/8, two-way 0.5
    assert metrics["mean"]["retrieval_top1.efficientnet-lite0"] >= 0.25
    assert metrics["mean"]["two_way_id.efficientnet-lite0"] > 0.65
    predictions = load_file(str(run / "predictions.safetensors"))
    model = load_model(run)
    assert isinstance(model, MindBridge)
    test = make_splits(store, config["subjects"], {"global": "efficientnet-lite0/global"})["test"]
    for subject, outputs in predict(model, test).items():
        np.testing.assert_array_equal(outputs["global"], predictions[f"{subject}/test_pred"])


def test_models_lists_mindbridge(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("models") == 0
    assert "mindbridge" in capsys.readouterr().out
