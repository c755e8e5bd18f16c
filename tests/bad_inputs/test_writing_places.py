"""Writing where nothing may be written: ``evaluate``, ``reconstruct`` and ``prepare`` refuse an
``--out`` inside a store's versions, over a store (or the run), or inside ``--source``, with
exit 2, one ``error:`` line naming the path, and nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
from factories.cli import TINY, cli, sets
from factories.refusals import assert_refused

from mindzoo.datasets.store import TensorStore


@pytest.fixture(scope="module")
def ridge_run(shared_tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("bad-inputs") / "ridge"
    args = ["train", "ridge", "--store", str(shared_tiny_store), "--out", str(run)]
    assert cli(*args, "--subjects", "01") == 0
    return run


@pytest.fixture(scope="module")
def bids_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory standing in for raw BIDS data (the refusal comes before it is read)."""
    source = tmp_path_factory.mktemp("bids") / "raw"
    source.mkdir()
    (source / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.8.0"}')
    return source


def _cases(store: Path, run: Path, source: Path) -> dict[str, tuple[list[str], Path]]:
    """Case name -> (arguments, the path the error line must name)."""
    version = TensorStore.open(store).path
    prepare = ["prepare", "synthetic-fmri", "--seed", "3", *sets(TINY)]
    bids = ["prepare", "bids-fmri", "--source", str(source)]
    recon = ["reconstruct", str(run), "--store", str(store)]
    return {
        "evaluate into a version": (["evaluate", str(run), "--out", str(version)], version),
        "evaluate below a version": (
            ["evaluate", str(run), "--out", str(version / "eval" / "x")],
            version / "eval" / "x",
        ),
        "evaluate into versions/": (
            ["evaluate", str(run), "--out", str(store / "versions")],
            store / "versions",
        ),
        "evaluate over the store": (["evaluate", str(run), "--out", str(store)], store),
        "evaluate over the run": (["evaluate", str(run), "--out", str(run)], run),
        "grid into a version": (
            ["evaluate", "--grid", "missing.yaml", "--out", str(version / "g")],
            version / "g",
        ),
        "reconstruct below a version": (
            [*recon, "--out", str(version / "recon")],
            version / "recon",
        ),
        "reconstruct over the store": ([*recon, "--out", str(store)], store),
        "prepare below a version": ([*prepare, "--out", str(version / "s")], version / "s"),
        "prepare into versions/": (
            [*prepare, "--out", str(store / "versions" / "new")],
            store / "versions" / "new",
        ),
        "prepare over its source": ([*bids, "--out", str(source)], source),
        "prepare inside its source": ([*bids, "--out", str(source / "store")], source / "store"),
        "source inside the store's versions": (
            ["prepare", "bids-fmri", "--source", str(version), "--out", str(store)],
            version,
        ),
    }


CASES = [
    "evaluate into a version",
    "evaluate below a version",
    "evaluate into versions/",
    "evaluate over the store",
    "evaluate over the run",
    "grid into a version",
    "reconstruct below a version",
    "reconstruct over the store",
    "prepare below a version",
    "prepare into versions/",
    "prepare over its source",
    "prepare inside its source",
    "source inside the store's versions",
]


@pytest.mark.parametrize("case", CASES)
def test_writing_where_nothing_may_be_written_is_refused(
    case: str,
    shared_tiny_store: Path,
    ridge_run: Path,
    bids_source: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args, named = _cases(shared_tiny_store, ridge_run, bids_source)[case]
    roots = (shared_tiny_store.parent, ridge_run.parent, bids_source.parent)
    assert_refused(capsys, args, named, roots)


def test_the_cases_are_all_run(shared_tiny_store: Path, ridge_run: Path, bids_source: Path) -> None:
    assert sorted(_cases(shared_tiny_store, ridge_run, bids_source)) == sorted(CASES)
