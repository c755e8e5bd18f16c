"""The scalp-EEG pipeline: the shared ephys core with EEG defaults.

Defaults: 0.1-40 Hz band, 50 Hz notch (harmonics above the band are not notched), common
average reference, 250 Hz, epochs -0.2 to 0.8 s around each event (an ERP window, as in
THINGS-EEG work), per-channel z-score with training statistics. Every step is in
:mod:`mindzoo.pipelines.ephys`; electrodes.tsv positions (e.g. a CapTrak or standard 10-20
montage written by mne-bids) are stored as given.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from mindzoo.pipelines.ephys import EphysPipelineConfig


class EEGPipelineConfig(EphysPipelineConfig):
    """``pipeline.*`` of an EEG dataset."""

    datatype: ClassVar[str] = "eeg"
    data_types: ClassVar[tuple[str, ...]] = ("eeg",)

    l_freq: float | None = Field(default=0.1, gt=0)
    h_freq: float | None = Field(default=40.0, gt=0)
    reference: Literal["bipolar", "average", "none"] = "average"
    sfreq: float = Field(default=250.0, gt=0)
    tmin: float = -0.2
    tmax: float = 0.8
