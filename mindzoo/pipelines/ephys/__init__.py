"""Shared core of the iEEG and EEG pipelines: BIDS recordings -> ``[trial, channel, time]``.

The steps are described in :mod:`mindzoo.pipelines.ephys.pipeline`, which runs them. Modules:

- ``config``: the ``pipeline.*`` settings and the iEEG (Du-IN) and EEG presets;
- ``bids``: which recordings a config selects, their sidecars and events, the files to fetch;
- ``recording``: one recording (BIDS formats, NWB) as an mne Raw with its channel metadata;
- ``channels``: contact names, re-referencing (bipolar, average), region and top-k selection;
- ``signal``: notch, band-pass, high-gamma envelope, resampling, epoching, z-scoring;
- ``store``: the prepared subjects and how they are written to the store;
- ``pipeline``: per recording and per subject, the whole run (:func:`prepare_bids_ephys`).

The names below are re-exported so that ``from mindzoo.pipelines.ephys import X`` works.
"""

from mindzoo.pipelines.ephys.bids import (
    EXTENSIONS,
    coord_frame,
    event_values_seen,
    find_recordings,
    input_files,
    read_events,
    read_tsv,
    sidecar,
)
from mindzoo.pipelines.ephys.channels import (
    UNKNOWN_REGION,
    Channels,
    bipolar_matrix,
    check_pairs,
    neighbour_pairs,
    rank_channels,
    rereference,
    select_channels,
    split_contact,
)
from mindzoo.pipelines.ephys.config import (
    ChannelSettings,
    EEGPipelineConfig,
    EphysPipelineConfig,
    IEEGPipelineConfig,
)
from mindzoo.pipelines.ephys.pipeline import (
    prepare_bids_ephys,
    process_recording,
    stratified_split,
)
from mindzoo.pipelines.ephys.recording import contact_shafts, read_nwb, read_recording
from mindzoo.pipelines.ephys.signal import (
    check_rates,
    epoch,
    filter_raw,
    fixed_windows,
    resample,
    zscore_with_train,
)
from mindzoo.pipelines.ephys.store import EphysSubject, PreparedEphys, write_ephys_store

__all__ = [
    "EXTENSIONS",
    "UNKNOWN_REGION",
    "ChannelSettings",
    "Channels",
    "EEGPipelineConfig",
    "EphysPipelineConfig",
    "EphysSubject",
    "IEEGPipelineConfig",
    "PreparedEphys",
    "bipolar_matrix",
    "check_pairs",
    "check_rates",
    "contact_shafts",
    "coord_frame",
    "epoch",
    "event_values_seen",
    "filter_raw",
    "find_recordings",
    "fixed_windows",
    "input_files",
    "neighbour_pairs",
    "prepare_bids_ephys",
    "process_recording",
    "rank_channels",
    "read_events",
    "read_nwb",
    "read_recording",
    "read_tsv",
    "rereference",
    "resample",
    "select_channels",
    "sidecar",
    "split_contact",
    "stratified_split",
    "write_ephys_store",
    "zscore_with_train",
]
