"""`braindecode-cli quickstart`.

The slow tests run it on the DEFAULT synthetic-fmri dataset: the calibration of the simulator as
users meet it (prepare, brain-it, the embedded diffusion model, reconstructions, evaluation;
about 8 CPU minutes on 2 cores): median noise ceiling of the signal ROI in [0.15, 0.6] for every
subject, per-subject brain-it two-way identification >= 0.7 and retrieval top-1 in [0.10, 0.80];
reconstructions from each subject's predictions beat the same predictions shuffled across test
items. The fast test runs the same five steps on a tiny dataset with short training.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from factories.cli import TINY, cli, sets
from PIL import Image

from mindzoo.datasets.store import TensorStore


def test_quickstart_on_tiny_data_runs_all_five_steps(tmp_path: Path) -> None:
    args = [*sets(TINY), "--model-set", "trainer.epochs=2", "--diffusion-set", "trainer.steps=20"]
    assert cli("quickstart", "--out", str(tmp_path), "--steps", "3", *args) == 0
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["model"] == "brain-it" and set(summary["subjects"]) == {"sub-01", "sub-02"}
    assert all(summary[f"{step}_seconds"] > 0 for step in ("prepare", "train", "reconstruct"))
    recon = summary["reconstruction"]
    assert recon["lowlevel_init"] is True  # brain-it's preset predicts the low-level image
    for subject, row in recon["subjects"].items():
        assert len(list((tmp_path / "reconstruct" / "images" / subject).glob("*.png"))) == 8
        for kind in ("real", "shuffled"):
            assert -1 <= row[kind]["PixCorr"] <= 1 and 0 < row[kind]["SSIM"] <= 1
    grid = np.asarray(Image.open(recon["grid"]))
    assert grid.shape == (3 * 64, 8 * 64, 3)  # ground truth + 2 subjects, 8 test stimuli
    assert "## Reconstructions (embedded backend)" in Path(summary["report"]).read_text()
    # the diffusion model went to the store's cache, beside the versions
    cache = sorted((tmp_path / "store" / "cache").glob("diffusion-*"))
    assert len(cache) == 1


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("quickstart")
    assert cli("quickstart", "--out", str(out)) == 0
    return out


@pytest.mark.slow
def test_default_dataset_shape(quickstart: Path) -> None:
    store = TensorStore.open(quickstart / "store")
    assert store.subjects == ["sub-01", "sub-02", "sub-03", "sub-04"]
    n_voxels = [store.signals(s).shape[1] for s in store.subjects]
    assert len(set(n_voxels)) == 4  # different anatomy, different voxel counts
    for subject in store.subjects:
        repeats, stim = store.repeats(subject, "test")
        assert repeats.shape[:2] == (50, 3)
    assert store.images().shape[1:] == (64, 64, 3)


@pytest.mark.slow
def test_default_benchmark_bounds(quickstart: Path) -> None:
    summary = json.loads((quickstart / "metrics.json").read_text())
    assert summary["total_seconds"] < 600
    for subject, row in summary["subjects"].items():
        assert 0.15 <= row["noise_ceiling_median"] <= 0.6, (subject, row)
        assert row["two_way_id.efficientnet-lite0"] >= 0.7, (subject, row)
        assert 0.10 <= row["retrieval_top1.efficientnet-lite0"] <= 0.80, (subject, row)
    report = Path(summary["report"]).read_text()
    for row in summary["subjects"].values():
        assert f"{row['two_way_id.efficientnet-lite0']:.3f}" in report
        assert f"{row['retrieval_top1.efficientnet-lite0']:.3f}" in report


@pytest.mark.slow
def test_quickstart_reconstructions_beat_the_permutation_control(quickstart: Path) -> None:
    summary = json.loads((quickstart / "metrics.json").read_text())
    recon = summary["reconstruction"]
    grid = np.asarray(Image.open(recon["grid"]))
    assert grid.shape == (5 * 64, 16 * 64, 3)  # ground truth + 4 subjects, 16 test stimuli
    for subject, row in recon["subjects"].items():
        assert len(list((quickstart / "reconstruct" / "images" / subject).glob("*.png"))) == 50
        for column in ("PixCorr", "SSIM", "efficientnet-lite0 2-way"):
            assert row["real"][column] > row["shuffled"][column], (subject, column, row)
    report = Path(summary["report"]).read_text()
    assert "## Reconstructions (embedded backend)" in report
    assert "reconstruct/grid.png" in report
    sub = recon["subjects"]["sub-01"]
    assert f"{sub['real']['PixCorr']:.3f}" in report
