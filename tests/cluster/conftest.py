"""The session's Slurm cluster: `slurm_cluster` starts one (tests/factories/slurm.py) as root."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from factories.slurm import SlurmCluster, slurm_available, start_cluster


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A running single-node cluster for the session, its client settings in ``os.environ``.

    Sets ``SLURM_CONF`` and puts the cluster's ``sacct`` first on ``PATH`` (what submitit and
    plain ``sbatch``/``squeue``/``scancel`` calls need), restores both afterwards and stops the
    daemons, pass or fail. Skips where slurm-wlm/munge are missing or not running as root.
    """
    reason = slurm_available()
    if reason:
        pytest.skip(reason)
    cluster = start_cluster(tmp_path_factory.mktemp("slurm"))
    saved = {key: os.environ.get(key) for key in ("SLURM_CONF", "PATH")}
    try:
        os.environ.update({key: cluster.env[key] for key in saved})
        yield cluster
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        cluster.stop()
