"""Reading one NWB file for the spikes pipeline: units, stimulus frames, behaviour, trials.

Everything comes back in seconds on the file's session clock, with NWB's own conventions
honoured: a TimeSeries' values are ``data * conversion + offset``; its sample times are its
``timestamps`` or ``starting_time + k / rate``. A malformed file (no Units table, spike times out
of order or negative, a unit without spikes, an unreadable file) is a one-line
:class:`~mindzoo.errors.UserInputError` naming the file and the fix.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mindzoo.datasets.spike_store import Behaviour
from mindzoo.errors import UserInputError

BEHAVIOUR_MODULES = ("behavior", "behaviour")


@dataclass
class FrameSeries:
    """One stimulus presentation series: the frames shown and when."""

    name: str
    frames: np.ndarray  # uint8 [n_shown, h, w, 3]
    onsets: np.ndarray  # float64 [n_shown] s
    source: np.ndarray  # int64 [n_shown]: index of each frame in its series (for stable ids)


@dataclass
class NWBSession:
    """What the spikes pipeline reads from one NWB file (one subject/session)."""

    where: str  # the file, as named in messages
    subject: str
    session: str
    unit_ids: np.ndarray  # int64 [U]
    spike_times: list[np.ndarray]  # per unit, float64 s, sorted
    electrode_group: list[str]
    location: list[str]
    quality: list[str]
    obs_start: np.ndarray  # float64 [U], NaN without obs_intervals
    obs_end: np.ndarray
    frames: list[FrameSeries] = field(default_factory=list)
    behaviour: dict[str, Behaviour] = field(default_factory=dict)
    trials: pd.DataFrame | None = None  # start, stop and the 1-D NWB columns
    truth: dict[str, np.ndarray] = field(default_factory=dict)


def entity(path: Path, key: str) -> str:
    """The ``key-<label>`` entity of a BIDS-like file name ("" if absent)."""
    match = re.search(rf"(?:^|_){key}-([A-Za-z0-9]+)", path.name)
    return match[1] if match else ""


def snake_case(name: str) -> str:
    """``HandVel`` / ``hand vel`` / ``hand-vel`` -> ``hand_vel``."""
    name = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name)
    return re.sub(r"[^0-9a-zA-Z]+", "_", name).strip("_").lower()


def _label(value: Any) -> str:
    return re.sub(r"[^0-9A-Za-z]", "", str(value))


@contextmanager
def open_nwb(path: Path, where: str) -> Iterator[Any]:
    """The NWBFile of ``path`` (lazy), open for the ``with`` block; unreadable -> user error."""
    from pynwb import NWBHDF5IO

    try:
        io = NWBHDF5IO(str(path), "r", load_namespaces=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            nwbfile = io.read()
    except Exception as exc:  # h5py/hdmf raise many kinds for a broken file
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise UserInputError(
            f"{where}: cannot be read as an NWB file ({type(exc).__name__}: {reason}); "
            "check that it is a complete NWB 2 HDF5 file (download it again)"
        ) from exc
    try:
        yield nwbfile
    finally:
        io.close()


def session_labels(nwbfile: Any, path: Path) -> tuple[str, str]:
    """(subject, session) labels: NWB ``subject.subject_id``/``session_id``, else the file
    name's ``sub-``/``ses-`` entities, else the file stem and ""."""
    subject = ""
    if nwbfile.subject is not None and nwbfile.subject.subject_id:
        subject = _label(nwbfile.subject.subject_id)
    subject = subject or entity(path, "sub") or _label(path.stem)
    session = _label(nwbfile.session_id or "") or entity(path, "ses")
    return subject, session


def _strings(values: Any) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def read_units(nwbfile: Any, where: str, drop_empty: bool) -> dict[str, Any]:
    """The Units table: ids, spike times per unit, group, location, quality, obs extent."""
    units = nwbfile.units
    if units is None or "spike_times" not in units.colnames:
        raise UserInputError(
            f"{where}: no Units table with spike_times; write the sorted units into "
            "nwbfile.units (add_unit(spike_times=...)) or remove the file from the folder"
        )
    ids = np.asarray(units.id.data[:], dtype=np.int64)
    flat = np.asarray(units.spike_times.data[:], dtype=np.float64)
    ends = np.asarray(units.spike_times_index.data[:], dtype=np.int64)
    starts = np.concatenate([[0], ends[:-1]])
    times = [flat[a:b] for a, b in zip(starts, ends, strict=True)]
    for uid, t in zip(ids, times, strict=True):
        if len(t) and t.min() < 0:
            raise UserInputError(
                f"{where}: unit {uid} has negative spike times (first {t.min():.6g} s); spike "
                "times must be seconds from session_start_time, fix the file's clock"
            )
        if len(t) > 1 and np.any(np.diff(t) < 0):
            raise UserInputError(
                f"{where}: spike times of unit {uid} are out of order; NWB requires each "
                "unit's spike_times sorted, sort them when writing the file"
            )
        if not len(t) and not drop_empty:
            raise UserInputError(
                f"{where}: unit {uid} has no spikes; remove it from the file or set "
                "--set pipeline.drop_empty_units=true to drop such units"
            )
    n = len(ids)
    groups, locations = [""] * n, [""] * n
    if "electrode_group" in units.colnames:
        for i in range(n):
            group = units["electrode_group"][i]
            groups[i], locations[i] = str(group.name), str(group.location or "")
    if "electrodes" in units.colnames:
        for i in range(n):
            rows = units["electrodes"][i]
            if not locations[i] and "location" in rows and len(rows):
                locations[i] = str(rows["location"].iloc[0])
            if not groups[i] and "group_name" in rows and len(rows):
                groups[i] = str(rows["group_name"].iloc[0])
    quality = _strings(units["quality"].data[:]) if "quality" in units.colnames else ["unknown"] * n
    obs_start, obs_end = np.full(n, np.nan), np.full(n, np.nan)
    if "obs_intervals" in units.colnames:
        for i in range(n):
            intervals = np.asarray(units["obs_intervals"][i], dtype=float).reshape(-1, 2)
            if len(intervals):
                obs_start[i], obs_end[i] = intervals.min(), intervals.max()
    return {
        "unit_ids": ids,
        "spike_times": times,
        "electrode_group": groups,
        "location": locations,
        "quality": quality,
        "obs_start": obs_start,
        "obs_end": obs_end,
    }


def sample_times(series: Any, n: int) -> np.ndarray:
    """Times (s) of the ``n`` samples of a TimeSeries: its timestamps, else starting_time + k/rate."""
    if series.timestamps is not None:
        return np.asarray(series.timestamps[:n], dtype=np.float64)
    start = float(series.starting_time or 0.0)
    return start + np.arange(n) / float(series.rate)


def to_rgb(frames: np.ndarray) -> np.ndarray:
    """Frames [n, h, w] (grey), [n, h, w, 3] or [n, h, w, 4] -> uint8 [n, h, w, 3] (floats in
    [0, 1] are scaled by 255, other values clipped to 0..255)."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = np.repeat(frames[..., None], 3, axis=-1)
    if frames.ndim != 4 or frames.shape[-1] not in (3, 4):
        raise ValueError(f"frames of shape {frames.shape}; expected [n, h, w] or [n, h, w, 3]")
    frames = frames[..., :3]
    if frames.dtype == np.uint8:
        return np.ascontiguousarray(frames)
    if np.issubdtype(frames.dtype, np.floating) and np.nanmax(frames, initial=0) <= 1.0:
        frames = frames * 255.0
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


def read_frames(nwbfile: Any, where: str) -> list[FrameSeries]:
    """Image presentations in ``nwbfile.stimulus``: ImageSeries/OpticalSeries with frames in
    the file, and IndexSeries into an Images container or an ImageSeries. Other stimulus
    objects (TimeIntervals, plain TimeSeries, external-file series) carry no frames."""
    from pynwb.image import ImageSeries, IndexSeries

    found = []
    for name, series in sorted(nwbfile.stimulus.items()):
        try:
            if isinstance(series, IndexSeries):
                index = np.asarray(series.data[:], dtype=np.int64)
                if series.indexed_images is not None:
                    images = series.indexed_images
                    order = (
                        list(images.order_of_images.data)
                        if images.order_of_images is not None
                        else list(images.images.values())
                    )
                    library = to_rgb(np.stack([np.asarray(im.data[:]) for im in order]))
                    source_name = images.name
                else:
                    library = to_rgb(series.indexed_timeseries.data[:])
                    source_name = series.indexed_timeseries.name
                frames = library[index]
                found.append(
                    FrameSeries(source_name, frames, sample_times(series, len(index)), index)
                )
            elif isinstance(series, ImageSeries) and series.data is not None:
                data = np.asarray(series.data[:])
                if data.size == 0:
                    continue
                frames = to_rgb(data)
                found.append(
                    FrameSeries(
                        name, frames, sample_times(series, len(frames)), np.arange(len(frames))
                    )
                )
        except (ValueError, IndexError) as exc:
            raise UserInputError(
                f"{where}: stimulus {name!r} is not a series of frames ({exc}); write "
                "frames as [n, h, w] or [n, h, w, 3] with a time for each"
            ) from exc
    return found


def _regular(series: Any, values: np.ndarray, where: str) -> Behaviour:
    """A behaviour TimeSeries on a regular grid (irregular timestamps: linear interpolation
    onto a grid at their median rate)."""
    unit = str(series.unit or "")
    description = str(series.description or "")
    if series.timestamps is None:
        start = float(series.starting_time or 0.0)
        return Behaviour(values.astype(np.float32), float(series.rate), start, unit, description)
    times = np.asarray(series.timestamps[:], dtype=np.float64)[: len(values)]
    if len(times) < 2:
        raise UserInputError(f"{where}: behaviour {series.name!r} has fewer than 2 samples")
    order = np.argsort(times, kind="stable")
    times, values = times[order], values[order]
    steps = np.diff(times)
    step = float(np.median(steps))
    if step <= 0:
        raise UserInputError(
            f"{where}: timestamps of behaviour {series.name!r} do not increase; fix the file"
        )
    if np.all(np.abs(steps - step) <= 1e-3 * step):
        return Behaviour(values.astype(np.float32), 1.0 / step, float(times[0]), unit, description)
    grid = times[0] + step * np.arange(int(np.floor((times[-1] - times[0]) / step)) + 1)
    flat = values.reshape(len(values), -1)
    resampled = np.stack([np.interp(grid, times, flat[:, d]) for d in range(flat.shape[1])], 1)
    resampled = resampled.reshape(len(grid), *values.shape[1:])
    return Behaviour(resampled.astype(np.float32), 1.0 / step, float(grid[0]), unit, description)


def read_behaviour(nwbfile: Any, where: str) -> dict[str, Behaviour]:
    """Every TimeSeries of processing module ``behavior`` (directly or inside containers such
    as BehavioralTimeSeries, Position, EyeTracking), keyed by its snake_case name."""
    from pynwb import TimeSeries

    module = next(
        (m for name, m in nwbfile.processing.items() if name.lower() in BEHAVIOUR_MODULES), None
    )
    if module is None:
        return {}
    series: list[tuple[str, Any]] = []
    for name, item in sorted(module.data_interfaces.items()):
        if isinstance(item, TimeSeries):
            series.append((name, item))
            continue
        for attribute in ("time_series", "spatial_series"):
            inner = getattr(item, attribute, None)
            if isinstance(inner, dict):
                series.extend(sorted(inner.items()))
    found: dict[str, Behaviour] = {}
    for name, item in series:
        if item.data is None:
            continue
        values = np.asarray(item.data[:], dtype=np.float64)
        values = values * float(item.conversion) + float(getattr(item, "offset", 0.0) or 0.0)
        key = snake_case(name)
        if key in found:
            key = snake_case(f"{item.parent.name}_{name}")
        found[key] = _regular(item, values, where)
    return found


def read_trials(nwbfile: Any) -> pd.DataFrame | None:
    """The trials table: start/stop (s) and the other one-dimensional columns (ragged,
    region and time-series-reference columns are dropped); None without trials."""
    from hdmf.common import VectorData

    trials = nwbfile.trials
    if trials is None or len(trials) == 0:
        return None
    table = {
        "start": np.asarray(trials["start_time"].data[:], dtype=np.float64),
        "stop": np.asarray(trials["stop_time"].data[:], dtype=np.float64),
    }
    for name in trials.colnames:
        column = trials[name]
        if name in ("start_time", "stop_time") or type(column) is not VectorData:
            continue
        values = np.asarray(column.data[:])
        if values.ndim != 1 or values.dtype.kind == "V":
            continue
        if values.dtype.kind in "OS":
            values = np.asarray(_strings(values), dtype=object)
        table[name] = values
    return pd.DataFrame(table)


def read_session(path: Path, where: str, drop_empty: bool) -> NWBSession:
    """Read everything the spikes pipeline uses from one NWB file (see the module docstring)."""
    with open_nwb(path, where) as nwbfile:
        subject, session = session_labels(nwbfile, path)
        units = read_units(nwbfile, where, drop_empty)
        truth = {}
        if "coupling" in nwbfile.scratch:
            truth["coupling"] = np.asarray(nwbfile.scratch["coupling"].data[:], dtype=np.float32)
        return NWBSession(
            where=where,
            subject=subject,
            session=session,
            frames=read_frames(nwbfile, where),
            behaviour=read_behaviour(nwbfile, where),
            trials=read_trials(nwbfile),
            truth=truth,
            **units,
        )
