"""Usage mistakes (missing or unknown options, bad values, unknown commands) are one line on
stderr and exit 2, never a traceback; `--version` prints the version."""

from __future__ import annotations

import pytest
from factories.cli import cli, error_lines

from mindzoo import __version__


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train"], "Missing argument 'model'. (see `braindecode-cli train --help`)"),
        (["train", "ridge"], "Missing option '--store'"),
        (["prepare", "synthetic-fmri", "--seed", "abc"], "Invalid value for '--seed'"),
        (["prepare", "synthetic-fmri", "--bogus", "1"], "No such option: --bogus"),
        (["nosuchcommand"], "No such command 'nosuchcommand'. (see `braindecode-cli --help`)"),
        (["evaluate", "--jobs", "two"], "Invalid value for '--jobs'"),
        (["verify"], "Missing argument"),
    ],
)
def test_usage_errors_are_one_line_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(*args) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and message in lines[0], lines


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("--version") == 0
    assert capsys.readouterr().out.strip() == f"mindzoo {__version__}"


def test_help_does_not_import_torch() -> None:
    """`--help` and the command table load without torch (it takes seconds to import)."""
    import subprocess
    import sys

    code = "import sys, mindzoo.cli.app; print(sorted(m for m in ('torch', 'zarr') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "torch" not in done.stdout, done.stdout
    helped = subprocess.run(
        [sys.executable, "-m", "mindzoo", "train", "--help"], capture_output=True, text=True
    )
    assert helped.returncode == 0 and "--executor" in helped.stdout


def test_subject_lists_drop_spaces() -> None:
    from mindzoo.cli.train import split_subjects

    assert split_subjects(["01, 02", " sub-03 ,"]) == ["01", "02", "sub-03"]


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_reconstruct_refuses_a_non_finite_guidance(
    value: str, shared_tiny_store, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "ridge"
    store = str(shared_tiny_store)
    assert cli("train", "ridge", "--store", store, "--out", str(run), "--subjects", "01") == 0
    out = tmp_path / "recon"
    args = ["reconstruct", str(run), "--store", store, "--out", str(out), "--guidance", value]
    assert cli(*args) == 2
    lines = error_lines(capsys.readouterr().err)
    assert lines == [f"error: --guidance and --strength must be finite numbers (got {value}, 0.75)"]
    assert not out.exists()
