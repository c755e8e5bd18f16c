"""One recording as a loaded mne Raw of its good data channels, with their metadata.

BrainVision, EDF, BDF and EEGLAB ``.set`` are read with :func:`mne_bids.read_raw_bids`; NWB iEEG
with pynwb (the ``nwb`` extra): the first ElectricalSeries, channel metadata from channels.tsv.
The channel names of ``channels.tsv`` must be those of the recording, its ``type`` column sets
the channel types and ``status=bad`` marks channels that are dropped (``bads_dropped``);
``electrodes.tsv`` gives positions (``x, y, z``; ``n/a`` -> NaN), region labels (the column
``pipeline.channels.region_column``, default ``region``; BIDS has no standard column for atlas
labels, so a dataset's own column, e.g. ``anatomy`` or ``group``, can be named) and the shaft of
each contact (``group``).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mindzoo.errors import UserInputError
from mindzoo.extras import require
from mindzoo.pipelines.ephys.bids import read_tsv, sidecar
from mindzoo.pipelines.ephys.channels import UNKNOWN_REGION, Channels, split_contact
from mindzoo.pipelines.ephys.config import EphysPipelineConfig


def read_recording(recording: Path, config: EphysPipelineConfig) -> tuple[Any, Channels, list[str]]:
    """The recording's good data channels as a loaded mne Raw, their metadata and the bads.

    channels.tsv must name exactly the recording's channels (a mismatch is a UserInputError).
    """
    import mne
    from mne_bids import get_bids_path_from_fname, read_raw_bids

    channels_tsv = sidecar(recording, "channels.tsv")
    if recording.suffix == ".nwb":
        raw = read_nwb(recording, channels_tsv)
        return _good_channels(raw, recording, config)
    header = mne.io.read_raw(recording, preload=False, verbose="error")
    if channels_tsv is not None:
        listed = read_tsv(channels_tsv)["name"].tolist()
        if listed != list(header.ch_names):
            extra = sorted(set(listed) - set(header.ch_names))
            absent = sorted(set(header.ch_names) - set(listed))
            detail = (
                f"names not in the recording: {extra[:3]}"
                if extra
                else f"recording channels missing: {absent[:3]}"
                if absent
                else "same names in another order"
            )
            raise UserInputError(
                f"{channels_tsv} disagrees with {recording.name} ({len(listed)} rows for "
                f"{len(header.ch_names)} channels; {detail}); fix channels.tsv to list the "
                "recording's channels in order"
            )
    bids_path = get_bids_path_from_fname(recording)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = read_raw_bids(bids_path, verbose="error")
    return _good_channels(raw, recording, config)


def _good_channels(
    raw: Any, recording: Path, config: EphysPipelineConfig
) -> tuple[Any, Channels, list[str]]:
    """Keep the good channels of the modality's data types; load them; their metadata."""
    types = raw.get_channel_types()
    wanted = [n for n, t in zip(raw.ch_names, types, strict=True) if t in config.data_types]
    if not wanted:
        raise UserInputError(
            f"{recording}: no channels of type {'/'.join(config.data_types)} (channels.tsv types: "
            f"{', '.join(sorted(set(types)))}); fix the type column"
        )
    bads = [n for n in wanted if n in raw.info["bads"]]
    good = [n for n in wanted if n not in bads]
    raw.pick(good)
    raw.load_data(verbose="error")
    xyz, regions = _positions_and_regions(recording, good, config.channels.region_column)
    kinds = raw.get_channel_types()
    return raw, Channels(good, kinds, xyz, regions), bads


# BIDS channels.tsv types -> mne channel types (for NWB, which mne-bids cannot read)
_BIDS_TYPES = {
    "SEEG": "seeg",
    "ECOG": "ecog",
    "DBS": "dbs",
    "EEG": "eeg",
    "EOG": "eog",
    "ECG": "ecg",
    "EMG": "emg",
    "TRIG": "stim",
    "MISC": "misc",
}


def read_nwb(recording: Path, channels_tsv: Path | None) -> Any:
    """A BIDS iEEG ``.nwb`` recording as an mne Raw (mne-bids has no NWB reader).

    The data are the first ElectricalSeries of the file's acquisition, in volts (``data x
    conversion + offset``), sampled at its ``rate``; names, types and bad status come from
    channels.tsv, which must have one row per column of that series.
    """
    import mne

    NWBHDF5IO = require("pynwb", "nwb").NWBHDF5IO
    ElectricalSeries = require("pynwb.ecephys", "nwb").ElectricalSeries

    if channels_tsv is None:
        raise UserInputError(f"{recording}: an NWB recording needs its channels.tsv; add one")
    with NWBHDF5IO(str(recording), "r") as io:
        nwb = io.read()
        series = [s for s in nwb.acquisition.values() if isinstance(s, ElectricalSeries)]
        if not series:
            raise UserInputError(f"{recording}: no ElectricalSeries in the NWB acquisition group")
        first = series[0]
        if first.rate is None:
            raise UserInputError(
                f"{recording}: ElectricalSeries {first.name} has timestamps but no rate; "
                "mindzoo reads regularly sampled series only"
            )
        data = np.asarray(first.data[:], dtype=np.float64).T * first.conversion
        data += first.offset
        sfreq = float(first.rate)
    table = read_tsv(channels_tsv)
    if len(table) != data.shape[0]:
        raise UserInputError(
            f"{channels_tsv} disagrees with {recording.name} ({len(table)} rows for "
            f"{data.shape[0]} channels); fix channels.tsv to list the recording's channels in order"
        )
    kinds = [_BIDS_TYPES.get(str(t).upper(), "misc") for t in table["type"]]
    info = mne.create_info(table["name"].tolist(), sfreq, kinds)
    raw = mne.io.RawArray(data, info, verbose="error")
    if "status" in table.columns:
        raw.info["bads"] = table.loc[table["status"] == "bad", "name"].tolist()
    return raw


def _positions_and_regions(
    recording: Path, names: list[str], region_column: str
) -> tuple[np.ndarray, list[str]]:
    """xyz [n, 3] (NaN unknown) and region labels of ``names`` from electrodes.tsv."""
    xyz = np.full((len(names), 3), np.nan, dtype=np.float32)
    regions = [UNKNOWN_REGION] * len(names)
    path = sidecar(recording, "electrodes.tsv")
    if path is None:
        return xyz, regions
    table = read_tsv(path).set_index("name")
    for i, name in enumerate(names):
        if name not in table.index:
            continue
        row = table.loc[name]
        if {"x", "y", "z"} <= set(table.columns):
            xyz[i] = pd.to_numeric(row[["x", "y", "z"]], errors="coerce").to_numpy(np.float32)
        if region_column in table.columns and isinstance(row[region_column], str):
            regions[i] = row[region_column]
    return xyz, regions


def contact_shafts(recording: Path, names: list[str]) -> list[str]:
    """Shaft of each contact: electrodes.tsv ``group``, else the name without its number."""
    groups: dict[str, str] = {}
    path = sidecar(recording, "electrodes.tsv")
    if path is not None:
        table = read_tsv(path)
        if "group" in table.columns:
            groups = {
                n: g
                for n, g in zip(table["name"], table["group"], strict=True)
                if isinstance(g, str)
            }
    return [groups.get(name) or split_contact(name)[0] for name in names]
