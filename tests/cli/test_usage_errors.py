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
