"""The ephys store layout: what the pipeline hands over, and how it is written.

Signals ``[trial, channel, time]`` per subject, a trial table, and a ``channels`` axis with
positions, region codes and the channel names, types, region names, rate, epoch start,
coordinate frame and dropped bad channels; one stimulus per class label.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


@dataclass
class EphysSubject:
    """One subject's epochs and channel metadata, ready for the store."""

    signals: np.ndarray  # float32 [trial, channel, time]
    trials: pd.DataFrame
    names: list[str]
    types: list[str]
    xyz: np.ndarray  # float32 [channel, 3], NaN when unknown
    regions: list[str]
    sfreq: float
    tmin: float
    coord_frame: str
    bads_dropped: list[str]
    line_noise: str = ""  # the notch applied and where its frequency came from
    events_without_value: int = 0  # events rows with n/a as value or label, not epoched


@dataclass
class PreparedEphys:
    """What the pipeline hands to the store writer."""

    subjects: dict[str, EphysSubject]
    stimulus_ids: list[str]
    stimulus_labels: list[str]
    source_files: list[Path] = field(default_factory=list)


def write_ephys_store(writer: Any, prepared: PreparedEphys) -> None:
    """Write stimuli and subjects of ``prepared`` with a StoreWriter (the ephys store schema)."""
    writer.write_stimuli(
        None,
        prepared.stimulus_ids,
        prepared.stimulus_labels,
        ["train"] * len(prepared.stimulus_ids),
    )
    for subject, data in prepared.subjects.items():
        region_names = sorted(set(data.regions))
        codes = np.searchsorted(region_names, data.regions).astype(np.int16)
        writer.write_subject(
            subject,
            data.signals,
            data.trials,
            "channels",
            {"xyz": data.xyz, "region": codes},
            {
                "names": data.names,
                "types": data.types,
                "region_names": region_names,
                "sfreq": data.sfreq,
                "tmin": data.tmin,
                "coord_frame": data.coord_frame,
                "bads_dropped": data.bads_dropped,
                **({"line_noise": data.line_noise} if data.line_noise else {}),
                **(
                    {"events_without_value": data.events_without_value}
                    if data.events_without_value
                    else {}
                ),
            },
        )
