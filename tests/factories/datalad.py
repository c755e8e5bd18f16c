"""Turn a BIDS folder into a local DataLad dataset laid out as OpenNeuro's mirrors are.

NIfTI files and stimulus images are annexed (only a link to their content is in git), while
JSON sidecars and TSV tables are committed to git, as OpenNeuro's ``.gitattributes`` say
(``*.tsv annex.largefiles=nothing``, ``*.json annex.largefiles=nothing``). A clone of it
therefore has every sidecar and events file but none of the bold data until it is fetched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from pathlib import Path
from unittest import mock

# OpenNeuro's rules, plus "annex everything else" (its default is by size).
GITATTRIBUTES = """\
* annex.backend=MD5E
* annex.largefiles=anything
**/.git* annex.largefiles=nothing
*.tsv annex.largefiles=nothing
*.json annex.largefiles=nothing
README annex.largefiles=nothing
"""
_IDENTITY = {
    "GIT_AUTHOR_NAME": "mindzoo tests",
    "GIT_AUTHOR_EMAIL": "tests@mindzoo.invalid",
    "GIT_COMMITTER_NAME": "mindzoo tests",
    "GIT_COMMITTER_EMAIL": "tests@mindzoo.invalid",
}


def git_identity() -> contextlib.AbstractContextManager:
    """A git identity for the test's commits, whatever the machine has configured."""
    return mock.patch.dict(os.environ, _IDENTITY)


def make_datalad_dataset(root: Path) -> str:
    """Make the BIDS folder ``root`` a DataLad dataset and commit it; returns the commit."""
    import datalad.api as dl

    logging.getLogger("datalad").setLevel(logging.WARNING)
    with git_identity():
        dataset = dl.create(path=str(root), force=True, result_renderer="disabled")
        (root / ".gitattributes").write_text(GITATTRIBUTES)
        dataset.save(message="BIDS dataset", result_renderer="disabled")
    return head_commit(root)


def save(root: Path, message: str) -> str:
    """Commit every change under ``root`` (``datalad save``); returns the new commit."""
    import datalad.api as dl

    with git_identity():
        dl.Dataset(str(root)).save(message=message, result_renderer="disabled")
    return head_commit(root)


def drop_content(repo: Path, relative: str | Path) -> None:
    """Remove a file's annexed content from ``repo`` even if no other copy exists."""
    with git_identity():  # git-annex records the drop in a commit
        subprocess.run(
            ["git", "-C", str(repo), "annex", "drop", "--force", str(relative)],
            check=True,
            capture_output=True,
        )


def head_commit(repo: Path) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()


def has_content(path: Path) -> bool:
    """Whether an annexed file's content is on disk (its link resolves)."""
    return os.path.lexists(path) and path.exists()
