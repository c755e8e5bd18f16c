"""The BIDS layout of an ephys dataset: which recordings a config selects, their sidecars, events.

Recordings are the ``*_ieeg``/``*_eeg`` files of the chosen subjects, sessions, task and
acquisition; their sidecars (channels.tsv, electrodes.tsv, coordsystem.json, events.tsv) are
found next to them. Only file names are read to select recordings, so this works on a DataLad
clone before its content is fetched, and :func:`input_files` tells the DataLad source which
files to fetch. Events are read from events.tsv (``event_column`` values in ``event_values``;
label from ``label_column`` or the event value mapped through ``labels``; split from
``split_column``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from mindzoo.errors import UserInputError
from mindzoo.pipelines.ephys.config import EphysPipelineConfig

# Recording formats: those mne-bids reads, and NWB (read with pynwb); MEF is not supported.
EXTENSIONS = (".vhdr", ".edf", ".bdf", ".set", ".nwb")
# Files that belong to a recording besides itself (BrainVision data/markers, EEGLAB data).
_COMPANIONS = {".vhdr": (".eeg", ".vmrk"), ".set": (".fdt",)}
_SIDECARS = ("channels.tsv", "electrodes.tsv", "coordsystem.json", "events.tsv", "events.json")


# --- discovery ---------------------------------------------------------------------------------


def find_recordings(root: Path, config: EphysPipelineConfig) -> dict[str, list[Path]]:
    """The recordings of the chosen subjects/sessions/task, by subject (``sub-01``), sorted.

    Works on a DataLad clone before its content is fetched (only file names are read).
    """
    root = Path(root)
    if not (root / "dataset_description.json").exists():
        if next(root.glob("**/dataset.bipolar.default.*"), None) is not None:
            raise UserInputError(
                f"{root} is Du-IN's pickled release; mindzoo does not unpickle files (it runs "
                "code); convert it to BIDS iEEG as `braindecode-cli datasets --info du-in` says"
            )
        raise UserInputError(
            f"{root} is not a BIDS dataset (no dataset_description.json); pass its root with --source"
        )
    pattern = re.compile(
        rf"^sub-(?P<sub>[^_]+)(_ses-(?P<ses>[^_]+))?_task-(?P<task>[^_]+)"
        rf"(_acq-(?P<acq>[^_]+))?.*_{config.datatype}(?P<ext>\.[a-z]+)$"
    )
    found: dict[str, list[Path]] = {}
    subjects_seen, tasks_seen = set(), set()
    for path in sorted(root.glob(f"sub-*/**/{config.datatype}/*_{config.datatype}.*")):
        match = pattern.match(path.name)
        if match is None or match["ext"] not in EXTENSIONS:
            continue
        subjects_seen.add(match["sub"])
        tasks_seen.add(match["task"])
        if config.subjects is not None and match["sub"] not in config.subjects:
            continue
        if config.sessions is not None and match["ses"] not in config.sessions:
            continue
        if config.task is not None and match["task"] != config.task:
            continue
        if config.acquisition is not None and match["acq"] != config.acquisition:
            continue
        found.setdefault(f"sub-{match['sub']}", []).append(path)
    if not subjects_seen:
        raise UserInputError(
            f"{root}: no {config.datatype} recordings ({', '.join(EXTENSIONS)}) under "
            f"sub-*/[ses-*/]{config.datatype}/; MEF recordings are not supported"
        )
    missing = sorted(set(config.subjects or []) - subjects_seen)
    if missing:
        raise UserInputError(
            f"{root}: no subject {missing[0]!r}; available: {', '.join(sorted(subjects_seen))}"
        )
    if not found:
        raise UserInputError(
            f"{root}: no {config.datatype} recording matches task={config.task} "
            f"sessions={config.sessions} acquisition={config.acquisition}; tasks there: "
            f"{', '.join(sorted(tasks_seen))} (set pipeline.task)"
        )
    return found


def sidecar(recording: Path, suffix: str) -> Path | None:
    """The BIDS sidecar ``suffix`` (e.g. ``channels.tsv``) of a recording, inheritance aside.

    electrodes.tsv and coordsystem.json carry no task/run entities, so the nearest file in the
    folder with the recording's sub/ses entities is taken for them.
    """
    stem = recording.name.rsplit("_", 1)[0]
    exact = recording.with_name(f"{stem}_{suffix}")
    if exact.exists() or exact.is_symlink():
        return exact
    if suffix in ("electrodes.tsv", "coordsystem.json"):
        prefix = "_".join(p for p in stem.split("_") if p.startswith(("sub-", "ses-")))
        candidates = sorted(recording.parent.glob(f"{prefix}*_{suffix}"))
        if candidates:
            return candidates[0]
    return None


def input_files(root: Path, config: EphysPipelineConfig) -> list[Path]:
    """Every file the pipeline reads for ``config``: recordings, their companions and sidecars.

    Used by the DataLad source to fetch only what a prepare needs.
    """
    files = [Path(root) / "dataset_description.json"]
    for recordings in find_recordings(root, config).values():
        for recording in recordings:
            if not _may_have_events(recording, config):
                continue
            files.append(recording)
            files += [recording.with_suffix(s) for s in _COMPANIONS.get(recording.suffix, ())]
            files += [
                p for s in (*_SIDECARS, f"{config.datatype}.json") if (p := sidecar(recording, s))
            ]
    return list(dict.fromkeys(files))


def _may_have_events(recording: Path, config: EphysPipelineConfig) -> bool:
    """False only when the recording's events.tsv is readable and lacks every chosen event."""
    if config.fixed_length is not None or config.event_values is None:
        return True
    path = sidecar(recording, "events.tsv")
    if path is None or not path.exists():
        return True
    table = read_tsv(path)
    if config.event_column not in table.columns:
        return True  # the pipeline reports the missing column
    return bool(table[config.event_column].astype(str).isin(config.event_values).any())


def read_tsv(path: Path) -> pd.DataFrame:
    """A BIDS ``.tsv`` table, every value a string, ``n/a`` -> NaN."""
    return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False, dtype=str)


def coord_frame(recording: Path) -> str:
    """The coordinate system named by coordsystem.json (``unknown`` without one)."""
    path = sidecar(recording, "coordsystem.json")
    if path is None or not path.exists():
        return "unknown"
    meta = json.loads(path.read_text())
    for key in ("iEEGCoordinateSystem", "EEGCoordinateSystem"):
        if key in meta:
            return str(meta[key])
    return "unknown"


# --- events ------------------------------------------------------------------------------------


def read_events(recording: Path, config: EphysPipelineConfig) -> pd.DataFrame:
    """Events of ``recording`` to epoch on: columns onset (s), label, split (None without
    ``split_column``). Empty when none of ``event_values`` occurs in it. Rows whose event value
    (or label) is BIDS ``n/a`` are no events; their count is ``result.attrs["n_without_value"]``."""
    path = sidecar(recording, "events.tsv")
    if path is None:
        raise UserInputError(
            f"{recording}: no events.tsv; add one or epoch fixed windows with "
            "--set pipeline.fixed_length=SECONDS"
        )
    events = read_tsv(path)
    for column in ("onset", config.event_column, config.label_column, config.split_column):
        if column is not None and column not in events.columns:
            raise UserInputError(
                f"{path}: no column {column!r} (columns: {', '.join(events.columns)}); "
                "set pipeline.event_column/label_column/split_column"
            )
    missing = events[config.event_column].isna()
    if config.label_column is not None:
        missing |= events[config.label_column].isna()
    n_without_value = int(missing.sum())
    events = events[~missing]
    values = events[config.event_column].astype(str)
    if config.event_values is not None:
        events = events[values.isin(config.event_values)]
        values = values[events.index]
    raw_labels = events[config.label_column].astype(str) if config.label_column else values
    onsets = pd.to_numeric(events["onset"], errors="coerce").to_numpy(float)
    if np.isnan(onsets).any():
        raise UserInputError(f"{path}: onset column has non-numeric values; fix the events file")
    table = pd.DataFrame(
        {
            "onset": onsets,
            "label": [config.labels.get(v, v) for v in raw_labels],
            "split": events[config.split_column].to_numpy() if config.split_column else None,
        }
    )
    table.attrs["n_without_value"] = n_without_value
    return table


def event_values_seen(recordings: list[Path], config: EphysPipelineConfig) -> list[str]:
    """The values of ``event_column`` in the recordings' events files (for error messages)."""
    seen: set[str] = set()
    for recording in recordings:
        path = sidecar(recording, "events.tsv")
        if path is not None and path.exists():
            table = read_tsv(path)
            if config.event_column in table.columns:
                seen |= set(table[config.event_column].astype(str))
    return sorted(seen)
