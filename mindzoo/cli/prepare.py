"""`braindecode-cli prepare DATASET`: raw data -> tensor store version."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from mindzoo.cli import cluster
from mindzoo.cli.console import make_console
from mindzoo.datasets import remote
from mindzoo.datasets.store import TensorStore
from mindzoo.errors import UserInputError
from mindzoo.executors import ExecutorSettings

console = make_console()


_NOT_AXIS = (
    "n_trials",
    "n_test_trials",
    "n_times",
    "n_spikes",
    "runs_without_trials",
    "line_noise",
    "events_without_value",
)


def summarise_store(store: TensorStore) -> dict:
    """Per-subject sizes of a store version, for metrics.json and the console: trials and the
    size of axis 1 under its name (``n_voxels`` for fMRI, ``n_channels`` for iEEG/EEG)."""
    sizes = {}
    for subject in store.subjects:
        attrs = store.root[f"subjects/{subject}"].attrs
        if attrs.get("layout") == "spikes":  # ragged events: units and spikes, not axis 1
            sizes[subject] = {
                "n_trials": int(attrs["n_trials"]),
                "n_units": int(attrs["n_units"]),
                "n_spikes": int(attrs["n_spikes"]),
                "n_test_trials": int((store.trials(subject)["split"] == "test").sum()),
            }
            continue
        shape = store.signals(subject).shape
        axis = store.root[f"subjects/{subject}"].attrs.get("axis", "voxels")
        sizes[subject] = {
            "n_trials": int(shape[0]),
            f"n_{axis}": int(shape[1]),
            "n_test_trials": int((store.trials(subject)["split"] == "test").sum()),
        }
        if len(shape) == 3:
            sizes[subject]["n_times"] = int(shape[2])
        attrs = store.axis(subject)[1]
        for key in ("line_noise", "events_without_value", "runs_without_trials"):
            if attrs.get(key):
                value = attrs[key]
                sizes[subject][key] = list(value) if isinstance(value, (list, tuple)) else value
    return sizes


def parse_labels(text: str | None, prefix: str) -> list[str] | None:
    """``"01,sub-02"`` -> ``["01", "02"]`` (``prefix`` such as ``sub-`` dropped); ``None`` stays."""
    if text is None:
        return None
    labels = [label.strip().removeprefix(prefix) for label in text.split(",") if label.strip()]
    if not labels:
        raise UserInputError(f"Empty list {text!r}: give labels separated by commas, e.g. 01,02")
    return labels


def run_prepare(
    dataset: str,
    out: Path | str,
    source: str | Path | None,
    seed: int | None,
    sets: list[str],
    subjects: list[str] | None = None,
    sessions: list[str] | None = None,
    executor: ExecutorSettings | None = None,
) -> TensorStore:
    """Prepare, print what happened and write `out/metrics.json`; returns the opened store.
    A URL ``out`` (``s3://bucket/store``) is prepared in a local staging store and published."""
    from mindzoo.pipelines.prepare import prepare_dataset  # torch: not for --help

    local = remote.staging_store(out) if remote.is_url(out) else Path(out)
    result = prepare_dataset(
        dataset,
        local,
        source=source,
        seed=seed,
        overrides=sets,
        subjects=subjects,
        sessions=sessions,
        executor=executor,
    )
    store = TensorStore.open(result.version_dir)
    where, cache_hit = result.version_dir, result.cache_hit
    if remote.is_url(out):  # a version already there uploads nothing
        published = remote.publish_version(result.version_dir, out)
        where, cache_hit = published.version, not published.uploaded
    what = "cache hit" if cache_hit else "prepared"
    console.print(
        f"{what}: {dataset} -> {where} ({result.seconds:.1f} s, config {result.config_hash[:12]})"
    )
    sizes = summarise_store(store)
    for subject, size in sizes.items():
        axis, count = next((k[2:], v) for k, v in size.items() if k not in _NOT_AXIS)
        times = f" x {size['n_times']} samples" if "n_times" in size else ""
        if "n_spikes" in size:
            times = f", {size['n_spikes']} spikes"
        console.print(f"  {subject}: {size['n_trials']} trials x {count} {axis}{times}")
        if size.get("line_noise"):
            console.print(f"  {subject}: line noise: {size['line_noise']}", highlight=False)
        if size.get("n_test_trials") == 0:
            console.print(
                f"  warning: {subject}: no test trials, so `evaluate` will have nothing to score; "
                "prepare more trials or set the split (pipeline.split_* / the dataset's split)",
                highlight=False,
            )
        if size.get("events_without_value"):
            console.print(
                f"  warning: {subject}: {size['events_without_value']} events.tsv row(s) with "
                "n/a as their event value or label were not epoched",
                highlight=False,
            )
        if size.get("runs_without_trials"):
            dropped = size["runs_without_trials"]
            console.print(
                f"  warning: {subject}: {len(dropped)} run(s) left out, no events row names a "
                f"stimulus: {', '.join(dropped)}",
                highlight=False,
            )
    metrics = {
        "dataset": dataset,
        "version": result.version_dir.name,
        "config_hash": result.config_hash,
        "cache_hit": cache_hit,
        "seconds": round(result.seconds, 3),
        "subjects": sizes,
    }
    (local / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if remote.is_url(out):
        remote.write_text(f"{out.rstrip('/')}/metrics.json", json.dumps(metrics, indent=2))
    return store


def register(app: typer.Typer) -> None:
    @app.command()
    def prepare(
        dataset: str = typer.Argument(..., help="Catalog name (see `braindecode-cli datasets`)."),
        source: str | None = typer.Option(
            None,
            help="Data location overriding the catalog's: a directory, a DataLad dataset, or a "
            "DataLad/RIA URL.",
        ),
        out: str = typer.Option(
            "stores/default",
            help="Store directory or fsspec URL, e.g. s3://bucket/store (`--store` later).",
        ),
        subjects: str | None = typer.Option(
            None, help="Only these subjects, comma separated (01,02); the rest is not fetched."
        ),
        sessions: str | None = typer.Option(
            None,
            help="Only these sessions, comma separated (01,02; patterns such as perceptionTest*);"
            " the rest is not fetched.",
        ),
        seed: int | None = typer.Option(None, help="Seed of a synthetic dataset's simulator."),
        sets: list[str] = typer.Option([], "--set", help="Override a setting: KEY=VALUE."),
        executor: str = cluster.EXECUTOR,
        jobs: int = cluster.JOBS,
        cpus: int | None = cluster.CPUS,
        mem: float | None = cluster.MEM,
        time: int = cluster.TIME,
        partition: str | None = cluster.PARTITION,
        max_parallel: int | None = cluster.MAX_PARALLEL,
        slurm_set: list[str] = cluster.SLURM_SET,
        retries: int = cluster.RETRIES,
    ) -> None:
        """Prepare DATASET into a tensor store (cached: same settings, no rewrite).

        With --jobs N or --executor slurm, one job per subject (same bytes as a serial run)."""
        settings = cluster.executor_settings(
            executor, jobs, cpus, 0, mem, time, partition, max_parallel, slurm_set, retries
        )
        run_prepare(
            dataset,
            out,
            source,
            seed,
            sets,
            subjects=parse_labels(subjects, "sub-"),
            sessions=parse_labels(sessions, "ses-"),
            executor=settings,
        )
