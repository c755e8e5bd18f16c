"""A run's events: the BIDS events table and the rows the pipeline models as trials.

A trial is an events row that names a stimulus in ``stimulus_column`` (with ``trial_types``: one
whose ``trial_type_column`` is among them); it keeps its raw stimulus key, label and split text,
the split coming from the session label instead when ``session_splits`` is set.
"""

from __future__ import annotations

import math
from fnmatch import fnmatchcase

import pandas as pd

from mindzoo.errors import UserInputError
from mindzoo.pipelines.fmri.bids import BoldRun, entity_prefix
from mindzoo.pipelines.fmri.config import FMRIPipelineConfig
from mindzoo.pipelines.fmri.sources import SourceFiles


def read_events(
    run: BoldRun, required: list[str], fix: str = "add them to the events file"
) -> pd.DataFrame:
    """The run's events table with numeric ``onset``/``duration`` (s) and ``n/a`` as missing.

    Every other column is read as text, so stimulus ids such as ``"0001"`` keep their zeros.
    ``fix`` ends the message when a ``required`` column is missing.
    """
    if run.events_path is None:
        expected = entity_prefix(run.entities) + "_events.tsv"
        raise UserInputError(
            f"No events file for {run.name} (expected {expected} in the raw dataset's func "
            "folder or inherited from above it); add the events"
        )
    path = run.events_path
    try:
        events = pd.read_csv(
            path, sep="\t", dtype=str, na_values=["n/a", ""], keep_default_na=False
        )
    except pd.errors.EmptyDataError:
        raise UserInputError(
            f"{path} is empty (no header row); it needs at least the columns onset and duration"
        ) from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise UserInputError(
            f"{path} is not a tab-separated events table ({exc}); fix the events file"
        ) from None
    missing = [column for column in required if column not in events.columns]
    if missing:
        raise UserInputError(
            f"{path.name} lacks column(s) {', '.join(missing)} (has: "
            f"{', '.join(events.columns)}); {fix}"
        )
    for column in ("onset", "duration"):
        values = pd.to_numeric(events[column], errors="coerce")
        bad = values.isna() | ~values.map(math.isfinite)
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            raise UserInputError(
                f"{path.name} row {row + 1}: {column} {events[column].iloc[row]!r} is not a "
                "number of seconds; fix the events file"
            )
        events[column] = values.astype(float)
    negative = events["duration"] < 0
    if negative.any():
        row = int(negative.to_numpy().nonzero()[0][0])
        raise UserInputError(
            f"{path.name} row {row + 1}: duration {events['duration'].iloc[row]:g} s is "
            "negative; BIDS durations are 0 or more seconds: fix the events file"
        )
    return events


def run_trials(
    run: BoldRun, config: FMRIPipelineConfig, sources: SourceFiles | None = None
) -> pd.DataFrame:
    """The events rows of ``run`` modelled as trials, with their raw stimulus/label/split."""
    required = ["onset", "duration", config.stimulus_column]
    if config.trial_types is not None:
        required.append(config.trial_type_column)
    events = read_events(
        run,
        required,
        fix="add them to the events file, or change stimulus_column/trial_types to match it",
    )
    if sources is not None:
        sources.add(run.events_path)
    keys = events[config.stimulus_column].str.strip()
    rows = keys.notna() & (keys != "")
    if config.trial_types is not None:
        rows &= events[config.trial_type_column].isin(config.trial_types)
    selected = events[rows]

    def optional(column: str | None) -> pd.Series:
        if column is None or column not in selected.columns:
            return pd.Series(pd.NA, index=selected.index, dtype=object)
        return selected[column].str.strip()

    split = optional(config.split_column)
    if config.session_splits is not None:
        split = pd.Series(_session_split(run, config.session_splits), index=selected.index)
    return pd.DataFrame(
        {
            "stimulus_key": keys[rows],
            "onset": selected["onset"],
            "duration": selected["duration"],
            "label": optional(config.label_column),
            "split": split,
            "events_file": run.events_path.name,
        }
    ).reset_index(drop=True)


def _session_split(run: BoldRun, session_splits: dict[str, str]) -> str:
    """The split of every trial of ``run`` from its session label: the ``session_splits`` entry
    named exactly, else the one split of the glob patterns it matches (order-independent, as
    settings pass through YAML, JSON and hashing)."""
    if run.session is None:
        raise UserInputError(
            f"session_splits needs sessions but {run.name} has no ses- entity; "
            "set session_splits=null and give the split another way"
        )
    if run.session in session_splits:  # an exact label beats any pattern
        return session_splits[run.session]
    splits = {split for p, split in session_splits.items() if fnmatchcase(run.session, p)}
    if len(splits) == 1:
        return splits.pop()
    if splits:
        raise UserInputError(
            f"Session ses-{run.session} matches session_splits patterns of several splits "
            f"({', '.join(sorted(splits))}); name the session exactly to choose one"
        )
    raise UserInputError(
        f"Session ses-{run.session} ({run.name}) matches no session_splits pattern "
        f"({', '.join(session_splits)}); add a pattern for it or leave it out with sessions"
    )
