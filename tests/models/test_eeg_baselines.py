"""braindecode baselines: one network per subject, sizes rescaled to the sampling rate, trained by
the ephys trainer and evaluated with the classification metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from factories.ephys import write_ephys_store

from mindzoo.datasets.ephys_views import RecordingInfo
from mindzoo.evaluation.classification import (
    balanced_accuracy,
    classification_scores,
    top_k_accuracy,
)
from mindzoo.evaluation.run import evaluate_run
from mindzoo.models import get_model_info, load_model
from mindzoo.models.eeg_baselines import BASELINES, BaselineConfig, PerSubjectBaseline
from mindzoo.training.ephys import train_ephys


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ephys_store(tmp_path_factory.mktemp("baselines") / "store", seed=5)


@pytest.mark.parametrize("family", sorted(BASELINES))
def test_one_network_per_subject_with_its_channels(family: str) -> None:
    info = RecordingInfo({"sub-01": 6, "sub-02": 9}, n_times=250, sfreq=250.0, n_classes=5)
    model = PerSubjectBaseline(BaselineConfig(), info, family).eval()
    assert sorted(model.nets) == ["sub-01", "sub-02"]
    for subject, n_chans in info.channels.items():
        logits = model.logits(torch.randn(3, n_chans, 250), subject)
        assert logits.shape == (3, 5)
        assert not torch.allclose(logits.exp().sum(1), torch.ones(3))  # logits, not log-probs
    first = dict(model.nets["sub-01"].named_parameters())
    second = dict(model.nets["sub-02"].named_parameters())
    assert not any(first[k] is second[k] for k in first)  # no shared parameters
    assert get_model_info(family).kind == "ephys"


def test_kernels_are_rescaled_to_the_sampling_rate() -> None:
    def kernel_of(sfreq: float, scale: bool) -> int:
        info = RecordingInfo({"sub-01": 4}, n_times=int(2 * sfreq), sfreq=sfreq, n_classes=3)
        net = PerSubjectBaseline(BaselineConfig(scale_to_sfreq=scale), info, "eegnet").nets[
            "sub-01"
        ]
        return net.conv_temporal.kernel_size[1]

    assert kernel_of(128.0, True) == 64  # EEGNet's design rate: 0.5 s
    assert kernel_of(256.0, True) == 128
    assert kernel_of(256.0, False) == 64


def test_metrics_values() -> None:
    logits = np.array([[3.0, 2, 1, 0], [0, 3, 2, 1], [0, 1, 3, 2], [3, 2, 0, 1], [0, 0, 1, 3]])
    labels = np.array([0, 2, 2, 3, 3])
    assert top_k_accuracy(logits, labels, 1) == pytest.approx(3 / 5)
    assert top_k_accuracy(logits, labels, 2) == pytest.approx(4 / 5)
    # per-class recall: class 0 1/1, class 2 1/2, class 3 1/2 (class 1 absent)
    assert balanced_accuracy(logits.argmax(1), labels, 4) == pytest.approx((1 + 0.5 + 0.5) / 3)
    scores = classification_scores(logits, labels)
    assert scores["top5"] == 1.0 and scores["chance.top1"] == 0.25


def test_eegnet_trains_beats_chance_and_evaluates(store: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    run = train_ephys(
        "eegnet",
        store,
        tmp_path / "eegnet",
        overrides=["trainer.epochs=15", "trainer.batch_size=16", "trainer.lr=0.01"],
        progress=False,
    )
    metrics = evaluate_run(run)
    assert metrics["kind"] == "ephys-classifier"
    assert metrics["mean"]["top1"] > 0.5  # 4 classes: chance 0.25
    assert json.loads((run / "eval" / "metrics.json").read_text()) == metrics
    assert (run / "eval" / "confusion_sub-02.png").is_file()
    reloaded = load_model(run)
    assert sorted(reloaded.nets) == ["sub-01", "sub-02"]
