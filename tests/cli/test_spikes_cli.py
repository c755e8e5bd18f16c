"""End to end on a tiny synthetic-spikes store: prepare, verify, train every spike model,
fine-tune Neuroformer's behaviour head from a pre-trained run, evaluate each run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from factories.cli import cli, sets
from safetensors.torch import load_file

from mindzoo.datasets.store import TensorStore

TINY_SPIKES = [
    "simulator.n_units=24",
    "simulator.n_clips=2",
    "simulator.repeats=10",
    "simulator.n_hubs=2",
]
TINY_NEUROFORMER = [
    "trainer.epochs=2",
    "trainer.batch_size=32",
    "model.n_embd=32",
    "model.n_head=2",
]


@pytest.fixture(scope="module")
def spike_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("spikes") / "store"
    assert cli("prepare", "synthetic-spikes", "--out", str(out), *sets(TINY_SPIKES)) == 0
    return out


def _evaluate(run: Path) -> dict:
    assert cli("evaluate", str(run)) == 0
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert (run / "eval" / "report.md").is_file()
    return metrics["mean"]


def test_prepare_and_verify(spike_store: Path) -> None:
    assert cli("verify", str(spike_store)) == 0
    store = TensorStore.open(spike_store)
    recording = store.spikes("sub-01")
    assert recording.n_units == 24
    trials = recording.trials()
    assert len(trials) == 20 and set(trials["split"]) <= {"train", "val", "test"}
    assert recording.truth("coupling").shape == (24, 24)
    summary = json.loads((spike_store / "metrics.json").read_text())["subjects"]["sub-01"]
    assert summary["n_units"] == 24 and summary["n_spikes"] == recording.n_spikes > 0


def test_rate_models_train_and_evaluate(spike_store: Path, tmp_path: Path) -> None:
    scores = {}
    for name in ("spike-homogeneous", "spike-psth", "spike-glm"):
        run = tmp_path / name
        extra = ["trainer.epochs=2"] if name == "spike-glm" else []
        assert cli("train", name, "--store", str(spike_store), "--out", str(run), *sets(extra)) == 0
        scores[name] = _evaluate(run)
    # the reference model scores itself at exactly zero; a stimulus-locked PSTH beats it
    assert scores["spike-homogeneous"]["bits_per_spike"] == pytest.approx(0.0, abs=1e-9)
    assert scores["spike-psth"]["bits_per_spike"] > 0
    assert 0 <= scores["spike-glm"]["coupling_auroc"] <= 1
    for values in scores.values():
        assert math.isfinite(values["psth_corr"]) and values["generated_rate_ratio"] > 0


def test_neuroformer_pretrain_finetune_and_ridge(spike_store: Path, tmp_path: Path) -> None:
    pre = tmp_path / "nf"
    args = ("--store", str(spike_store))
    assert cli("train", "neuroformer", *args, "--out", str(pre), *sets(TINY_NEUROFORMER)) == 0
    scores = _evaluate(pre)
    assert math.isfinite(scores["bits_per_spike"]) and scores["n_spikes"] > 0
    assert 0 <= scores["coupling_auroc"] <= 1
    few = ["data.behaviour=[running_speed]", "data.train_fraction=0.5"]
    tuned = tmp_path / "nf-behaviour"
    fine = [*TINY_NEUROFORMER, f"init={pre}", *few]
    assert cli("train", "neuroformer", *args, "--out", str(tuned), *sets(fine)) == 0
    assert json.loads((tuned / "config.json").read_text())["init"] == str(pre.resolve())
    assert math.isfinite(_evaluate(tuned)["behaviour_r2"])
    # the default probe leaves the pre-trained model as it was; only the head is new
    before, after = load_file(pre / "model.safetensors"), load_file(tuned / "model.safetensors")
    assert {k for k in after if k not in before} == {"behaviour_head.weight", "behaviour_head.bias"}
    assert all(torch.equal(before[k], after[k]) for k in before if "behaviour" not in k)
    finetuned = tmp_path / "nf-finetune"
    fine = [*fine, "model.behaviour_readout=finetune"]
    assert cli("train", "neuroformer", *args, "--out", str(finetuned), *sets(fine)) == 0
    assert math.isfinite(_evaluate(finetuned)["behaviour_r2"])
    # a probe without a pre-trained model: one line, exit 2, no run directory
    scratch = tmp_path / "nf-scratch"
    assert cli("train", "neuroformer", *args, "--out", str(scratch), *sets(few)) == 2
    assert not scratch.exists()
    ridge = tmp_path / "ridge"
    assert cli("train", "spike-ridge", *args, "--out", str(ridge), *sets(few)) == 0
    ridge_scores = _evaluate(ridge)  # its recovery of a linear read-out: test_spike_baselines
    assert math.isfinite(ridge_scores["behaviour_r2"]) and ridge_scores["behaviour_r2"] <= 1
