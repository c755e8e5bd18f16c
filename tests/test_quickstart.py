"""`braindecode-cli quickstart` on the DEFAULT synthetic-fmri dataset: the issue's benchmark bounds.

This is the calibration test of the simulator as users meet it (about 1-2 minutes on 2 cores):
median noise ceiling of the signal ROI in [0.15, 0.6] for every subject, per-subject ridge
two-way identification >= 0.7 and retrieval top-1 in [0.10, 0.80].
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli import cli

from mindzoo.datasets.store import TensorStore


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("quickstart")
    assert cli("quickstart", "--out", str(out)) == 0
    return out


def test_default_dataset_shape(quickstart: Path) -> None:
    store = TensorStore.open(quickstart / "store")
    assert store.subjects == ["sub-01", "sub-02", "sub-03", "sub-04"]
    n_voxels = [store.signals(s).shape[1] for s in store.subjects]
    assert len(set(n_voxels)) == 4  # different anatomy, different voxel counts
    for subject in store.subjects:
        repeats, stim = store.repeats(subject, "test")
        assert repeats.shape[:2] == (50, 3)
    assert store.images().shape[1:] == (64, 64, 3)


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
