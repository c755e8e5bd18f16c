"""A prepare split into jobs: one per subject, one for stimuli and a few for the features.

The parent (:func:`mindzoo.pipelines.prepare.prepare_dataset`) opens the temporary version with
a :class:`~mindzoo.datasets.store.StoreWriter`; every job joins it
(:meth:`~mindzoo.datasets.store.StoreWriter.join`) and writes only its own arrays
(``subjects/<sub>/...``, ``stimuli``, or whole chunks of ``features/*``); when all have finished, the parent
hashes, writes the manifest and publishes with the same atomic rename as a serial prepare. A
failed job fails the prepare with its log path, and nothing is published. The arrays are the
bytes a serial prepare writes (the same functions compute them). On Slurm the store directory
must be on a filesystem the nodes share.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mindzoo.datasets.store import StoreWriter
from mindzoo.errors import UserInputError
from mindzoo.executors import ExecutorSettings, JobOutcome, run_jobs
from mindzoo.pipelines.base import Pipeline, Written, get_pipeline


def prepare_job(
    pipeline_name: str, root: str, settings: dict[str, Any], tmp_dir: str, unit: str
) -> list[str]:
    """One job: ``unit`` of the pipeline into the version at ``tmp_dir``; raw files read."""
    pipeline = get_pipeline(pipeline_name)
    config = pipeline.config_cls(**settings["pipeline"])
    writer = StoreWriter.join(Path(tmp_dir))
    return pipeline.write_unit(Path(root), config, settings, writer, unit, False)


def write_in_jobs(
    pipeline: Pipeline,
    root: Path,
    settings: dict[str, Any],
    writer: StoreWriter,
    executor: ExecutorSettings,
    log_dir: Path,
    progress: bool,
) -> tuple[Written, list[JobOutcome]] | None:
    """Write the version of ``writer`` in parallel jobs; None when ``pipeline`` runs only whole.

    Returns what was written and every job's outcome (wall time, peak memory, log).
    """
    config = pipeline.config_cls(**settings["pipeline"])
    units = pipeline.parallel_units(root, config, settings, writer, executor.workers)
    if units is None:
        return None
    writer.root.require_group("subjects")  # the parent group exists before jobs add to it
    items = [(pipeline.name, str(root), settings, str(writer.tmp_dir), unit) for unit in units]
    outcomes = run_jobs(prepare_job, items, units, executor, log_dir, progress, "prepare")
    failed = [o for o in outcomes if not o.ok]
    if failed:
        first = failed[0]
        raise UserInputError(
            f"prepare job {first.name} failed ({first.error}); log: {first.log}"
            + (f" (and {len(failed) - 1} more)" if len(failed) > 1 else "")
        )
    subjects = sorted(writer.root["subjects"].group_keys())
    files = set().union(*(o.value for o in outcomes))
    return Written(subjects, len(files)), outcomes


def job_records(outcomes: list[JobOutcome]) -> list[dict[str, Any]]:
    """Each job's name, wall time (s), peak RSS (MiB), attempts and Slurm id, for the manifest."""
    return [
        {
            "name": o.name,
            "wall_s": round(o.wall_s, 3),
            "peak_rss_mb": round(o.peak_rss_mb, 1),
            "attempts": o.attempts,
            **({"job_id": o.job_id} if o.job_id else {}),
        }
        for o in outcomes
    ]
