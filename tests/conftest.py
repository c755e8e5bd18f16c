"""Session-wide fixtures: the tiny synthetic-fmri store that modules only read."""

from __future__ import annotations

from pathlib import Path

import pytest
from factories.cli import TINY, cli, sets


@pytest.fixture(scope="session")
def shared_tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`prepare synthetic-fmri --seed 3` with the TINY settings, prepared once per session.

    Read only: a test that prepares into it again, writes into it (e.g. the diffusion cache
    under ``STORE/cache``) or corrupts it must prepare its own module-scoped store instead.
    Write runs elsewhere (not next to it), so modules sharing it cannot collide.
    """
    out = tmp_path_factory.mktemp("shared") / "store"
    assert cli("prepare", "synthetic-fmri", "--out", str(out), "--seed", "3", *sets(TINY)) == 0
    return out
