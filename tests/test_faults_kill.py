"""``kill -9`` in the middle of train (torch and ridge), reconstruct and evaluate, then the same
command again; and concurrent ``prepare`` of one store.

Each killed command runs the real CLI (``mindzoo.cli.app.main``) in a child process with one
function wrapped so that, once the command has written part of its output into its hidden
temporary, the child says so in a marker file and waits: the test sees the command provably
mid-write (the temporary exists, the output does not), SIGKILLs it and checks that

* every finished result beside it (an earlier run, evaluation or reconstruction, the store) is
  byte for byte what it was;
* the same command again succeeds (``train --resume`` for a torch model), says it removed the
  dead writer's temporary, and leaves no ``.tmp-*`` anywhere under the directories involved.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from factories.cli import TINY, cli, sets
from filelock import FileLock
from safetensors.numpy import load_file

import mindzoo

DECODER = [
    "trainer.epochs=2",
    "trainer.batch_size=32",
    "trainer.checkpoint_every_steps=1",
    "model.hidden_dim=64",
]
DIFFUSION = [
    "model.image_size=16",
    "model.channels=[16,32]",
    "model.norm_groups=8",
    "model.attention_head_dim=8",
    "trainer.steps=2",
    "trainer.batch_size=8",
]
NO_FEATURES = ["--set", "features=[]"]  # a second version that needs no feature extraction
RECONSTRUCT = ["--subjects", "01", "--no-control", "--steps", "2"]

# Runs the CLI with MODULE.FUNCTION wrapped: after the NTH call for which CONDITION (a Python
# expression of `args`, the call's positional arguments) holds, it writes MARKER and waits for
# the kill. argv: MODULE FUNCTION CONDITION NTH MARKER CLI-ARGS...
_PAUSED_CLI = r"""
import importlib, os, sys, time
from pathlib import Path
module, function, condition, nth, marker = sys.argv[1:6]
owner = importlib.import_module(module)
*outer, function = function.split(".")
for name in outer:
    owner = getattr(owner, name)
original = getattr(owner, function)
seen = [0]
def paused(*args, **kwargs):
    result = original(*args, **kwargs)
    if eval(condition, {"Path": Path}, {"args": args}):
        seen[0] += 1
        if seen[0] == int(nth):
            Path(marker).write_text(str(os.getpid()))
            while True:
                time.sleep(0.05)
    return result
setattr(owner, function, paused)
import torch
torch.set_num_threads(int(os.environ["MINDZOO_TEST_THREADS"]))
from mindzoo.cli.app import main
sys.argv = ["braindecode-cli", *sys.argv[6:]]
main()
"""


def _env() -> dict[str, str]:
    """The child's environment: this checkout first, and this process's torch thread count
    (other test modules set it to 1; a different count changes float sums, so a resume in this
    process would not be bit-exact with the steps the child took)."""
    import torch

    return {
        **os.environ,
        "PYTHONPATH": str(Path(mindzoo.__file__).parents[1]),
        "MINDZOO_TEST_THREADS": str(torch.get_num_threads()),
    }


def kill_when_paused(
    tmp_path: Path, hook: str, args: list[str], condition: str = "True", nth: int = 1
) -> None:
    """Run ``braindecode-cli ARGS`` in a child with ``hook`` ("module:function") pausing it
    after its ``nth`` call where ``condition`` holds; SIGKILL it there."""
    module, function = hook.split(":")
    marker = tmp_path / f"paused-{time.monotonic_ns()}"
    log = tmp_path / f"{marker.name}.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-c", _PAUSED_CLI, module, function, condition, str(nth)]
            + [str(marker), *args],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=_env(),
        )
        try:
            deadline = time.monotonic() + 120
            while not marker.exists():
                if proc.poll() is not None:
                    pytest.fail(
                        f"{args[0]} ended (status {proc.returncode}) before the pause:\n"
                        + log.read_text(errors="replace")[-3000:]
                    )
                assert time.monotonic() < deadline, f"{args[0]} never reached {hook}"
                time.sleep(0.02)
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` by relative path (the tree's exact content)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def temporaries(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob(".tmp-*")]


def same_arrays(a: Path, b: Path) -> bool:
    x, y = load_file(str(a)), load_file(str(b))
    return x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)


def test_kill_9_during_train_ridge_then_rerun(
    shared_tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    base = ["train", "ridge", "--store", str(shared_tiny_store), "--subjects", "01"]
    assert cli(*base, "--out", str(runs / "done")) == 0
    before, store = hashes(runs / "done"), hashes(shared_tiny_store)
    run = runs / "run"
    args = [*base, "--out", str(run)]
    # paused once model.safetensors is written into the run's temporary
    kill_when_paused(tmp_path, "mindzoo.training.estimators:save_arrays", args)
    (left,) = temporaries(runs)
    assert left.parent == runs and left.name.startswith(".tmp-run-")
    assert (left / "model.safetensors").is_file() and not run.exists()
    assert hashes(runs / "done") == before and hashes(shared_tiny_store) == store
    capsys.readouterr()
    assert cli(*args) == 0
    assert "removed 1 stale temporary" in capsys.readouterr().err
    assert temporaries(runs) == []
    assert hashes(runs / "done") == before
    assert same_arrays(run / "predictions.safetensors", runs / "done" / "predictions.safetensors")
    assert json.loads((run / "metrics.json").read_text())["subjects"]["sub-01"]["alpha"] > 0


def test_kill_9_during_torch_training_then_resume(
    shared_tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Killed while writing its second checkpoint; ``--resume`` reclaims the half-written one,
    continues the first and ends with the weights of an uninterrupted run."""
    runs = tmp_path / "runs"
    base = ["train", "mindeye-mlp", "--store", str(shared_tiny_store), *sets(DECODER)]
    assert cli(*base, "--out", str(runs / "whole")) == 0
    before = hashes(runs / "whole")
    run = runs / "run"
    kill_when_paused(
        tmp_path,
        "mindzoo.training.checkpoint:save_weights",
        [*base, "--out", str(run)],
        condition="Path(args[0]).name == 'model.safetensors' and "
        "Path(args[0]).parent.name.startswith('.tmp-step-')",
        nth=2,
    )
    checkpoints = run / "checkpoints"
    assert [p.name for p in checkpoints.glob("step-*")] == ["step-00000001"]
    (half,) = temporaries(runs)
    assert half.parent == checkpoints and half.name.startswith(".tmp-step-00000002-")
    assert not (half / "trainer_state.json").exists()
    assert not (run / "metrics.json").exists() and hashes(runs / "whole") == before
    capsys.readouterr()
    assert cli(*base, "--out", str(run), "--resume") == 0
    assert "removed 1 stale temporary" in capsys.readouterr().err
    assert temporaries(runs) == [] and hashes(runs / "whole") == before
    for name in ("model.safetensors", "predictions.safetensors"):
        assert same_arrays(run / name, runs / "whole" / name), name
    history = [
        json.loads((r / "metrics.json").read_text())["training"]["history"]
        for r in (run, runs / "whole")
    ]
    assert len(history[0]) == 2 and history[0] == history[1]


def test_kill_9_during_evaluate_then_rerun(
    shared_tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Killed while writing the evaluation of run b into --out holding run a's evaluation:
    that evaluation stays whole (not a's figures under b's metrics.json); the re-run replaces it
    with b's complete one."""
    train = ["train", "ridge", "--store", str(shared_tiny_store)]
    assert cli(*train, "--subjects", "01", "--out", str(tmp_path / "a")) == 0
    assert cli(*train, "--out", str(tmp_path / "b")) == 0
    results = tmp_path / "results"
    out = results / "eval"
    assert cli("evaluate", str(tmp_path / "a"), "--out", str(out)) == 0
    before, runs = hashes(out), hashes(tmp_path / "b")
    args = ["evaluate", str(tmp_path / "b"), "--out", str(out)]
    # paused after the first subject's figures: metrics.json and some figures are written
    kill_when_paused(tmp_path, "mindzoo.evaluation.report:_subject_figures", args)
    assert hashes(out) == before and hashes(tmp_path / "b") == runs
    (left,) = temporaries(results)
    assert left.name.startswith(".tmp-eval-") and (left / "metrics.json").is_file()
    capsys.readouterr()
    assert cli(*args) == 0
    assert "removed 1 stale temporary" in capsys.readouterr().err
    assert temporaries(results, tmp_path / "b") == []
    metrics = json.loads((out / "metrics.json").read_text())
    assert sorted(metrics["subjects"]) == ["sub-01", "sub-02"]
    assert metrics["run"] == str((tmp_path / "b").resolve())
    assert (out / "report.md").is_file() and (out / "sub-02_retrieval.png").is_file()


@pytest.fixture(scope="module")
def diffusion_weights(shared_tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-step embedded diffusion model (its quality does not matter here)."""
    out = tmp_path_factory.mktemp("faults") / "diffusion"
    args = ["train", "diffusion", "--store", str(shared_tiny_store), "--out", str(out)]
    assert cli(*args, *sets(DIFFUSION)) == 0
    return out


def test_kill_9_during_reconstruct_then_rerun(
    shared_tiny_store: Path,
    diffusion_weights: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = tmp_path / "ridge"
    assert cli("train", "ridge", "--store", str(shared_tiny_store), "--out", str(run)) == 0
    recons = tmp_path / "recons"
    base = ["reconstruct", str(run), "--store", str(shared_tiny_store)]
    base += ["--weights", str(diffusion_weights), *RECONSTRUCT]
    assert cli(*base, "--out", str(recons / "first")) == 0
    before, inputs = hashes(recons / "first"), hashes(run)
    args = [*base, "--out", str(recons / "second")]
    # paused after grid.png: the images and the grid are in the temporary
    kill_when_paused(tmp_path, "mindzoo.reconstruction.run:_write_grid", args)
    (left,) = temporaries(recons)
    assert left.name.startswith(".tmp-second-") and (left / "grid.png").is_file()
    assert not (recons / "second").exists()
    assert hashes(recons / "first") == before and hashes(run) == inputs
    capsys.readouterr()
    assert cli(*args) == 0
    assert "removed 1 stale temporary" in capsys.readouterr().err
    assert temporaries(recons, run, diffusion_weights) == []
    first, second = recons / "first", recons / "second"
    assert same_arrays(first / "features.safetensors", second / "features.safetensors")
    assert hashes(first) == before
    assert sorted(p.name for p in (second / "images" / "sub-01").iterdir()) == sorted(
        p.name for p in (first / "images" / "sub-01").iterdir()
    )


def _prepare(store: Path, seed: int, log: Path) -> subprocess.Popen[bytes]:
    args = ["prepare", "synthetic-fmri", "--out", str(store), "--seed", str(seed), *sets(TINY)]
    args += NO_FEATURES if seed != 3 else []
    with log.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "mindzoo", *args],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=_env(),
        )


def test_kill_9_during_prepare_then_concurrent_reruns(
    shared_tiny_store: Path, tmp_path: Path
) -> None:
    """A prepare of a second version (seed 4, no store features: quicker) into a store with a
    finished one (seed 3), killed mid-build: the finished version, CURRENT and metrics.json stay as they were. Then three
    prepares of that store at once, held at the store's lock until all three wait there and let
    go together: seed 4 twice (one builds, reclaiming the dead one's temporary; its twin finds
    the version) and seed 3 (finds its version). All end with status 0 and no traceback; both
    versions verify; no temporary or half-built version is left."""
    store = tmp_path / "store"
    shutil.copytree(shared_tiny_store, store)
    before = hashes(store)
    args = ["prepare", "synthetic-fmri", "--out", str(store), "--seed", "4", *sets(TINY)]
    args += NO_FEATURES
    # paused once the first subject's arrays are written into the version's temporary
    kill_when_paused(tmp_path, "mindzoo.datasets.store:StoreWriter.write_subject", args)
    (left,) = temporaries(store)
    assert left.parent == store / "versions" and (left / "zarr.json").is_file()
    assert {k: v for k, v in hashes(store).items() if k in before} == before
    finished = [p.name for p in (store / "versions").iterdir() if not p.name.startswith(".")]
    assert finished == [(store / "CURRENT").read_text().strip()]

    logs = [tmp_path / f"prepare-{n}.log" for n in range(3)]
    procs: list[subprocess.Popen[bytes]] = []
    lock = FileLock(str(tmp_path / ".store.lock"))  # the lock prepare takes (store_lock)
    lock.acquire()
    try:
        procs = [_prepare(store, seed, log) for seed, log in zip((4, 4, 3), logs, strict=True)]
        deadline = time.monotonic() + 120
        while not all("waiting for another prepare" in log.read_text() for log in logs):
            assert all(proc.poll() is None for proc in procs), [p.read_text() for p in logs]
            assert time.monotonic() < deadline, [p.read_text() for p in logs]
            time.sleep(0.05)
        lock.release()
        statuses = [proc.wait(timeout=300) for proc in procs]
    finally:
        lock.release(force=True)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    outputs = [log.read_text() for log in logs]
    assert statuses == [0, 0, 0], outputs
    assert not any("Traceback" in text for text in outputs), outputs
    assert [text.count("cache hit:") for text in outputs] in ([1, 0, 1], [0, 1, 1]), outputs
    assert sum(text.count("removed 1 stale temporary") for text in outputs) == 1, outputs
    assert temporaries(store) == []
    versions = sorted((store / "versions").iterdir())
    assert len(versions) == 2
    for version in versions:
        assert cli("verify", str(version)) == 0
    assert cli("verify", str(store)) == 0
    seeds = [
        json.loads((v / "manifest.json").read_text())["config"]["simulator"]["seed"]
        for v in versions
    ]
    assert sorted(seeds) == [3, 4]
    after = hashes(store)
    assert all(after[k] == v for k, v in before.items() if k.startswith("versions/"))
