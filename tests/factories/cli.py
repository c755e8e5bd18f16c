"""In-process CLI helpers shared by the end-to-end tests: `cli`, `sets`, `error_lines`, `TINY`."""

from __future__ import annotations

import sys

from mindzoo.cli.app import main

TINY = [
    "simulator.n_subjects=2",
    "simulator.n_test_images=8",
    "simulator.n_train_images=60",
    "simulator.n_sessions=1",
    "simulator.runs_per_session=2",
    "simulator.trials_per_run=42",
    "simulator.volume_shape=[16,18,16]",
]


def cli(*args: str) -> int:
    """Run braindecode-cli in-process; return its exit status."""
    old = sys.argv
    sys.argv = ["braindecode-cli", *args]
    try:
        main()
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        sys.argv = old
    return 0


def error_lines(stderr: str) -> list[str]:
    """The error lines of stderr (progress bars aside); fails on a traceback."""
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]
