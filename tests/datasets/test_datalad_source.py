"""The DataLad source: clone, selective fetch, resume, provenance and its failure modes.

A tiny BIDS dataset (2 subjects x 2 sessions, annexed NIfTI and images, sidecars and events in
git) is made a local DataLad dataset and prepared through the `bids-fmri` catalog entry with
``--source`` pointing at it, as a user would prepare an OpenNeuro mirror.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from factories.bids import bold_path, write_bids_fmri
from factories.cli import cli
from factories.datalad import drop_content, has_content, head_commit, make_datalad_dataset, save

from mindzoo.datasets import datalad_source
from mindzoo.datasets.store import TensorStore
from mindzoo.errors import UserInputError
from mindzoo.pipelines.prepare import prepare_dataset

BIDS = {"n_subjects": 2, "n_sessions": 2, "n_runs": 1, "n_train_per_run": 4, "seed": 5}
ARGS = ["--subjects", "01", "--sessions", "02", "--set", "features=[pixels]"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local DataLad dataset of the factory's BIDS output."""
    pytest.importorskip("datalad")
    if shutil.which("git-annex") is None:
        pytest.skip("git-annex is not installed (pip install git-annex)")
    root = tmp_path_factory.mktemp("datalad") / "ds"
    write_bids_fmri(root, **BIDS)
    make_datalad_dataset(root)
    return root


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> TensorStore:
    """The same BIDS data as a plain folder, prepared with the same settings."""
    base = tmp_path_factory.mktemp("plain")
    write_bids_fmri(base / "bids", **BIDS)
    prepare_dataset(
        "bids-fmri",
        base / "store",
        source=base / "bids",
        overrides=["features=[pixels]"],
        subjects=["01"],
        sessions=["02"],
        progress=False,
    )
    return TensorStore.open(base / "store")


def clone_of(store_dir: Path) -> Path:
    (clone,) = (store_dir / "raw").glob("bids-fmri-*")
    return clone


def assert_same_values(store: TensorStore, reference: TensorStore) -> None:
    assert store.subjects == reference.subjects == ["sub-01"]
    np.testing.assert_array_equal(store.signals("sub-01")[...], reference.signals("sub-01")[...])
    assert store.trials("sub-01").equals(reference.trials("sub-01"))
    assert store.stimulus_ids == reference.stimulus_ids
    np.testing.assert_array_equal(store.images()[...], reference.images()[...])


def test_clone_fetches_only_the_chosen_subject_and_session(
    dataset: Path, reference: TensorStore, tmp_path: Path
) -> None:
    out = tmp_path / "store"
    assert cli("prepare", "bids-fmri", "--source", str(dataset), "--out", str(out), *ARGS) == 0
    clone = clone_of(out)
    assert has_content(bold_path(clone, "01", 2))
    for subject, session in [("01", 1), ("02", 1), ("02", 2)]:
        path = bold_path(clone, subject, session)
        assert path.is_symlink() and not has_content(path), path
    # the images sub-01 saw in ses-02 were fetched, the others were not
    events = bold_path(clone, "01", 2).name.replace("_bold.nii.gz", "_events.tsv")
    shown = set(pd.read_csv(bold_path(clone, "01", 2).parent / events, sep="\t")["stim_file"])
    shown.discard(np.nan)
    images = sorted((clone / "stimuli").glob("*.png"))
    assert {p.name for p in images if has_content(p)} == shown
    assert 0 < len(shown) < len(images)
    store = TensorStore.open(out)
    assert_same_values(store, reference)
    source = store.manifest["source"]
    assert source["kind"] == "datalad" and source["commit"] == head_commit(dataset)
    assert source["url"] == str(dataset) and source["n_files_fetched"] > 0


def test_same_commit_is_a_cache_hit_new_commit_a_new_version(dataset: Path, tmp_path: Path) -> None:
    work = tmp_path / "ds"
    shutil.copytree(dataset, work, symlinks=True)
    out = tmp_path / "store"
    args = ["prepare", "bids-fmri", "--source", str(work), "--out", str(out), *ARGS]
    assert cli(*args) == 0
    first = TensorStore.open(out).path.name
    assert cli(*args) == 0
    assert json.loads((out / "metrics.json").read_text())["cache_hit"] is True

    (work / "README").write_text("a new release\n")
    commit = save(work, "README")
    assert cli(*args) == 0
    assert json.loads((out / "metrics.json").read_text())["cache_hit"] is False
    store = TensorStore.open(out)
    assert store.path.name != first and store.manifest["source"]["commit"] == commit
    assert head_commit(clone_of(out)) == commit


def test_interrupted_fetch_resumes(
    dataset: Path, reference: TensorStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "store"
    fetch = datalad_source.fetch
    calls = []

    def fetch_then_interrupt(
        clone: datalad_source.DataladClone, paths: list[str], progress: bool = True
    ) -> int:
        count = fetch(clone, paths, progress)
        calls.append(count)
        if len(calls) == 2:  # the bulk fetch: lose one file as if killed during its transfer
            drop_content(clone.path, bold_path(clone.path, "01", 2).relative_to(clone.path))
            raise KeyboardInterrupt
        return count

    monkeypatch.setattr(datalad_source, "fetch", fetch_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(
            "bids-fmri",
            out,
            source=dataset,
            overrides=["features=[pixels]"],
            subjects=["01"],
            sessions=["02"],
            progress=False,
        )
    # no store version, but the clone and what it fetched stay for the next attempt
    assert not (out / "versions").exists() and not (out / "CURRENT").exists()
    assert not has_content(bold_path(clone_of(out), "01", 2))
    monkeypatch.undo()

    assert cli("prepare", "bids-fmri", "--source", str(dataset), "--out", str(out), *ARGS) == 0
    assert has_content(bold_path(clone_of(out), "01", 2))
    assert json.loads((out / "metrics.json").read_text())["cache_hit"] is False
    store = TensorStore.open(out)
    assert store.manifest["source"]["n_files_fetched"] == 1  # only the lost file came again
    assert_same_values(store, reference)


def test_missing_annexed_content_names_the_file(dataset: Path, tmp_path: Path) -> None:
    work = tmp_path / "ds"
    shutil.copytree(dataset, work, symlinks=True)
    lost = bold_path(work, "01", 2).relative_to(work)
    drop_content(work, lost)  # the only copy of its content is gone
    out = tmp_path / "store"
    with pytest.raises(UserInputError, match=f"Annexed content of {lost}") as error:
        prepare_dataset(
            "bids-fmri",
            out,
            source=work,
            overrides=["features=[]"],
            subjects=["01"],
            sessions=["02"],
            progress=False,
        )
    assert "\n" not in str(error.value)
    assert not (out / "versions").exists()


def test_unknown_subject_lists_the_available_ones(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "store"
    with pytest.raises(UserInputError, match="Unknown subject.*sub-07.*available: sub-01, sub-02"):
        prepare_dataset(
            "bids-fmri", out, source=dataset, subjects=["07"], overrides=["features=[]"]
        )
    assert not (out / "versions").exists()
    clone = clone_of(out)
    assert not any(has_content(p) for p in clone.rglob("*_bold.nii.gz"))


@pytest.mark.parametrize(
    "url",
    [
        "https://mindzoo.invalid/OpenNeuroDatasets/ds001246.git",  # no such host (RFC 2606)
        "http://127.0.0.1:9/ds001246.git",  # nothing listens on the discard port
    ],
)
def test_unreachable_source_fails_fast_with_the_url(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "store"
    start = time.perf_counter()
    status = cli("prepare", "god", "--source", url, "--out", str(out))
    assert time.perf_counter() - start < 10.0
    assert status == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert url in line and "--source /local/path" in line
    assert not out.exists()


def test_a_server_that_never_answers_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datalad_source, "_NETWORK_TIMEOUT_S", 0.5)
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/ds001246.git"
        start = time.perf_counter()
        with pytest.raises(UserInputError, match=f"Cannot reach {url} .no answer within"):
            datalad_source.check_reachable(url)
        assert time.perf_counter() - start < 3.0


@pytest.mark.parametrize(
    ("location", "remote"),
    [
        ("https://github.com/OpenNeuroDatasets/ds001246.git", True),
        ("ria+ssh://store.example.org/data#~nsd", True),
        ("git@github.com:OpenNeuroDatasets/ds001246.git", True),
        ("///openneuro/ds001246", True),
        ("/data/ds001246", False),
        ("relative/ds001246", False),
        ("file:///data/ds001246", False),
    ],
)
def test_remote_or_local(location: str, remote: bool) -> None:
    assert datalad_source.is_remote(location) is remote
