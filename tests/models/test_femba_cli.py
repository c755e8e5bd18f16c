"""`femba-pretrain` and `femba` on the one trainer, end to end through the CLI on a tiny
synthetic-eeg store: masked pre-training, a classifier started from it (`--set init=RUN`, its
encoder weights carried over), `evaluate`; and the layer-wise learning-rate decay reaching the
optimizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from factories.cli import cli, sets

from mindzoo.models import load_model
from mindzoo.training.trainer import Trainer

SMALL = ["simulator.n_subjects=1", "simulator.n_categories=3", "simulator.repetitions=10"]
TINY = [
    "model.embed_dim=4",
    "model.patch_channels=1",  # synthetic-eeg has 31 channels (the clinical montage: 22)
    "model.n_blocks=1",
    "model.head_hidden=16",
    "model.decoder_kernel=3",
    "trainer.epochs=2",
    "trainer.batch_size=8",
]


@pytest.fixture(scope="module")
def eeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("femba") / "eeg"
    assert cli("prepare", "synthetic-eeg", "--out", str(out), *sets(SMALL)) == 0
    return out


def test_pretrain_then_classify_then_evaluate(eeg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pre = eeg.parent / "pre"
    assert cli("train", "femba-pretrain", "--store", str(eeg), "--out", str(pre), *sets(TINY)) == 0
    history = json.loads((pre / "metrics.json").read_text())
    assert history["model"] == "femba-pretrain"

    encoder = {k: v for k, v in load_model(pre).state_dict().items() if k.startswith("encoder.")}
    assert encoder
    lrs: list[list[float]] = []
    carried: list[bool] = []
    real = Trainer.fit

    def spy(self, model, *args, **kwargs):  # at the start: the weights, then each group's lr
        state = model.state_dict()
        carried.append(all(torch.equal(state[k], v) for k, v in encoder.items()))
        original = torch.optim.AdamW.step

        def step(opt, *a, **k):
            if not lrs:
                lrs.append([g["lr"] for g in opt.param_groups])
            return original(opt, *a, **k)

        monkeypatch.setattr(torch.optim.AdamW, "step", step)
        return real(self, model, *args, **kwargs)

    monkeypatch.setattr(Trainer, "fit", spy)
    cls = eeg.parent / "cls"
    args = ["train", "femba", "--store", str(eeg), "--out", str(cls)]
    assert cli(*args, *sets([*TINY, f"init={pre}", "model.layer_decay=0.5"])) == 0
    assert lrs and len(set(lrs[0])) > 1  # the encoder's groups get less than the head

    assert carried == [True]  # the classifier starts from the pre-trained encoder
    assert cli("evaluate", str(cls)) == 0
    report = json.loads((cls / "eval" / "metrics.json").read_text())["subjects"]["sub-01"]
    assert report["n_test_trials"] == 3 and 0.0 <= report["balanced_accuracy"] <= 1.0
    assert (cls / "eval" / "confusion_sub-01.png").is_file()
