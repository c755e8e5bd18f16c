"""The Accelerate trainer: learning, seeded determinism, checkpoints, resume, early stopping, DDP."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from factories.ddp import run_ddp
from factories.toy_store import TOY_TARGETS, TOY_VOXELS, write_toy_store

from mindzoo.datasets.store import TensorStore
from mindzoo.datasets.views import DataConfig, FMRIDataset, SubjectBatchSampler, make_splits
from mindzoo.errors import UserInputError
from mindzoo.models import load_model
from mindzoo.models.mindeye_mlp import MindEyeMLP, MindEyeMLPConfig
from mindzoo.training import checkpoint as ckpt
from mindzoo.training.decoders import predict
from mindzoo.training.trainer import (
    StepInfo,
    Trainer,
    TrainerConfig,
    lr_multiplier,
    make_accelerator,
    seed_everything,
)

SMALL = MindEyeMLPConfig(hidden_dim=32, n_blocks=1, dropout=0.1, clip_temperature=0.1)


@pytest.fixture(scope="module")
def splits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, FMRIDataset]:
    store = write_toy_store(tmp_path_factory.mktemp("trainer") / "store")
    return make_splits(store, list(TOY_VOXELS), TOY_TARGETS, DataConfig(val_fraction=0.2))


def build(splits: dict[str, FMRIDataset], seed: int = 0, config=SMALL) -> MindEyeMLP:
    seed_everything(seed)
    model = MindEyeMLP(config, TOY_VOXELS, {"global": (8,), "spatial": (4, 3)})
    model.target_scaler.fit(splits["train"].target_statistics())
    return model


def trainer(**settings) -> Trainer:
    base = {"epochs": 6, "batch_size": 16, "lr": 3e-3, "device": "cpu", "patience": None}
    return Trainer(TrainerConfig(**{**base, **settings}))


def steps_per_epoch(train: FMRIDataset) -> int:
    return len(SubjectBatchSampler(train.sizes, batch_size=16, shuffle=True))


def run_config(model: MindEyeMLP) -> dict:
    return {
        "model": "mindeye-mlp",
        "settings": {"model": SMALL.model_dump()},
        "build": model.build_spec(),
    }


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_loss_decreases_on_a_learnable_problem(splits: dict[str, FMRIDataset]) -> None:
    model = build(splits)
    state = trainer(epochs=12).fit(model, splits["train"], splits["val"], progress=False)
    train_loss = [h["train_loss"] for h in state.history]
    val_loss = [h["val_loss"] for h in state.history]
    assert len(state.history) == 12
    assert state.global_step == 12 * steps_per_epoch(splits["train"])
    assert train_loss[-1] < 0.5 * train_loss[0]
    assert val_loss[-1] < 0.7 * val_loss[0]
    # predictions in feature units correlate with the test targets
    pred = predict(model, splits["test"])["sub-02"]["global"]
    true = splits["test"].batch(range(*_span(splits["test"], "sub-02"))).targets["global"].numpy()
    r = [np.corrcoef(p, t)[0, 1] for p, t in zip(pred, true, strict=True)]
    assert np.mean(r) > 0.6


def _span(dataset: FMRIDataset, subject: str) -> tuple[int, int]:
    rows = dataset.subject_slice(subject)
    return rows.start, rows.stop


def test_two_seeded_runs_give_identical_weights(splits: dict[str, FMRIDataset]) -> None:
    runs = []
    for _ in range(2):
        model = build(splits, seed=5)
        trainer(epochs=2, seed=5).fit(model, splits["train"], splits["val"], progress=False)
        runs.append(model)
    assert same_weights(*runs)
    other = build(splits, seed=6)
    trainer(epochs=2, seed=6).fit(other, splits["train"], splits["val"], progress=False)
    assert not same_weights(runs[0], other)


def test_a_checkpoint_reloads_with_identical_predictions(
    splits: dict[str, FMRIDataset], tmp_path: Path
) -> None:
    model = build(splits)
    trainer(epochs=2).fit(
        model,
        splits["train"],
        splits["val"],
        checkpoint_dir=tmp_path,
        run_config=run_config(model),
        progress=False,
    )
    steps = 2 * steps_per_epoch(splits["train"])
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest is not None and latest.name == f"step-{steps:08d}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [latest.name]  # keep_checkpoints=1
    history = json.loads((latest / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    reloaded = load_model(latest)
    assert not reloaded.training
    a, b = predict(model, splits["test"]), predict(reloaded, splits["test"])
    for subject in TOY_VOXELS:
        for name in ("global", "spatial"):
            np.testing.assert_array_equal(a[subject][name], b[subject][name])
    # the optimizer state is tensors and numbers only: it loads without unpickling code
    saved = torch.load(latest / "optimizer.pt", weights_only=True)
    assert saved["scheduler"]["last_epoch"] == steps


def test_resume_after_an_interrupt_ends_with_identical_weights(
    splits: dict[str, FMRIDataset], tmp_path: Path
) -> None:
    n = steps_per_epoch(splits["train"])
    assert n >= 6
    # checkpoints every 4 steps and at epoch ends; the run is stopped in epoch 2
    settings = {"epochs": 3, "checkpoint_every_steps": 4, "keep_checkpoints": 2}
    saved_at = [k for k in range(1, 3 * n + 1) if k % n == 0 or k % 4 == 0]
    stop_at = n + 6
    last_saved = max(k for k in saved_at if k < stop_at)
    assert last_saved % n  # the run resumes in the middle of an epoch
    whole = build(splits)
    done = trainer(**settings).fit(whole, splits["train"], splits["val"], progress=False)

    def interrupt(info: StepInfo) -> None:
        if info.global_step == stop_at:
            raise KeyboardInterrupt

    first = build(splits)
    with pytest.raises(KeyboardInterrupt):
        trainer(**settings).fit(
            first,
            splits["train"],
            splits["val"],
            checkpoint_dir=tmp_path,
            run_config=run_config(first),
            callbacks=[interrupt],
            progress=False,
        )
    assert ckpt.latest_checkpoint(tmp_path).name == f"step-{last_saved:08d}"
    assert len(list(tmp_path.glob("step-*"))) == 2
    resumed = build(splits, seed=99)  # a different init: everything must come from the checkpoint
    state = trainer(**settings).fit(
        resumed,
        splits["train"],
        splits["val"],
        checkpoint_dir=tmp_path,
        resume=True,
        run_config=run_config(resumed),
        progress=False,
    )
    assert same_weights(whole, resumed)
    assert state.global_step == done.global_step == 3 * n
    for a, b in zip(state.history, done.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-9)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-9)


def test_early_stopping_restores_the_best_weights(splits: dict[str, FMRIDataset]) -> None:
    snapshots = {}
    model = build(splits)

    def snapshot(info: StepInfo) -> None:
        snapshots[info.global_step] = ckpt.weights(model)

    # a learning rate too small to gain min_delta: epoch 1 is the best, epoch 2 ends the stage
    state = trainer(epochs=10, lr=1e-9, schedule="constant", patience=1, min_delta=1.0).fit(
        model, splits["train"], splits["val"], callbacks=[snapshot], progress=False
    )
    assert len(state.history) == 2 and state.stage == 1
    n = steps_per_epoch(splits["train"])
    assert all(torch.equal(model.state_dict()[k], v) for k, v in snapshots[n].items())
    assert not all(torch.equal(model.state_dict()[k], v) for k, v in snapshots[2 * n].items())


def test_learning_rate_schedules() -> None:
    total, warmup = 100, 10
    one_cycle = [lr_multiplier("one-cycle", s, total, warmup) for s in range(total)]
    assert one_cycle[0] > 1 / 25 and max(one_cycle) == pytest.approx(1.0)
    assert one_cycle[9] == pytest.approx(1.0) and one_cycle[-1] < 1e-3
    cosine = [lr_multiplier("cosine", s, total, warmup) for s in range(total)]
    assert cosine[0] == pytest.approx(0.1) and cosine[10] == pytest.approx(1.0)
    assert cosine[55] == pytest.approx(0.5, abs=0.02) and cosine[-1] < 1e-3
    assert np.all(np.diff(cosine[10:]) <= 0)
    assert lr_multiplier("constant", 90, total, warmup) == 1.0


def test_bf16_autocast_trains_on_cpu(splits: dict[str, FMRIDataset]) -> None:
    model = build(splits)
    state = trainer(epochs=2, mixed_precision="bf16").fit(model, splits["train"], progress=False)
    assert np.isfinite(state.history[-1]["train_loss"])
    assert state.history[-1]["val_loss"] is None
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with pytest.raises(UserInputError, match="fp16 needs a GPU"):
        make_accelerator(TrainerConfig(device="cpu", mixed_precision="fp16"))
    make_accelerator(TrainerConfig(device="cpu"))  # switching precision in one process works


_DDP_SCRIPT = """
import json, sys, torch
from pathlib import Path
torch.set_num_threads(1)
from factories.toy_store import TOY_TARGETS, TOY_VOXELS
from mindzoo.datasets.store import TensorStore
from mindzoo.datasets.views import make_splits
from mindzoo.models.mindeye_mlp import MindEyeMLP, MindEyeMLPConfig
from mindzoo.training.trainer import Trainer, TrainerConfig, seed_everything
from mindzoo.training.checkpoint import save_weights, weights

store, out = TensorStore.open(sys.argv[1]), sys.argv[2]
splits = make_splits(store, list(TOY_VOXELS), TOY_TARGETS)
trainer = Trainer(TrainerConfig(epochs=3, batch_size=16, lr=3e-3, device="cpu", patience=None))
seed_everything(0)
config = MindEyeMLPConfig(hidden_dim=32, n_blocks=1, dropout=0.0, clip_weight=0.0)
model = MindEyeMLP(config, TOY_VOXELS, {"global": (8,), "spatial": (4, 3)})
model.target_scaler.fit(splits["train"].target_statistics())
state = trainer.fit(model, splits["train"], splits["val"], progress=False)
if trainer.accelerator.is_main_process:
    result = {"history": state.history, "world": trainer.accelerator.num_processes}
    Path(out + ".json").write_text(json.dumps(result))
    save_weights(Path(out + ".safetensors"), weights(model))
"""


@pytest.mark.slow
def test_two_process_cpu_ddp_matches_one_process(tmp_path: Path) -> None:
    # every subject's train and val sizes are multiples of 16, so each global batch splits evenly
    store = write_toy_store(tmp_path / "store", n_train=48, n_val=16)
    results = run_ddp(textwrap.dedent(_DDP_SCRIPT), store.path, tmp_path, port_base=29500)
    assert results[1]["world"] == 1 and results[2]["world"] == 2
    for one, two in zip(results[1]["history"], results[2]["history"], strict=True):
        assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-4)
        assert two["val_loss"] == pytest.approx(one["val_loss"], rel=1e-4)
    from safetensors.torch import load_file

    w1, w2 = (load_file(str(tmp_path / f"world{w}.safetensors")) for w in (1, 2))
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], rtol=1e-4, atol=1e-5)
    TensorStore.open(store.path)  # the store is untouched by training
