"""prepare -> train -> evaluate -> verify with the store and the run on S3 (moto's server on
localhost), against the same pipeline on a local store: the same bytes, the same metrics."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from factories.cli import TINY, cli, error_lines, sets
from factories.s3 import S3Server, s3_server

from mindzoo.datasets import remote
from mindzoo.datasets.store import TensorStore, verify_store

pytestmark = pytest.mark.s3

RIDGE = ["--subjects", "01,02", "--set", "model.n_folds=3"]


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("MINDZOO_CACHE", str(tmp_path_factory.mktemp("cache")))
        with s3_server(monkeypatch) as server:
            yield server


@pytest.fixture(scope="module")
def s3_store(s3: S3Server) -> str:
    url = s3.url("store")
    assert cli("prepare", "synthetic-fmri", "--out", url, "--seed", "3", *sets(TINY)) == 0
    return url


def _remote_json(url: str) -> dict:
    text = remote.read_text(url)
    assert text is not None, f"{url} is missing"
    return json.loads(text)


def test_prepare_publishes_the_same_version_as_a_local_prepare(
    s3_store: str, shared_tiny_store: Path
) -> None:
    local = TensorStore.open(shared_tiny_store)
    store = TensorStore.open(s3_store)
    assert str(store.path) == f"{s3_store}/versions/{local.path.name}"
    assert store.manifest["config_hash"] == local.manifest["config_hash"]
    assert store.manifest["checksums"] == local.manifest["checksums"]  # byte for byte
    assert _remote_json(f"{s3_store}/metrics.json")["cache_hit"] is False
    assert store.signals("sub-01").metadata.dimension_names == ("trial", "voxel")


def test_prepare_again_uploads_nothing(s3_store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    uploads: list[list[str]] = []
    put = remote._put
    monkeypatch.setattr(
        remote,
        "_put",
        lambda fs, local, targets: (uploads.append(targets), put(fs, local, targets)),
    )
    # another node: no local staging store, the remote version is found after the local build
    shutil.rmtree(remote.staging_store(s3_store))
    assert cli("prepare", "synthetic-fmri", "--out", s3_store, "--seed", "3", *sets(TINY)) == 0
    assert uploads == []
    assert _remote_json(f"{s3_store}/metrics.json")["cache_hit"] is True


def test_train_evaluate_on_s3_equals_local(
    s3: S3Server, s3_store: str, shared_tiny_store: Path, tmp_path: Path
) -> None:
    run_url = s3.url("runs/ridge")
    assert cli("train", "ridge", "--store", s3_store, "--out", run_url, *RIDGE) == 0
    config = _remote_json(f"{run_url}/config.json")
    assert config["store"] == str(TensorStore.open(s3_store).path)  # recorded as the URL
    assert "alpha" in _remote_json(f"{run_url}/metrics.json")["subjects"]["sub-01"]
    # the same pipeline on the local store
    local_run = tmp_path / "run"
    assert (
        cli("train", "ridge", "--store", str(shared_tiny_store), "--out", str(local_run), *RIDGE)
        == 0
    )
    assert cli("evaluate", str(local_run)) == 0
    expected = json.loads((local_run / "eval" / "metrics.json").read_text())
    # evaluate on a node that never saw the run: fetched from S3, the report goes back there
    shutil.rmtree(remote.cache_dir("runs", run_url))
    assert cli("evaluate", run_url) == 0
    metrics = _remote_json(f"{run_url}/eval/metrics.json")
    assert metrics["subjects"].keys() == expected["subjects"].keys() == {"sub-01", "sub-02"}
    for subject, row in expected["subjects"].items():
        assert metrics["subjects"][subject] == pytest.approx(row, rel=1e-6)
    assert metrics["mean"] == pytest.approx(expected["mean"], rel=1e-6)
    assert remote.read_text(f"{run_url}/eval/report.md") is not None
    # a finished remote run is not trained over
    assert cli("train", "ridge", "--store", s3_store, "--out", run_url, *RIDGE) == 2


def test_verify_on_s3(
    s3_store: str, shared_tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli("verify", s3_store) == 0
    version = TensorStore.open(s3_store).path
    n_files = verify_store(shared_tiny_store).n_files
    assert f"ok: {version} ({n_files} files" in capsys.readouterr().out.replace("\n", "")
    fs, root = remote.filesystem(version)
    chunk = f"{root}/subjects/sub-01/signals/c/0/0"
    original = fs.cat_file(chunk)
    fs.pipe_file(chunk, bytes([original[0] ^ 0xFF]) + original[1:])
    try:
        assert cli("verify", s3_store) == 1
        out = capsys.readouterr().out.replace("\n", "")
        assert "checksum mismatch in subjects/sub-01/signals/c/0/0" in out
        out_dir = tmp_path / "ridge"  # the command that reads the chunk catches it too
        assert cli("train", "ridge", "--store", s3_store, "--out", str(out_dir), *RIDGE) == 2
        lines = error_lines(capsys.readouterr().err)
        assert len(lines) == 1 and f"{version}/subjects/sub-01/signals/c/0/0" in lines[0]
        assert "does not match its checksum" in lines[0] and not out_dir.exists()
    finally:
        fs.pipe_file(chunk, original)
    assert cli("verify", s3_store) == 0


def test_a_killed_prepare_upload_stays_invisible(
    s3_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = TensorStore.open(s3_store).path
    put = remote._put

    def killed(fs, local, targets):
        if targets[-1].endswith(remote.MANIFEST):
            raise KeyboardInterrupt
        put(fs, local, targets)

    monkeypatch.setattr(remote, "_put", killed)
    changed = [*TINY, "features=[pixels]"]
    args = ["prepare", "synthetic-fmri", "--out", s3_store, "--seed", "3", *sets(changed)]
    assert cli(*args) == 130  # interrupted (click turns KeyboardInterrupt into Abort)
    assert TensorStore.open(s3_store).path == before
    assert cli("verify", s3_store) == 0
    monkeypatch.setattr(remote, "_put", put)
    assert cli(*args) == 0  # the local build is a cache hit; the upload starts again
    after = TensorStore.open(s3_store)
    assert after.path != before and list(after.feature_spaces()) == ["pixels"]
    assert cli("verify", s3_store) == 0
    assert cli("prepare", "synthetic-fmri", "--out", s3_store, "--seed", "3", *sets(TINY)) == 0
    assert TensorStore.open(s3_store).path == before  # CURRENT back for the other tests


def test_bad_urls_are_one_line(s3: S3Server, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("evaluate", s3.url("runs/none")) == 2
    assert error_lines(capsys.readouterr().err) == [
        f"error: No finished run at {s3.url('runs/none')} (no metrics.json); pass the --out of "
        "`braindecode-cli train`"
    ]
    assert cli("verify", s3.url("nothing")) == 2
    assert "No store at s3://" in capsys.readouterr().err


def test_reconstruct_reads_a_store_at_a_url(
    s3_store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A local ridge run of the S3 store reconstructs from it with --weights (a diffusion model
    trained from the S3 store); without weights the missing local cache is one line."""
    run = tmp_path / "ridge"
    assert cli("train", "ridge", "--store", s3_store, "--out", str(run), *RIDGE) == 0
    out = tmp_path / "recon"
    assert cli("reconstruct", str(run), "--store", s3_store, "--out", str(out)) == 2
    assert "has no local diffusion cache; pass --weights" in capsys.readouterr().err
    weights = tmp_path / "diffusion"
    small = ["model.image_size=16", "model.channels=[16,32]", "model.norm_groups=8"]
    small += ["model.attention_head_dim=8", "trainer.steps=5", "trainer.batch_size=8"]
    assert cli("train", "diffusion", "--store", s3_store, "--out", str(weights), *sets(small)) == 0
    args = ["reconstruct", str(run), "--store", s3_store, "--out", str(out), "--steps", "2"]
    assert cli(*args, "--weights", str(weights), "--subjects", "01") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["subjects"]) == ["sub-01"]
    n_test = len(TensorStore.open(s3_store).split("sub-01", "test", average_repeats=True)[1])
    assert len(list((out / "images" / "sub-01").iterdir())) == n_test
    assert metrics["subjects"]["sub-01"]["real"]["SSIM"] > 0
