"""mindeye-mlp: shapes, loss, new-subject adaptation, learning on synthetic-fmri, CLI train/resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from factories.cli import cli, sets
from factories.toy_store import TOY_TARGETS, TOY_VOXELS, write_toy_store
from safetensors.numpy import load_file

from mindzoo.datasets.store import TensorStore
from mindzoo.datasets.views import FMRIDataset, make_splits
from mindzoo.errors import UserInputError
from mindzoo.models import count_parameters, create_model, load_model
from mindzoo.models.base import AdaptationContext
from mindzoo.models.mindeye_mlp import MindEyeMLP, MindEyeMLPConfig, NewSubjectLayer, soft_clip_loss
from mindzoo.training import checkpoint as ckpt
from mindzoo.training.decoders import predict
from mindzoo.training.run import train_model
from mindzoo.training.trainer import Trainer, TrainerConfig, seed_everything

SHAPES = {"global": (5,), "spatial": (2, 3)}


def test_forward_shapes_per_subject_and_input_checks() -> None:
    model = MindEyeMLP(
        MindEyeMLPConfig(hidden_dim=16, n_blocks=2), {"sub-01": 7, "sub-02": 11}, SHAPES
    )
    out = model(torch.randn(4, 7), "sub-01")
    assert {k: tuple(v.shape) for k, v in out.items()} == {"global": (4, 5), "spatial": (4, 2, 3)}
    assert model(torch.randn(3, 11), "sub-02")["spatial"].shape == (3, 2, 3)
    with pytest.raises(UserInputError, match=r"Expected voxels \[B, 7\] for sub-01"):
        model(torch.randn(4, 11), "sub-01")
    with pytest.raises(UserInputError, match="sub-09"):
        model(torch.randn(4, 7), "sub-09")


def test_parameter_count_of_the_reference_build() -> None:
    # one NSD-sized subject (15,724 voxels), h=512, 4 blocks, the 1280-d efficientnet target
    h = 512
    expected = (15724 * h + h) + 4 * (2 * h + 2 * (h * h + h)) + 2 * h + (h * 1280 + 1280)
    model = create_model("mindeye-mlp")
    assert count_parameters(model) == expected


def test_soft_clip_loss() -> None:
    targets = torch.eye(4) * 3.0
    assert float(soft_clip_loss(targets, targets, 0.01)) < 1e-6  # orthogonal rows, exact match
    assert float(soft_clip_loss(targets[[1, 0, 3, 2]], targets, 0.01)) > 50  # every match wrong
    # against a direct computation on random rows
    gen = torch.Generator().manual_seed(0)
    pred, true = torch.randn(5, 3, 2, generator=gen), torch.randn(5, 3, 2, generator=gen)
    p = pred.reshape(5, -1).numpy().astype(np.float64)
    t = true.reshape(5, -1).numpy().astype(np.float64)
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    temp = 0.3

    def softmax(x: np.ndarray) -> np.ndarray:
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    soft = softmax(t @ t.T / temp)
    logits = p @ t.T / temp
    loss = 0.0
    for lg in (logits, logits.T):
        loss -= np.mean(np.sum(np.log(softmax(lg)) * soft, axis=1)) / 2
    assert float(soft_clip_loss(pred, true, temp)) == pytest.approx(loss, rel=1e-5)


def test_loss_weights_its_parts() -> None:
    config = MindEyeMLPConfig(hidden_dim=8, n_blocks=1, mse_weight=2.0, clip_weight=0.5)
    model = MindEyeMLP(config, {"sub-01": 6}, SHAPES)
    out = model(torch.randn(4, 6), "sub-01")
    targets = {k: torch.randn_like(v) for k, v in out.items()}
    total, logs = model.loss(out, targets)
    assert float(total.detach()) == pytest.approx(
        2.0 * logs["mse"] + 0.5 * logs["soft_clip"], rel=1e-6
    )
    mse = np.mean([float(torch.mean((out[k].detach() - targets[k]) ** 2)) for k in out])
    assert logs["mse"] == pytest.approx(mse, rel=1e-6)
    no_clip = MindEyeMLP(config.model_copy(update={"clip_weight": 0.0}), {"sub-01": 6}, SHAPES)
    assert set(no_clip.loss(out, targets)[1]) == {"mse"}


def _fit(model: MindEyeMLP, splits: dict[str, FMRIDataset], **kwargs) -> list[dict]:
    config = TrainerConfig(epochs=20, batch_size=16, lr=1e-2, device="cpu", patience=None)
    return (
        Trainer(config).fit(model, splits["train"], splits["val"], progress=False, **kwargs).history
    )


def test_new_subject_layer_trains_only_the_new_layer(tmp_path: Path) -> None:
    store = write_toy_store(tmp_path / "store")
    source = make_splits(store, ["sub-01", "sub-02"], TOY_TARGETS)
    seed_everything(0)
    config = MindEyeMLPConfig(hidden_dim=32, n_blocks=1, clip_temperature=0.1)
    shapes = {"global": (8,), "spatial": (4, 3)}
    model = MindEyeMLP(config, {s: TOY_VOXELS[s] for s in ("sub-01", "sub-02")}, shapes)
    model.target_scaler.fit(source["train"].target_statistics())
    _fit(model, source)
    before = ckpt.weights(model)

    new = make_splits(store, ["sub-03"], TOY_TARGETS)
    strategy = model.adaptation_strategy()
    assert isinstance(strategy, NewSubjectLayer)
    context = AdaptationContext("sub-03", 25, new["train"], store.axis("sub-03")[0])
    strategy.prepare(model, context)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"subject_layers.sub-03.weight", "subject_layers.sub-03.bias"}
    initial = model.subject_layers["sub-03"].weight.detach().clone()
    history = _fit(model, new, stages=strategy.stages(model))
    after = ckpt.weights(model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing shared moved
    assert not torch.equal(initial, model.subject_layers["sub-03"].weight)
    assert history[-1]["val_loss"] < 0.8 * history[0]["val_loss"]
    # the adapted model (now with 3 subjects) saves and reloads like any other
    run = tmp_path / "adapted"
    run.mkdir()
    config_json = {
        "model": "mindeye-mlp",
        "settings": {"model": config.model_dump()},
        "build": model.build_spec(),
    }
    assert config_json["build"]["n_voxels"] == {"sub-01": 20, "sub-02": 30, "sub-03": 25}
    ckpt.write_json(run / "config.json", config_json)
    ckpt.save_weights(run / "model.safetensors", after)
    reloaded = load_model(run)
    a, b = predict(model, new["test"]), predict(reloaded, new["test"])
    np.testing.assert_array_equal(a["sub-03"]["global"], b["sub-03"]["global"])
    true = new["test"].batch(range(len(new["test"]))).targets["global"].numpy()
    r = [np.corrcoef(p, t)[0, 1] for p, t in zip(a["sub-03"]["global"], true, strict=True)]
    assert np.mean(r) > 0.5


# --- on the tiny synthetic-fmri store, through the CLI -------------------------------------

# 2 subjects x 54 training trials: 4 steps an epoch (batches of 32 and 22 per subject)
SMALL = [
    "trainer.epochs=3",
    "trainer.batch_size=32",
    "trainer.checkpoint_every_steps=2",
    "model.hidden_dim=64",
]


@pytest.fixture(scope="module")
def tiny_store(shared_tiny_store: Path) -> Path:
    """The session's read-only tiny store (tests/conftest.py)."""
    return shared_tiny_store


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This module's run folders (the shared store's folder is not written to)."""
    return tmp_path_factory.mktemp("mindeye")


@pytest.fixture(scope="module")
def trained_run(tiny_store: Path, runs: Path) -> Path:
    run = runs / "run"
    assert cli("train", "mindeye-mlp", "--store", str(tiny_store), "--out", str(run)) == 0
    return run


def test_cli_train_and_evaluate_beat_chance(trained_run: Path, tiny_store: Path) -> None:
    for name in ("config.json", "model.safetensors", "predictions.safetensors", "metrics.json"):
        assert (trained_run / name).is_file()
    config = json.loads((trained_run / "config.json").read_text())
    store = TensorStore.open(tiny_store)
    assert config["build"]["n_voxels"] == {s: store.signals(s).shape[1] for s in store.subjects}
    predictions = load_file(str(trained_run / "predictions.safetensors"))
    assert predictions["sub-01/test_pred"].shape == (8, 1280)
    np.testing.assert_array_equal(
        predictions["sub-01/test_pred"], predictions["sub-01/outputs/global"]
    )
    training = json.loads((trained_run / "metrics.json").read_text())["training"]
    assert training["samples_per_second"] > 0 and training["history"]

    out = trained_run / "eval"
    assert cli("evaluate", str(trained_run), "--out", str(out)) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "mindeye-mlp"
    # chance: top-1 1/8, two-way 0.5; ridge on this store reaches about 0.56 / 0.80
    assert metrics["mean"]["retrieval_top1.efficientnet-lite0"] >= 0.25
    assert metrics["mean"]["two_way_id.efficientnet-lite0"] > 0.65

    # the saved run reloads and predicts exactly what it saved
    model = load_model(trained_run)
    test = make_splits(store, config["subjects"], {"global": "efficientnet-lite0/global"})["test"]
    for subject, outputs in predict(model, test).items():
        np.testing.assert_array_equal(outputs["global"], predictions[f"{subject}/test_pred"])


def test_cli_refuses_to_overwrite_or_resume_a_finished_run(
    trained_run: Path, tiny_store: Path
) -> None:
    base = ["train", "mindeye-mlp", "--store", str(tiny_store), "--out", str(trained_run)]
    assert cli(*base) == 2
    assert cli(*base, "--resume") == 2
    assert cli("train", "ridge", "--store", str(tiny_store), "--out", "x", "--resume") == 2
    assert (
        cli(*base[:-1], str(trained_run.parent / "bad"), "--set", "trainer.mixed_precision=fp16")
        == 2
    )
    assert not (trained_run.parent / "bad").exists()


def test_cli_resume_after_an_interrupt_matches_an_uninterrupted_run(
    tiny_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = train_model(
        "mindeye-mlp", tiny_store, tmp_path / "whole", overrides=SMALL, progress=False
    )
    calls = {"n": 0}
    original = FMRIDataset.batch

    def killed_midway(self: FMRIDataset, indices, augment: bool = False):
        calls["n"] += 1
        if calls["n"] == 4:  # the last step of epoch 1, after the step-2 checkpoint
            raise KeyboardInterrupt
        return original(self, indices, augment)

    monkeypatch.setattr(FMRIDataset, "batch", killed_midway)
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train_model("mindeye-mlp", tiny_store, cut, overrides=SMALL, progress=False)
    monkeypatch.undo()
    assert ckpt.latest_checkpoint(cut / "checkpoints").name == "step-00000002"
    assert not (cut / "metrics.json").exists()
    base = ["train", "mindeye-mlp", "--store", str(tiny_store), "--out", str(cut), "--resume"]
    assert cli(*base, *sets([*SMALL[:-1], "model.hidden_dim=32"])) == 2  # other settings
    assert cli(*base, *sets(SMALL)) == 0
    a = load_file(str(whole / "model.safetensors"))
    b = load_file(str(cut / "model.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    history = [
        json.loads((r / "metrics.json").read_text())["training"]["history"] for r in (whole, cut)
    ]
    assert history[0] == history[1]


def test_models_lists_mindeye_mlp(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("models") == 0
    out = capsys.readouterr().out
    assert "mindeye-mlp" in out and "10,814,208" in out
