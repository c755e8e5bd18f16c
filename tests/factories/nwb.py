"""Small NWB files written with pynwb for the spikes pipeline tests: `write_nwb`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass
class Series:
    """A behaviour TimeSeries: raw ``data`` with either ``rate`` (+ ``starting_time``) or
    ``timestamps``; stored values are ``data * conversion + offset``."""

    data: np.ndarray
    rate: float | None = None
    starting_time: float = 0.0
    timestamps: np.ndarray | None = None
    conversion: float = 1.0
    offset: float = 0.0
    unit: str = "cm/s"
    container: bool = False  # inside a BehavioralTimeSeries instead of directly in the module


def write_nwb(
    path: Path,
    units: list[np.ndarray] | None,
    subject_id: str | None = "01",
    session_id: str | None = None,
    groups: list[tuple[str, str]] | None = None,
    unit_groups: list[int] | None = None,
    quality: list[str] | None = None,
    obs_intervals: list[list[list[float]]] | None = None,
    behaviour: dict[str, Series] | None = None,
    frames: tuple[np.ndarray, np.ndarray] | None = None,
    trials: pd.DataFrame | None = None,
    coupling: np.ndarray | None = None,
) -> Path:
    """Write an NWB file: ``units`` spike times per unit (None: no Units table), electrode
    ``groups`` (name, location) with each unit's group index, optional quality column,
    obs_intervals, behaviour series in processing/behavior, stimulus ``frames`` (data, onsets)
    as an ImageSeries ``movie``, a trials table (start_time, stop_time + columns) and a scratch
    ``coupling`` array."""
    from pynwb import NWBHDF5IO, NWBFile, ProcessingModule, TimeSeries
    from pynwb.behavior import BehavioralTimeSeries
    from pynwb.file import Subject
    from pynwb.image import ImageSeries

    nwbfile = NWBFile(
        session_description="test",
        identifier=path.stem,
        session_start_time=datetime(2024, 1, 1, tzinfo=timezone.utc),
        session_id=session_id,
        subject=Subject(subject_id=subject_id) if subject_id else None,
    )
    made = []
    if groups:
        device = nwbfile.create_device(name="probe")
        made = [
            nwbfile.create_electrode_group(name, "test group", location, device)
            for name, location in groups
        ]
    if units is not None:
        if quality is not None:
            nwbfile.add_unit_column(name="quality", description="sorting quality")
        for k, times in enumerate(units):
            extra = {}
            if made:
                extra["electrode_group"] = made[(unit_groups or [0] * len(units))[k]]
            if quality is not None:
                extra["quality"] = quality[k]
            if obs_intervals is not None:
                extra["obs_intervals"] = obs_intervals[k]
            nwbfile.add_unit(spike_times=np.asarray(times, dtype=float), **extra)
    if behaviour:
        module = ProcessingModule(name="behavior", description="test behaviour")
        nwbfile.add_processing_module(module)
        wrapper = None
        for name, s in behaviour.items():
            timing = (
                {"timestamps": s.timestamps}
                if s.timestamps is not None
                else {"rate": s.rate, "starting_time": s.starting_time}
            )
            series = TimeSeries(
                name=name,
                data=s.data,
                unit=s.unit,
                conversion=s.conversion,
                offset=s.offset,
                **timing,
            )
            if s.container:
                if wrapper is None:
                    wrapper = BehavioralTimeSeries(name="BehavioralTimeSeries")
                    module.add(wrapper)
                wrapper.add_timeseries(series)
            else:
                module.add(series)
    if frames is not None:
        data, onsets = frames
        nwbfile.add_stimulus(
            ImageSeries(name="movie", data=data, unit="n.a.", format="raw", timestamps=onsets)
        )
    if trials is not None:
        for column in trials.columns.drop(["start_time", "stop_time"]):
            nwbfile.add_trial_column(name=column, description=column)
        for row in trials.to_dict("records"):
            nwbfile.add_trial(**row)
    if coupling is not None:
        nwbfile.add_scratch(coupling, name="coupling", description="ground truth")
    path.parent.mkdir(parents=True, exist_ok=True)
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwbfile)
    return path
