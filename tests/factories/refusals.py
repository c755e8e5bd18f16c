"""The one assertion every bad-input test makes: exit 2, exactly one ``error:`` line naming the
file or value, no traceback, and nothing written (the directory trees before == after)."""

from __future__ import annotations

from pathlib import Path

import pytest

from factories.cli import cli, error_lines


def listing(*roots: Path) -> list[tuple[str, int, int]]:
    """Every path under ``roots`` (the roots included) with, for files, size and modification
    time."""
    rows = []
    for root in roots:
        root = Path(root)
        if not root.exists() and not root.is_symlink():
            rows.append((str(root), -1, -1))
            continue
        for path in sorted([root, *root.rglob("*")]):
            info = path.lstat()
            if path.is_dir() and not path.is_symlink():  # a temporary made and removed again
                rows.append((str(path), -1, -1))  # changes a directory's size and time only
            else:
                rows.append((str(path), info.st_size, info.st_mtime_ns))
    return rows


def assert_refused(
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    named: str | Path,
    roots: tuple[Path, ...] | list[Path],
) -> str:
    """Run ``braindecode-cli *args`` in-process and assert it refused cleanly.

    ``named`` must appear in the error line (the file or value at fault); ``roots`` are the
    directories that must be unchanged afterwards. Returns the error line.
    """
    before = listing(*roots)
    capsys.readouterr()
    status = cli(*map(str, args))
    captured = capsys.readouterr()
    assert status == 2, (status, captured.err[-2000:])
    lines = error_lines(captured.err)
    assert len(lines) == 1, captured.err[-2000:]
    assert str(named) in lines[0], lines[0]
    after = listing(*roots)
    changed = sorted(set(after) ^ set(before))
    assert after == before, changed[:10]
    return lines[0]
