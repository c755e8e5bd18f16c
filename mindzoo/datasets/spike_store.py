"""The spikes layout of the tensor store: ragged events per subject/session, read by time.

Spikes do not fit ``[trial, channel, time]``. A spikes store keeps, per store subject (one NWB
file = one subject/session, named ``sub-<subject>`` or ``sub-<subject>_ses-<session>``)::

    subjects/<sub>/spikes/times      float64 [n_spikes]  seconds on the session clock, sorted
    subjects/<sub>/spikes/units      int32   [n_spikes]  row of the unit table (0..n_units-1)
    subjects/<sub>/spikes/index      int64   [n_steps+1] first spike at or after origin + k*step
                                     (attrs: origin, step: 1 s, t_start, t_stop)
    subjects/<sub>/units/<column>    unit table: id, n_spikes, electrode_group, location, quality,
                                     obs_start, obs_end (s; NaN when the NWB has no obs_intervals)
    subjects/<sub>/trials/<column>   trial/interval table: start, stop (s), stimulus_index (first
                                     frame, -1 without stimulus), session, run, repetition, split
                                     (train/val/test), and any other NWB trial columns
    subjects/<sub>/frames/times      float64 [n_shown]  onset of each shown stimulus frame (s)
    subjects/<sub>/frames/index      int32   [n_shown]  row of stimuli/images shown then
    subjects/<sub>/behaviour/<name>  float32 [n_samples, ...] on a regular grid (attrs: rate Hz,
                                     start s, unit, description)
    subjects/<sub>/truth/<name>      simulator ground truth (synthetic-spikes: ``coupling``
                                     [n_units, n_units], weight of unit i -> unit j at [i, j])

Stimulus frames are the store's ``stimuli/images`` (uint8 ``[n_frames, h, w, 3]``, one stimulus
id per frame). A windowed read (:meth:`SpikeRecording.window`) touches only the chunks of the
spikes inside it: the per-second index gives the slice, no whole-session load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import zarr

from mindzoo.datasets.arrays import SPLITS, _write_array, read_table, write_table
from mindzoo.errors import UserInputError

SPIKE_CHUNK = 1 << 18  # spikes per chunk (2 MiB of float64 times)
INDEX_STEP = 1.0  # seconds between entries of spikes/index
_BEHAVIOUR_CHUNK = 1 << 16
UNIT_COLUMNS = ("id", "electrode_group", "location", "quality")
TRIAL_COLUMNS = ("start", "stop", "stimulus_index", "session", "run", "repetition", "split")


@dataclass
class Behaviour:
    """One behavioural variable sampled on a regular grid: ``values[k]`` at ``start + k / rate``."""

    values: np.ndarray  # float32 [n_samples] or [n_samples, d]
    rate: float  # Hz
    start: float  # s
    unit: str = ""
    description: str = ""


@dataclass
class SpikeSubject:
    """One session's spikes and what goes with them, as a pipeline hands it to the store.

    ``times`` (float64 s, sorted) and ``units`` (int32 rows of ``unit_table``) have one entry per
    spike. ``unit_table`` needs the columns of :data:`UNIT_COLUMNS`; ``trials`` those of
    :data:`TRIAL_COLUMNS`. ``frame_times``/``frame_index`` give which stimulus frame was shown
    from when (None without a stimulus). ``truth`` holds simulator ground truth arrays.
    """

    times: np.ndarray
    units: np.ndarray
    unit_table: pd.DataFrame
    trials: pd.DataFrame
    t_start: float
    t_stop: float
    frame_times: np.ndarray | None = None
    frame_index: np.ndarray | None = None
    behaviour: dict[str, Behaviour] = field(default_factory=dict)
    truth: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)


def check_spike_subject(name: str, data: SpikeSubject) -> None:
    """Raise ValueError naming what breaks the layout (pipelines turn it into a user error)."""
    if data.times.shape != data.units.shape or data.times.ndim != 1:
        raise ValueError(f"{name}: spike times and units need one entry per spike")
    if len(data.times) and np.any(np.diff(data.times) < 0):
        raise ValueError(f"{name}: spike times are not sorted")
    n_units = len(data.unit_table)
    if len(data.units) and (data.units.min() < 0 or data.units.max() >= n_units):
        raise ValueError(f"{name}: spike unit rows outside the {n_units}-row unit table")
    for table, columns, what in (
        (data.unit_table, UNIT_COLUMNS, "unit table"),
        (data.trials, TRIAL_COLUMNS, "trial table"),
    ):
        missing = set(columns) - set(table.columns)
        if missing:
            raise ValueError(f"{name}: {what} lacks columns {sorted(missing)}")
    bad = set(data.trials["split"]) - set(SPLITS)
    if bad:
        raise ValueError(f"{name}: unknown split values {sorted(bad)}; expected {SPLITS}")
    if (data.frame_times is None) != (data.frame_index is None):
        raise ValueError(f"{name}: frame_times and frame_index go together")


def write_spike_subject(root: zarr.Group, subject: str, data: SpikeSubject) -> None:
    """Write one subject/session in the spikes layout under ``root/subjects/<subject>``."""
    check_spike_subject(subject, data)
    group = root.require_group(f"subjects/{subject}")
    spikes = group.require_group("spikes")
    _write_array(spikes, "times", data.times.astype(np.float64), SPIKE_CHUNK, ("spike",))
    _write_array(spikes, "units", data.units.astype(np.int32), SPIKE_CHUNK, ("spike",))
    origin = float(np.floor(data.t_start))
    n_steps = int(np.ceil((data.t_stop - origin) / INDEX_STEP)) + 1
    edges = origin + INDEX_STEP * np.arange(n_steps + 1)
    index = np.searchsorted(data.times, edges, side="left").astype(np.int64)
    _write_array(spikes, "index", index, dims=("step",))
    spikes.attrs.update(
        {
            "origin": origin,
            "step": INDEX_STEP,
            "t_start": float(data.t_start),
            "t_stop": float(data.t_stop),
        }
    )
    units = data.unit_table.copy()
    units["n_spikes"] = np.bincount(data.units, minlength=len(units)).astype(np.int64)
    write_table(group.require_group("units"), units, "unit")
    write_table(group.require_group("trials"), data.trials, "trial")
    if data.frame_times is not None:
        frames = group.require_group("frames")
        _write_array(frames, "times", data.frame_times.astype(np.float64), dims=("shown",))
        _write_array(frames, "index", data.frame_index.astype(np.int32), dims=("shown",))
    behaviour = group.require_group("behaviour")
    for name, series in data.behaviour.items():
        values = np.asarray(series.values, dtype=np.float32)
        _write_array(behaviour, name, values, _BEHAVIOUR_CHUNK, ("sample",))
        behaviour[name].attrs.update(
            {
                "rate": float(series.rate),
                "start": float(series.start),
                "unit": series.unit,
                "description": series.description,
            }
        )
    truth = group.require_group("truth")
    for name, values in data.truth.items():
        _write_array(truth, name, np.asarray(values), dims=("unit", "unit"))
    group.attrs.update(
        {
            "axis": "units",
            "layout": "spikes",
            "n_trials": len(data.trials),
            "n_units": len(units),
            "n_spikes": len(data.times),
            **data.attrs,
        }
    )


class SpikeRecording:
    """Read access to one subject/session of a spikes store (lazy; see the module docstring)."""

    def __init__(self, group: zarr.Group, name: str) -> None:
        self.group = group
        self.name = name
        spikes = group["spikes"]
        self._times = spikes["times"]
        self._units = spikes["units"]
        self._index = spikes["index"][...]
        attrs = dict(spikes.attrs)
        self.origin, self.step = float(attrs["origin"]), float(attrs["step"])
        self.t_start, self.t_stop = float(attrs["t_start"]), float(attrs["t_stop"])

    @property
    def n_units(self) -> int:
        return int(self.group.attrs["n_units"])

    @property
    def n_spikes(self) -> int:
        return int(self._times.shape[0])

    def unit_table(self) -> pd.DataFrame:
        return read_table(self.group["units"])

    def trials(self) -> pd.DataFrame:
        return read_table(self.group["trials"])

    def window(self, t0: float, t1: float) -> tuple[np.ndarray, np.ndarray]:
        """Spikes with ``t0 <= time < t1``: (times float64 [n] s, unit rows int32 [n])."""
        lo = int(np.clip(np.floor((t0 - self.origin) / self.step), 0, len(self._index) - 1))
        hi = int(np.clip(np.ceil((t1 - self.origin) / self.step), 0, len(self._index) - 1))
        start, stop = int(self._index[lo]), int(self._index[hi])
        if hi == len(self._index) - 1:
            stop = self.n_spikes
        times = np.asarray(self._times[start:stop])
        units = np.asarray(self._units[start:stop])
        keep = slice(np.searchsorted(times, t0, "left"), np.searchsorted(times, t1, "left"))
        return times[keep], units[keep]

    def all_spikes(self) -> tuple[np.ndarray, np.ndarray]:
        """Every spike of the session (a full read: for small sessions and baselines)."""
        return np.asarray(self._times[...]), np.asarray(self._units[...])

    @property
    def behaviour_names(self) -> list[str]:
        return sorted(self.group["behaviour"].array_keys()) if "behaviour" in self.group else []

    def behaviour(self, name: str) -> Behaviour:
        if name not in self.behaviour_names:
            have = ", ".join(self.behaviour_names) or "none"
            raise UserInputError(
                f"{self.name} has no behaviour {name!r} (have: {have}); choose one of those"
            )
        array = self.group[f"behaviour/{name}"]
        attrs = dict(array.attrs)
        return Behaviour(
            np.asarray(array[...]),
            attrs["rate"],
            attrs["start"],
            attrs.get("unit", ""),
            attrs.get("description", ""),
        )

    def frames(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(onset times float64 [n_shown], stimulus rows int32 [n_shown]) or None."""
        if "frames" not in self.group:
            return None
        return np.asarray(self.group["frames/times"][...]), np.asarray(
            self.group["frames/index"][...]
        )

    def truth(self, name: str) -> np.ndarray | None:
        """Simulator ground truth ``name`` (e.g. ``coupling``), None when the store has none."""
        key = f"truth/{name}"
        return np.asarray(self.group[key][...]) if key in self.group else None


def spike_problems(group: zarr.Group, subject: str, n_stimuli: int) -> list[str]:
    """The spikes schema of one subject (for ``verify``): sorted times inside the session, unit
    rows inside the unit table, an index that matches the times, trials and frames in range."""
    problems = []
    for key in ("spikes/times", "spikes/units", "spikes/index", "units", "trials"):
        if key not in group:
            return [f"{subject}: spikes layout lacks {key}"]
    recording = SpikeRecording(group, subject)
    times, units = recording.all_spikes()
    n_units = len(recording.unit_table())
    if times.shape != units.shape:
        problems.append(f"{subject}: spikes/times and spikes/units differ in length")
        return problems
    if len(times) and np.any(np.diff(times) < 0):
        problems.append(f"{subject}: spikes/times is not sorted")
    if len(times) and (times[0] < recording.t_start or times[-1] > recording.t_stop):
        problems.append(f"{subject}: spike times outside the session [t_start, t_stop]")
    if len(units) and (units.min() < 0 or units.max() >= n_units):
        problems.append(f"{subject}: spikes/units outside the {n_units}-row unit table")
    edges = recording.origin + recording.step * np.arange(len(recording._index))
    if not np.array_equal(np.searchsorted(times, edges, "left"), recording._index):
        problems.append(f"{subject}: spikes/index does not match spikes/times")
    trials = recording.trials()
    if len(trials) and (trials["stop"] < trials["start"]).any():
        problems.append(f"{subject}: a trial stops before it starts")
    frames = recording.frames()
    if frames is not None and len(frames[1]):
        if frames[1].min() < 0 or frames[1].max() >= n_stimuli:
            problems.append(f"{subject}: frames/index outside the stimulus table")
    return problems
