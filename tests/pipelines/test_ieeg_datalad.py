"""A local DataLad dataset of BIDS iEEG, prepared end to end through the bids-ieeg catalog entry."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from factories.datalad import has_content, head_commit, make_datalad_dataset

from mindzoo.datasets.store import TensorStore, verify_store
from mindzoo.datasets.synthetic.ieeg import SyntheticIEEGConfig, simulate_bids
from mindzoo.pipelines.prepare import prepare_dataset

SIMULATOR = SyntheticIEEGConfig(
    n_subjects=2, n_words=3, repetitions=6, n_runs=2, shafts=(3, 3), contacts=(8, 8)
)
SETTINGS = [
    "pipeline.task=wordreading",
    "pipeline.high_gamma=true",
    "pipeline.sfreq=100",
    "pipeline.tmax=1.0",
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("datalad")
    if shutil.which("git-annex") is None:
        pytest.skip("git-annex is not installed (pip install git-annex)")
    root = tmp_path_factory.mktemp("datalad") / "ds"
    simulate_bids(root, SIMULATOR, progress=False)
    make_datalad_dataset(root)
    return root


def test_datalad_ieeg_prepares_only_the_chosen_subject(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "store"
    prepare_dataset(
        "bids-ieeg", out, source=dataset, overrides=SETTINGS, subjects=["01"], progress=False
    )
    assert verify_store(out).ok
    store = TensorStore.open(out)
    assert store.subjects == ["sub-01"]
    assert store.manifest["source"]["kind"] == "datalad"
    assert store.manifest["source"]["commit"] == head_commit(dataset)
    assert store.signals("sub-01").shape[0] == 3 * 6
    (clone,) = (out / "raw").glob("bids-ieeg-*")
    # sub-01's recordings were fetched, sub-02's never left the source
    assert all(has_content(p) for p in clone.glob("sub-01/ieeg/*_ieeg.eeg"))
    others = list(clone.glob("sub-02/ieeg/*_ieeg.eeg"))
    assert len(others) == 2 and not any(has_content(p) for p in others)

    # the same BIDS folder read directly gives the same store values
    plain = tmp_path / "plain"
    shutil.copytree(dataset, plain, ignore=shutil.ignore_patterns(".git", ".datalad"))
    direct = TensorStore.open(
        prepare_dataset(
            "bids-ieeg",
            tmp_path / "direct",
            source=plain,
            overrides=SETTINGS,
            subjects=["01"],
            progress=False,
        ).version_dir
    )
    np.testing.assert_array_equal(store.signals("sub-01")[...], direct.signals("sub-01")[...])
    assert store.trials("sub-01").equals(direct.trials("sub-01"))
