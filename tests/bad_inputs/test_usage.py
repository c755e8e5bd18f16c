"""Usage mistakes on every command: missing or unknown options and commands, values of the wrong
type, unknown `--set` keys, models, datasets, subjects, backends and executor settings. Each is
refused with exit 2, one ``error:`` line naming the value, and nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
from factories.cli import TINY, sets
from factories.refusals import assert_refused


@pytest.fixture(scope="module")
def ridge_run(shared_tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from factories.cli import cli

    run = tmp_path_factory.mktemp("usage") / "ridge"
    args = ["train", "ridge", "--store", str(shared_tiny_store), "--out", str(run)]
    assert cli(*args, "--subjects", "01") == 0
    return run


def _cases(store: Path, run: Path, out: Path) -> dict[str, tuple[list[str], str]]:
    """Case name -> (arguments, the text the error line must name)."""
    prep = ["prepare", "synthetic-fmri", "--out", str(out)]
    train = ["train", "ridge", "--store", str(store), "--out", str(out)]
    brain = ["train", "brain-it", "--store", str(store), "--out", str(out)]
    adapt = ["adapt", str(run), "--store", str(store), "--out", str(out)]
    recon = ["reconstruct", str(run), "--store", str(store), "--out", str(out)]
    quick = ["quickstart", "--out", str(out)]
    return {
        "prepare without a dataset": (["prepare"], "Missing argument 'dataset'"),
        "unknown command": (["nosuchcommand"], "No such command 'nosuchcommand'"),
        "prepare --seed abc": ([*prep, "--seed", "abc"], "'--seed'"),
        "prepare unknown option": ([*prep, "--bogus", "1"], "--bogus"),
        "prepare unknown dataset": (["prepare", "nosuch", "--out", str(out)], "'nosuch'"),
        "prepare unknown --set key": ([*prep, "--set", "simulator.bogus=1"], "simulator.bogus"),
        "prepare --set value of the wrong type": (
            [*prep, "--set", "simulator.n_subjects=abc"],
            "n_subjects",
        ),
        "prepare --set without =": (
            [*prep, "--set", "simulator.n_subjects"],
            "simulator.n_subjects",
        ),
        "prepare unknown subject": ([*prep, "--subjects", "09", *sets(TINY)], "sub-09"),
        "prepare empty subject list": ([*prep, "--subjects", ","], "','"),
        "prepare unknown executor": ([*prep, "--executor", "nosuch"], "'nosuch'"),
        "prepare --jobs 0": ([*prep, "--jobs", "0"], "--jobs"),
        "prepare --slurm-set without =": (
            [*prep, "--executor", "slurm", "--slurm-set", "qos"],
            "'qos'",
        ),
        "train without a model": (["train"], "Missing argument 'model'"),
        "train without --store": (["train", "ridge"], "Missing option '--store'"),
        "train unknown model": (["train", "nosuch", "--store", str(store)], "'nosuch'"),
        "train unknown subject": ([*train, "--subjects", "07"], "sub-07"),
        "train unknown --set key": ([*train, "--set", "model.bogus=1"], "model.bogus"),
        "train --set epochs=many": ([*brain, "--set", "trainer.epochs=many"], "epochs"),
        "train --set trainer.device=cuda": ([*brain, "--set", "trainer.device=cuda"], "device"),
        "train option of another command": ([*train, "--seed", "1"], "--seed"),
        "train missing store": (
            ["train", "ridge", "--store", str(out / "nostore")],
            str(out / "nostore"),
        ),
        "train --resume without --out": (
            ["train", "brain-it", "--store", str(store), "--resume"],
            "--resume",
        ),
        "train --resume of ridge": ([*train, "--resume"], "ridge"),
        "adapt without --subject": ([*adapt, "--n-trials", "5"], "'--subject'"),
        "adapt --n-trials 1": ([*adapt, "--subject", "02", "--n-trials", "1"], "--n-trials 1"),
        "adapt --n-trials and --fraction": (
            [*adapt, "--subject", "02", "--n-trials", "5", "--fraction", "0.5"],
            "--fraction",
        ),
        "adapt --fraction 2": ([*adapt, "--subject", "02", "--fraction", "2"], "2.0"),
        "adapt of ridge": ([*adapt, "--subject", "02", "--n-trials", "5"], "ridge"),
        "adapt missing run": (
            [
                "adapt",
                str(out / "norun"),
                "--store",
                str(store),
                "--subject",
                "02",
                "--n-trials",
                "5",
            ],
            str(out / "norun"),
        ),
        "reconstruct missing run": (
            ["reconstruct", str(out / "norun"), "--store", str(store), "--out", str(out)],
            str(out / "norun"),
        ),
        "reconstruct unknown backend": ([*recon, "--backend", "nosuch"], "'nosuch'"),
        "reconstruct --steps 0": ([*recon, "--steps", "0"], "--steps"),
        "reconstruct --steps abc": ([*recon, "--steps", "abc"], "'--steps'"),
        "reconstruct unknown subject": ([*recon, "--subjects", "09"], "sub-09"),
        "reconstruct --metric-weights without =": (
            [*recon, "--metric-weights", "alexnet"],
            "'alexnet'",
        ),
        "reconstruct unknown --device": ([*recon, "--device", "tpu9"], "tpu9"),
        "evaluate without a run": (["evaluate"], "RUN_DIR"),
        "evaluate missing run": (["evaluate", str(out / "norun")], str(out / "norun")),
        "evaluate --jobs two": (["evaluate", str(run), "--jobs", "two"], "'--jobs'"),
        "evaluate --cpus -1": (["evaluate", str(run), "--cpus", "-1"], "--cpus"),
        "evaluate a run and a grid": (["evaluate", str(run), "--grid", "x.yaml"], "--grid"),
        "evaluate missing grid": (["evaluate", "--grid", str(out / "g.yaml")], str(out / "g.yaml")),
        "evaluate --time -5": (["evaluate", "--grid", "x.yaml", "--time", "-5"], "--time"),
        "verify without a store": (["verify"], "Missing argument"),
        "verify missing store": (["verify", str(out / "nostore")], str(out / "nostore")),
        "datasets --info unknown": (["datasets", "--info", "nosuch"], "'nosuch'"),
        "models with an argument": (["models", "extra"], "extra"),
        "quickstart unknown --set key": ([*quick, "--set", "simulator.bogus=1"], "simulator.bogus"),
        "quickstart --steps 0": ([*quick, "--steps", "0"], "'--steps'"),
        "quickstart unknown --model-set key": (
            [*quick, "--model-set", "trainer.bogus=1"],
            "trainer.bogus",
        ),
    }


CASES = [
    "prepare without a dataset",
    "unknown command",
    "prepare --seed abc",
    "prepare unknown option",
    "prepare unknown dataset",
    "prepare unknown --set key",
    "prepare --set value of the wrong type",
    "prepare --set without =",
    "prepare unknown subject",
    "prepare empty subject list",
    "prepare unknown executor",
    "prepare --jobs 0",
    "prepare --slurm-set without =",
    "train without a model",
    "train without --store",
    "train unknown model",
    "train unknown subject",
    "train unknown --set key",
    "train --set epochs=many",
    "train --set trainer.device=cuda",
    "train option of another command",
    "train missing store",
    "train --resume without --out",
    "train --resume of ridge",
    "adapt without --subject",
    "adapt --n-trials 1",
    "adapt --n-trials and --fraction",
    "adapt --fraction 2",
    "adapt of ridge",
    "adapt missing run",
    "reconstruct missing run",
    "reconstruct unknown backend",
    "reconstruct --steps 0",
    "reconstruct --steps abc",
    "reconstruct unknown subject",
    "reconstruct --metric-weights without =",
    "reconstruct unknown --device",
    "evaluate without a run",
    "evaluate missing run",
    "evaluate --jobs two",
    "evaluate --cpus -1",
    "evaluate a run and a grid",
    "evaluate missing grid",
    "evaluate --time -5",
    "verify without a store",
    "verify missing store",
    "datasets --info unknown",
    "models with an argument",
    "quickstart unknown --set key",
    "quickstart --steps 0",
    "quickstart unknown --model-set key",
]


@pytest.mark.parametrize("case", CASES)
def test_usage_mistakes_are_refused(
    case: str,
    shared_tiny_store: Path,
    ridge_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    args, named = _cases(shared_tiny_store, ridge_run, out)[case]
    # out, not its parent: a prepare that took the store's lock leaves the hidden lock file
    # beside out (a lock file must outlive its holder; see pipelines.prepare.store_lock)
    assert_refused(capsys, args, named, (shared_tiny_store.parent, ridge_run.parent, out))


def test_the_cases_are_all_run(shared_tiny_store: Path, ridge_run: Path, tmp_path: Path) -> None:
    assert sorted(_cases(shared_tiny_store, ridge_run, tmp_path)) == sorted(CASES)
