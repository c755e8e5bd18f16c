"""The NWB spikes pipeline: a folder of NWB files -> the spikes layout of the tensor store.

Every ``*.nwb`` under the source folder is one subject/session (read with pynwb; reading is in
:mod:`mindzoo.pipelines.spikes.nwb`). Its store subject is ``sub-<subject>`` or, when a subject
has several files, ``sub-<subject>_ses-<session>`` (subject: NWB ``subject.subject_id``, else the
file name's ``sub-`` entity; session: ``session_id``, else the ``ses-`` entity). Per file:

1. **units**: all units' spike times merged into ``spikes/times`` (float64 s, sorted; ties in
   unit order) and ``spikes/units`` (rows of the unit table: id, electrode_group, location,
   quality, obs_start/obs_end, which record the extent of ``obs_intervals``; spikes outside
   them are kept). ``pipeline.min_spikes`` drops sparse units; a unit without spikes is an
   error unless ``pipeline.drop_empty_units``;
2. **stimulus**: frames of ImageSeries/OpticalSeries (or IndexSeries into Images) in
   ``nwbfile.stimulus`` become the store's stimuli (uint8 RGB, grey replicated), deduplicated
   across files by content (sha1): a frame's id is ``<series>/<index of its first showing>``;
   ``frames/times`` and ``frames/index`` say which was on screen from when;
3. **behaviour**: every series of processing module ``behavior`` on a regular grid
   (``pipeline.behaviour`` picks some);
4. **trials**: ``nwbfile.trials`` (start/stop, one-dimensional columns kept), else back-to-back
   intervals of ``pipeline.interval`` s over the recording. ``stimulus_index`` is the store row
   of the frame on screen at the trial's start (else the first one shown in it; -1: none);
   ``condition`` comes from ``pipeline.condition_column``, else the first of condition,
   stimulus, trial_type, clip, else that frame's id, else ``all``; ``repetition`` counts a
   condition's trials. ``split``: the trials' ``pipeline.split_column`` (train/val/test; rows
   marked ``none`` dropped), else a seeded split stratified by condition (``pipeline.split``);
5. **ground truth**: scratch ``coupling`` (a simulator's weights, row i -> column j) is kept
   as ``truth/coupling`` for the kept units.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from mindzoo.datasets.arrays import SPLITS
from mindzoo.datasets.spike_store import TRIAL_COLUMNS, SpikeSubject
from mindzoo.errors import UserInputError
from mindzoo.pipelines.base import Pipeline, Written
from mindzoo.pipelines.spikes.config import CONDITION_COLUMNS, SpikesPipelineConfig
from mindzoo.pipelines.spikes.nwb import NWBSession, entity, open_nwb, read_session, session_labels


def find_nwb_files(root: Path) -> list[Path]:
    """Every ``*.nwb`` under ``root`` (hidden folders skipped), sorted; none is a user error."""
    root = Path(root)
    files = sorted(
        p
        for p in root.rglob("*.nwb")
        if not any(s.startswith(".") for s in p.relative_to(root).parts)
    )
    if not files:
        raise UserInputError(
            f"No NWB files (*.nwb) under {root}; point --source at a folder holding NWB files"
        )
    return files


def _where(root: Path, path: Path) -> str:
    return str(path.relative_to(root))


def select_files(root: Path, config: SpikesPipelineConfig) -> list[tuple[Path, str, str, str]]:
    """(file, subject, session, store name) of the chosen subjects/sessions, in file order."""
    found = []
    for path in find_nwb_files(root):
        with open_nwb(path, _where(root, path)) as nwbfile:
            subject, session = session_labels(nwbfile, path)
        found.append((path, subject, session))
    for key, position in (("subjects", 1), ("sessions", 2)):
        wanted = getattr(config, key)
        if wanted:
            wanted = [w.removeprefix("sub-").removeprefix("ses-") for w in wanted]
            have = sorted({f[position] for f in found})
            unknown = sorted(set(wanted) - set(have))
            if unknown:
                raise UserInputError(
                    f"No NWB file of {key} {unknown} under {root} (have: "
                    f"{', '.join(have) or 'none'}); fix pipeline.{key}"
                )
            found = [f for f in found if f[position] in wanted]
    per_subject: dict[str, int] = {}
    for _, subject, _ in found:
        per_subject[subject] = per_subject.get(subject, 0) + 1
    names = []
    for k, (_, subject, session) in enumerate(found):
        name = f"sub-{subject}"
        names.append(name + (f"_ses-{session or k + 1}" if per_subject[subject] > 1 else ""))
    for k, (path, _, _) in enumerate(found):  # files of one subject/session: the desc entity
        if names.count(names[k]) > 1 and entity(path, "desc"):
            names[k] += f"_desc-{entity(path, 'desc')}"
    named = []
    for k, (path, subject, session) in enumerate(found):
        name = names[k] if names.count(names[k]) == 1 else f"{names[k]}_file-{k + 1}"
        named.append((path, subject, session, name))
    return named


class StimulusTable:
    """The store's stimulus frames, deduplicated by content across files."""

    def __init__(self) -> None:
        self.rows: dict[bytes, int] = {}
        self.images: list[np.ndarray] = []
        self.ids: list[str] = []
        self.labels: list[str] = []
        self.trial_splits: list[set[str]] = []

    def add(self, series_name: str, frames: np.ndarray, source: np.ndarray) -> np.ndarray:
        """Rows (int32 [n]) of ``frames`` (uint8 [n, h, w, 3]), adding the new ones."""
        if self.images and frames.shape[1:] != self.images[0].shape:
            raise ValueError(
                f"stimulus {series_name!r} has frames of {frames.shape[1:]}, others "
                f"{self.images[0].shape}; give every stimulus series the same frame size"
            )
        rows = np.empty(len(frames), dtype=np.int32)
        taken = set(self.ids)
        for k, frame in enumerate(frames):
            key = hashlib.sha1(frame.tobytes()).digest()
            if key not in self.rows:
                self.rows[key] = len(self.images)
                self.images.append(frame)
                stable = f"{series_name}/{int(source[k])}"
                while stable in taken:
                    stable += "+"
                taken.add(stable)
                self.ids.append(stable)
                self.labels.append(series_name)
                self.trial_splits.append(set())
            rows[k] = self.rows[key]
        return rows

    def write(self, writer: Any) -> None:
        """Write the table with ``writer.write_stimuli`` (a frame's split: that of every trial
        whose start shows it when they agree, else train)."""
        splits = [next(iter(s)) if len(s) == 1 else "train" for s in self.trial_splits]
        images = np.stack(self.images) if self.images else None
        writer.write_stimuli(images, self.ids, self.labels, splits)


def _frames_of(
    data: NWBSession, table: StimulusTable
) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
    """(onsets s, stimulus rows) of every frame shown in the session, by time; or (None, None)."""
    if not data.frames:
        return None, None
    onsets = np.concatenate([s.onsets for s in data.frames])
    try:
        rows = np.concatenate([table.add(s.name, s.frames, s.source) for s in data.frames])
    except ValueError as exc:
        raise UserInputError(f"{data.where}: {exc}") from exc
    order = np.argsort(onsets, kind="stable")
    return onsets[order], rows[order]


def first_frames(
    starts: np.ndarray, stops: np.ndarray, onsets: np.ndarray | None, rows: np.ndarray | None
) -> np.ndarray:
    """Stimulus row of each trial's first frame (on screen at its start, else the first shown
    in it; a frame stays on screen until the next onset, the last one for one median frame
    time): int64 [n_trials], -1 where none."""
    result = np.full(len(starts), -1, dtype=np.int64)
    if onsets is None or not len(onsets):
        return result
    frame_time = float(np.median(np.diff(onsets))) if len(onsets) > 1 else 0.0
    showing = np.searchsorted(onsets, starts + 1e-9, "right") - 1
    for k, (start, stop, j) in enumerate(zip(starts, stops, showing, strict=True)):
        if j >= 0 and (j < len(onsets) - 1 or start <= onsets[j] + frame_time):
            result[k] = rows[j]
        elif j + 1 < len(onsets) and onsets[j + 1] < stop:
            result[k] = rows[j + 1]
    return result


def stratified_split(
    conditions: np.ndarray, fractions: tuple[float, float, float], seed: int
) -> np.ndarray:
    """train/val/test per trial: each condition's trials shuffled (seeded) and cut by
    ``fractions`` (round(n * val) val, round(n * test) test, the rest train)."""
    rng = np.random.default_rng(seed)
    splits = np.empty(len(conditions), dtype=object)
    for condition in sorted(set(conditions.tolist())):
        rows = rng.permutation(np.flatnonzero(conditions == condition))
        n_val, n_test = (int(round(len(rows) * f)) for f in fractions[1:])
        n_train = len(rows) - n_val - n_test
        splits[rows[:n_train]] = "train"
        splits[rows[n_train : n_train + n_val]] = "val"
        splits[rows[n_train + n_val :]] = "test"
    return splits


def _conditions(
    table: pd.DataFrame, first: np.ndarray, ids: list[str], config: SpikesPipelineConfig, where: str
) -> np.ndarray:
    columns = config.condition_column
    if columns is not None:
        columns = [columns] if isinstance(columns, str) else list(columns)
        missing = [c for c in columns if c not in table.columns]
        if missing:
            raise UserInputError(
                f"{where}: no trial column {missing[0]!r} (have: {', '.join(table.columns)}); "
                "fix pipeline.condition_column"
            )
    else:
        columns = [c for c in CONDITION_COLUMNS if c in table.columns][:1]
    if columns:
        values = table[columns].astype(str)
        return values.agg("-".join, axis=1).to_numpy(dtype=object)
    if (first >= 0).any():
        return np.array([ids[r] if r >= 0 else "none" for r in first], dtype=object)
    return np.full(len(table), "all", dtype=object)


def build_trials(
    name: str,
    data: NWBSession,
    extent: tuple[float, float],
    frames: tuple[np.ndarray | None, np.ndarray | None],
    table_ids: list[str],
    config: SpikesPipelineConfig,
) -> pd.DataFrame:
    """The trial table of one session (step 4 of the module docstring)."""
    if data.trials is not None:
        nwb = data.trials
        table = nwb[["start", "stop"]].copy()
        for column in nwb.columns.drop(["start", "stop"]):
            taken = column in TRIAL_COLUMNS and column != "split"
            table[f"nwb_{column}" if taken else column] = nwb[column]
    else:
        t0, t1 = extent
        n = max(1, int(np.floor((t1 - t0) / config.interval + 1e-9)))
        starts = t0 + config.interval * np.arange(n)
        table = pd.DataFrame({"start": starts, "stop": starts + config.interval})
    first = first_frames(table["start"].to_numpy(), table["stop"].to_numpy(), *frames)
    conditions = _conditions(table, first, table_ids, config, data.where)
    column = config.split_column
    if column is not None and column in table.columns:
        splits = table[column].astype(str).str.lower().to_numpy(dtype=object)
        keep = splits != "none"
        bad = sorted(set(splits[keep]) - set(SPLITS))
        if bad:
            raise UserInputError(
                f"{data.where}: trial column {column!r} has values {bad[:3]}; expected "
                "train/val/test (or none); fix the file or set pipeline.split_column=null"
            )
        table, first, conditions, splits = table[keep], first[keep], conditions[keep], splits[keep]
        table = table.drop(columns=[column])
    else:
        seed = np.random.SeedSequence([config.split_seed, *name.encode()]).generate_state(1)[0]
        splits = stratified_split(conditions, config.split, int(seed))
    table = table.reset_index(drop=True)
    table["stimulus_index"] = first
    table["condition"] = conditions
    table["session"] = data.session or "1"
    table["run"] = "1"
    table["repetition"] = table.groupby("condition").cumcount().to_numpy(np.int64)
    table["split"] = splits
    return table


def build_subject(
    name: str,
    data: NWBSession,
    frames: tuple[np.ndarray | None, np.ndarray | None],
    table: StimulusTable,
    config: SpikesPipelineConfig,
) -> SpikeSubject:
    """One session in the store's spikes layout (steps 1, 3, 4 and 5 of the module docstring)."""
    counts = np.array([len(t) for t in data.spike_times], dtype=np.int64)
    keep = np.flatnonzero(counts >= max(config.min_spikes, 1 if config.drop_empty_units else 0))
    if not len(keep):
        raise UserInputError(
            f"{data.where}: no unit has {config.min_spikes} spikes or more; lower "
            "pipeline.min_spikes"
        )
    times = np.concatenate([data.spike_times[k] for k in keep])
    units = np.repeat(np.arange(len(keep), dtype=np.int32), counts[keep])
    order = np.argsort(times, kind="stable")
    times, units = times[order], units[order]
    unit_table = pd.DataFrame(
        {
            "id": data.unit_ids[keep],
            "electrode_group": np.asarray(data.electrode_group, dtype=object)[keep],
            "location": np.asarray(data.location, dtype=object)[keep],
            "quality": np.asarray(data.quality, dtype=object)[keep],
            "obs_start": data.obs_start[keep],
            "obs_end": data.obs_end[keep],
        }
    )
    bounds = [times[:1], times[-1:], data.obs_start[keep], data.obs_end[keep]]
    if data.trials is not None:
        bounds += [data.trials["start"].to_numpy(), data.trials["stop"].to_numpy()]
    bounds = np.concatenate([np.asarray(b, dtype=float) for b in bounds])
    extent = (float(np.nanmin(bounds)), float(np.nanmax(bounds)))
    trials = build_trials(name, data, extent, frames, table.ids, config)
    behaviour = data.behaviour
    if config.behaviour:
        missing = sorted(set(config.behaviour) - set(behaviour))
        if missing:
            raise UserInputError(
                f"{data.where}: no behaviour {missing} (have: {', '.join(sorted(behaviour)) or 'none'}); "
                "fix pipeline.behaviour"
            )
        behaviour = {k: behaviour[k] for k in config.behaviour}
    truth = {}
    for key, values in data.truth.items():
        if values.shape != (len(counts), len(counts)):
            raise UserInputError(
                f"{data.where}: scratch {key!r} is {values.shape}, not [units, units] = "
                f"{(len(counts),) * 2}; fix the file"
            )
        truth[key] = values[np.ix_(keep, keep)]
    t_start = min(extent[0], float(trials["start"].min()))
    t_stop = max(extent[1], float(trials["stop"].max()))
    return SpikeSubject(
        times=times,
        units=units,
        unit_table=unit_table,
        trials=trials,
        t_start=t_start,
        t_stop=t_stop,
        frame_times=frames[0],
        frame_index=frames[1],
        behaviour=behaviour,
        truth=truth,
        attrs={"source_file": data.where, "subject": data.subject, "session": data.session},
    )


def _record_trial_splits(subject: SpikeSubject, table: StimulusTable) -> None:
    for row, split in zip(subject.trials["stimulus_index"], subject.trials["split"], strict=True):
        if row >= 0:
            table.trial_splits[row].add(str(split))


class NWBSpikesPipeline(Pipeline):
    """The NWB spikes pipeline (:mod:`mindzoo.pipelines.spikes.pipeline`), registered."""

    name = "spikes"
    version = "spikes-1"
    config_cls = SpikesPipelineConfig

    def input_files(
        self, root: Path, config: SpikesPipelineConfig, settings: dict[str, Any]
    ) -> list[Path]:
        files = find_nwb_files(root)
        if config.subjects:
            wanted = {s.removeprefix("sub-") for s in config.subjects}
            files = [f for f in files if not entity(f, "sub") or entity(f, "sub") in wanted]
        return files

    def write(
        self,
        root: Path,
        config: SpikesPipelineConfig,
        settings: dict[str, Any],
        writer: Any,
        progress: bool,
    ) -> Written:
        root = Path(root)
        chosen = select_files(root, config)
        table = StimulusTable()
        subjects: dict[str, SpikeSubject] = {}
        for path, _, _, name in tqdm(
            chosen, desc="spikes pipeline", unit="file", disable=not progress
        ):
            data = read_session(path, _where(root, path), config.drop_empty_units)
            frames = _frames_of(data, table)
            subjects[name] = build_subject(name, data, frames, table, config)
            _record_trial_splits(subjects[name], table)
        table.write(writer)
        for name, subject in subjects.items():
            writer.write_spikes(name, subject)
        return Written(sorted(subjects), len(chosen))


NWB_SPIKES = NWBSpikesPipeline()
