"""End-to-end tests of every CLI command on a tiny synthetic dataset, and CLI error handling."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from factories.cli import TINY, cli, error_lines, sets
from safetensors.numpy import load_file

from mindzoo.datasets.store import TensorStore
from mindzoo.evaluation.metrics import evaluate_features


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "store"
    assert cli("prepare", "synthetic-fmri", "--out", str(out), "--seed", "3", *sets(TINY)) == 0
    return out


def test_prepare_writes_a_store_and_metrics(tiny_store: Path) -> None:
    store = TensorStore.open(tiny_store)
    assert store.subjects == ["sub-01", "sub-02"]
    metrics = json.loads((tiny_store / "metrics.json").read_text())
    assert metrics["cache_hit"] is False
    for subject in store.subjects:
        trials = store.trials(subject)
        assert len(trials) == 84 == metrics["subjects"][subject]["n_trials"]
        test = trials[trials["split"] == "test"]
        assert len(test) == 8 * 3 and sorted(set(test["repetition"])) == [0, 1, 2]
    # both subjects see the same test stimuli
    tests = [
        set(store.trials(s).query("split == 'test'")["stimulus_index"]) for s in store.subjects
    ]
    assert tests[0] == tests[1] and len(tests[0]) == 8
    assert store.signals("sub-01").shape[1] != store.signals("sub-02").shape[1]
    assert store.features("efficientnet-lite0", "global").shape == (len(store.stimulus_ids), 1280)
    assert store.manifest["config"]["simulator"]["seed"] == 3


def test_prepare_again_is_a_cache_hit_and_a_change_is_a_new_version(tiny_store: Path) -> None:
    versions = sorted(p.name for p in (tiny_store / "versions").iterdir())
    start = time.perf_counter()
    assert (
        cli("prepare", "synthetic-fmri", "--out", str(tiny_store), "--seed", "3", *sets(TINY)) == 0
    )
    assert time.perf_counter() - start < 5.0
    assert json.loads((tiny_store / "metrics.json").read_text())["cache_hit"] is True
    assert sorted(p.name for p in (tiny_store / "versions").iterdir()) == versions
    changed = [*TINY, "pipeline.high_pass_hz=0.02", "features=[pixels]"]
    assert (
        cli("prepare", "synthetic-fmri", "--out", str(tiny_store), "--seed", "3", *sets(changed))
        == 0
    )
    after = sorted(p.name for p in (tiny_store / "versions").iterdir())
    assert len(after) == len(versions) + 1 and set(versions) < set(after)
    # put CURRENT back on the first version for the tests that follow
    assert (
        cli("prepare", "synthetic-fmri", "--out", str(tiny_store), "--seed", "3", *sets(TINY)) == 0
    )
    assert TensorStore.open(tiny_store).path.name == versions[0]


def test_verify_ok_then_corrupt(tiny_store: Path, tmp_path: Path) -> None:
    assert cli("verify", str(tiny_store)) == 0
    version = TensorStore.open(tiny_store).path
    chunk = next(
        p
        for p in sorted((version / "subjects/sub-01/signals").rglob("*"))
        if p.is_file() and p.name != "zarr.json"
    )
    original = chunk.read_bytes()
    chunk.write_bytes(bytes([original[0] ^ 0xFF]) + original[1:])
    try:
        assert cli("verify", str(tiny_store)) == 1
    finally:
        chunk.write_bytes(original)
    assert cli("verify", str(tiny_store)) == 0


def test_train_and_evaluate(tiny_store: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert (
        cli(
            "train",
            "ridge",
            "--store",
            str(tiny_store),
            "--subjects",
            "01,02",
            "--out",
            str(run),
            "--set",
            "model.n_folds=3",
        )
        == 0
    )
    for name in ("config.json", "model.safetensors", "predictions.safetensors", "metrics.json"):
        assert (run / name).is_file()
    assert cli("evaluate", str(run), "--out", str(tmp_path / "eval")) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["dataset"] == "synthetic-fmri" and metrics["model"] == "ridge"
    assert set(metrics["subjects"]) == {"sub-01", "sub-02"}
    # the numbers in metrics.json are the metrics of the saved predictions
    store = TensorStore.open(tiny_store)
    predictions = load_file(str(run / "predictions.safetensors"))
    features = store.features("efficientnet-lite0", "global")[...]
    for subject, row in metrics["subjects"].items():
        stim = predictions[f"{subject}/test_stimulus_index"]
        expect = evaluate_features(
            predictions[f"{subject}/test_pred"], features[stim], "efficientnet-lite0"
        )
        for key, value in expect.items():
            assert row[key] == pytest.approx(value)
        assert 0.0 <= row["noise_ceiling_median"] <= 1.0
        assert row["n_test_stimuli"] == 8
    mean_top1 = np.mean(
        [r["retrieval_top1.efficientnet-lite0"] for r in metrics["subjects"].values()]
    )
    assert metrics["mean"]["retrieval_top1.efficientnet-lite0"] == pytest.approx(mean_top1)
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "sub-01" in report and any((tmp_path / "eval").glob("*.png"))
    # an existing run directory is not overwritten
    assert cli("train", "ridge", "--store", str(tiny_store), "--out", str(run)) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["prepare", "no-such-dataset"], "Unknown dataset 'no-such-dataset'"),
        (["train", "no-such-model", "--store", "x"], "Unknown model"),
        (
            ["prepare", "synthetic-fmri", "--set", "pipline.glm=lss"],
            "Unknown --set key 'pipline.glm'",
        ),
        (["prepare", "synthetic-fmri", "--set", "pipeline.glm=ols"], "pipeline"),
        (["verify", "/nonexistent/store"], "No store at /nonexistent/store"),
        (["prepare", "bids-fmri"], "--source"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    out = tmp_path / "never-written"
    full = [*args, "--out", str(out)] if args[0] == "prepare" else args
    proc = subprocess.run(
        [sys.executable, "-m", "mindzoo", *full], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 2, proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not out.exists()


def test_datasets_and_models_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("datasets") == 0
    out = capsys.readouterr().out
    assert "synthetic-fmri" in out and "bids-fmri" in out
    assert cli("models") == 0
    assert "ridge" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["3d-bold", "events-missing", "no-onset", "tr-mismatch", "nan"])
def test_prepare_bids_bad_input_exit_2_and_no_store(case: str, tmp_path: Path) -> None:
    from factories.bids import write_bids_fmri
    from pipelines.test_pipeline_fmri import BAD_INPUTS  # tests/ is on the path

    source = tmp_path / "bids"
    write_bids_fmri(source, n_subjects=1, n_sessions=1, n_runs=2, n_train_per_run=3, seed=1)
    corrupt, _, named = BAD_INPUTS[case]
    corrupt(source)
    out = tmp_path / "store"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mindzoo",
            "prepare",
            "bids-fmri",
            "--source",
            str(source),
            "--out",
            str(out),
            "--set",
            "features=[]",
        ],
        capture_output=True,
        text=True,
    )
    lines = error_lines(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1 and named in lines[0], proc.stderr
    assert not out.exists()


def test_failed_prepare_keeps_the_existing_store(tmp_path: Path) -> None:
    from factories.bids import bold_path, write_bids_fmri

    source = tmp_path / "bids"
    write_bids_fmri(source, n_subjects=1, n_sessions=1, n_runs=2, n_train_per_run=3, seed=1)
    out = tmp_path / "store"
    prepare = ("prepare", "bids-fmri", "--source", str(source), "--out", str(out))
    assert cli(*prepare, "--set", "features=[]") == 0
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    image = nib.load(bold_path(source))
    nib.save(image.slicer[..., 0], bold_path(source))  # now 3D: the next prepare must fail
    assert cli(*prepare, "--set", "features=[]") == 2
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    assert cli("verify", str(out)) == 0


def test_dataset_info_keeps_brackets(capsys: pytest.CaptureFixture[str]) -> None:
    """``[vSMC,STG]`` in a description is text: rich must not read it as markup and drop it."""
    assert cli("datasets", "--info", "bids-ieeg") == 0
    out = capsys.readouterr().out
    assert "pipeline.channels.regions=[vSMC,STG]" in out and "PowerLineFrequency" in out
