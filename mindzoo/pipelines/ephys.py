"""Shared core of the iEEG and EEG pipelines: BIDS recordings -> ``[trial, channel, time]``.

Per recording (one BIDS ``*_ieeg``/``*_eeg`` file of the chosen subjects, sessions and task):

1. read it with :func:`mne_bids.read_raw_bids` (BrainVision, EDF, BDF, EEGLAB ``.set``; NWB
   iEEG with pynwb: the first ElectricalSeries, channel metadata from channels.tsv); the
   channel names of ``channels.tsv`` must be those of the recording, its ``type`` column sets
   the channel types and ``status=bad`` marks channels that are dropped (``bads_dropped``);
   ``electrodes.tsv`` gives positions (``x, y, z``; ``n/a`` -> NaN) and region labels (the
   column ``pipeline.channels.region_column``, default ``region``; BIDS has no standard column
   for atlas labels, so a dataset's own column, e.g. ``anatomy`` or ``group``, can be named);
2. re-reference with one matrix product: ``bipolar`` takes the difference of neighbouring
   contacts of one shaft (shaft = ``group`` column of electrodes.tsv, else the letters of the
   contact name: ``LA1``, ``LA2`` -> shaft ``LA``; contacts ``n`` and ``n+1`` pair when both
   are good and, with positions, no further apart than 2.5x the shaft's median spacing), or
   pairs given explicitly (a pair is named ``LA1-LA2``, sits at the contacts' midpoint and takes
   the anode's region); ``average`` subtracts the mean of the good channels; ``none``;
3. with mne: notch the line frequency and its harmonics inside the pass band, band-pass
   (4th-order Butterworth, zero phase: IIR keeps long recordings fast); with ``high_gamma``
   the band is ``high_gamma_band`` (70-170 Hz) and the signal becomes its Hilbert envelope;
4. resample to ``sfreq`` (scipy polyphase, with its anti-alias filter);
5. epoch ``[tmin, tmax)`` around the events of ``events.tsv`` (``event_column`` values in
   ``event_values``; label from ``label_column`` or the event value mapped through ``labels``),
   or fixed-length windows (``fixed_length``) for recordings without events.

Per subject (runs concatenated; channels kept are those every run has): a label-stratified,
seeded split (default 80/10/10 per label, as Du-IN; or the events' ``split_column``), a
per-channel z-score with the mean and standard deviation of the training trials (over trials and
time), region selection (``channels.regions``) and top-k selection (``channels.top_k``): a
ridge classifier fitted on the training trials to per-channel features (mean and log mean
square of the signal in 100 ms bins, standardised) plays the role of Du-IN's spatial
projection ``W`` and channels are ranked by mean ``|W|`` over classes and features.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy import sparse
from tqdm.auto import tqdm

from mindzoo.errors import UserInputError

# Recording formats: those mne-bids reads, and NWB (read with pynwb); MEF is not supported.
EXTENSIONS = (".vhdr", ".edf", ".bdf", ".set", ".nwb")
# Files that belong to a recording besides itself (BrainVision data/markers, EEGLAB data).
_COMPANIONS = {".vhdr": (".eeg", ".vmrk"), ".set": (".fdt",)}
_SIDECARS = ("channels.tsv", "electrodes.tsv", "coordsystem.json", "events.tsv", "events.json")
# Width of the bins of the top-k ranking features, in seconds.
_RANK_BIN_S = 0.1
# Two contacts of one shaft further apart than this many median spacings are not neighbours.
_MAX_SPACING_RATIO = 2.5
UNKNOWN_REGION = "unknown"


class ChannelSettings(BaseModel):
    """Which channels reach the store (``pipeline.channels.*``)."""

    model_config = ConfigDict(extra="forbid")

    region_column: str = "region"
    """electrodes.tsv column holding each contact's region label (absent -> ``unknown``)."""
    regions: list[str] | None = None
    """Keep only channels in these regions (e.g. ``[vSMC, STG]``); None keeps all."""
    top_k: int | None = Field(default=None, ge=1)
    """Keep the k channels a linear classifier on the training trials weighs most (Du-IN: 10)."""
    ridge_alpha: float = Field(default=1.0, gt=0)
    """Regularisation of that classifier."""


class EphysPipelineConfig(BaseModel):
    """Settings of the ephys pipeline (``pipeline.*``); subclasses set a modality's defaults."""

    model_config = ConfigDict(extra="forbid")
    datatype: ClassVar[str] = "ieeg"
    data_types: ClassVar[tuple[str, ...]] = ("seeg", "ecog", "dbs")

    subjects: list[str] | None = None
    sessions: list[str] | None = None
    task: str | None = None
    acquisition: str | None = None
    line_freq: float | None = Field(default=50.0, gt=0)
    """Line-noise fundamental in Hz, notched with its harmonics inside the band; None: no notch."""
    l_freq: float | None = Field(default=0.5, gt=0)
    h_freq: float | None = Field(default=200.0, gt=0)
    reference: Literal["bipolar", "average", "none"] = "bipolar"
    bipolar_pairs: list[tuple[str, str]] | None = None
    """Explicit (anode, cathode) pairs; None pairs neighbouring contacts of each shaft."""
    high_gamma: bool = False
    high_gamma_band: tuple[float, float] = (70.0, 170.0)
    sfreq: float = Field(default=1000.0, gt=0)
    """Sampling rate of the stored signals, Hz."""
    tmin: float = 0.0
    tmax: float = 3.0
    """Epoch [tmin, tmax) in seconds relative to each event."""
    event_column: str = "trial_type"
    event_values: list[str] | None = None
    """Events (values of event_column) to epoch on; None: every event."""
    label_column: str | None = None
    """events.tsv column holding the class label; None: the event value."""
    labels: dict[str, str] = {}
    """Map event values (or label_column values) to class names; unmapped values stay."""
    fixed_length: float | None = Field(default=None, gt=0)
    """Epoch back-to-back windows of this many seconds instead of events (label ``window``)."""
    split_column: str | None = None
    """events.tsv column holding train/val/test; None: a label-stratified seeded split."""
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_seed: int = 0
    zscore: bool = True
    channels: ChannelSettings = ChannelSettings()

    @model_validator(mode="after")
    def _consistent(self) -> EphysPipelineConfig:
        if self.tmax <= self.tmin:
            raise ValueError(f"tmax ({self.tmax}) must be after tmin ({self.tmin})")
        if self.l_freq and self.h_freq and self.l_freq >= self.h_freq:
            raise ValueError(f"l_freq ({self.l_freq}) must be below h_freq ({self.h_freq})")
        low, high = self.high_gamma_band
        if not 0 < low < high:
            raise ValueError(f"high_gamma_band {self.high_gamma_band} must be 0 < low < high")
        if min(self.split_fractions) < 0 or abs(sum(self.split_fractions) - 1) > 1e-6:
            raise ValueError(f"split_fractions {self.split_fractions} must be >= 0 and sum to 1")
        return self

    @property
    def band(self) -> tuple[float | None, float | None]:
        """The pass band applied to the signal, Hz."""
        return self.high_gamma_band if self.high_gamma else (self.l_freq, self.h_freq)


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


@dataclass
class PreparedEphys:
    """What the pipeline hands to the store writer."""

    subjects: dict[str, EphysSubject]
    stimulus_ids: list[str]
    stimulus_labels: list[str]
    source_files: list[Path] = field(default_factory=list)


@dataclass
class _Channels:
    """Channels of a recording after re-referencing: data rows and their metadata."""

    names: list[str]
    types: list[str]
    xyz: np.ndarray
    regions: list[str]


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
    table = _read_tsv(path)
    if config.event_column not in table.columns:
        return True  # the pipeline reports the missing column
    return bool(table[config.event_column].astype(str).isin(config.event_values).any())


# --- reading -----------------------------------------------------------------------------------


def _read_tsv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False, dtype=str)


def read_recording(
    recording: Path, config: EphysPipelineConfig
) -> tuple[Any, _Channels, list[str]]:
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
        listed = _read_tsv(channels_tsv)["name"].tolist()
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
) -> tuple[Any, _Channels, list[str]]:
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
    return raw, _Channels(good, kinds, xyz, regions), bads


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
    from pynwb import NWBHDF5IO
    from pynwb.ecephys import ElectricalSeries

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
    table = _read_tsv(channels_tsv)
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
    table = _read_tsv(path).set_index("name")
    for i, name in enumerate(names):
        if name not in table.index:
            continue
        row = table.loc[name]
        if {"x", "y", "z"} <= set(table.columns):
            xyz[i] = pd.to_numeric(row[["x", "y", "z"]], errors="coerce").to_numpy(np.float32)
        if region_column in table.columns and isinstance(row[region_column], str):
            regions[i] = row[region_column]
    return xyz, regions


def _shafts(recording: Path, names: list[str]) -> list[str]:
    """Shaft of each contact: electrodes.tsv ``group``, else the name without its number."""
    groups: dict[str, str] = {}
    path = sidecar(recording, "electrodes.tsv")
    if path is not None:
        table = _read_tsv(path)
        if "group" in table.columns:
            groups = {
                n: g
                for n, g in zip(table["name"], table["group"], strict=True)
                if isinstance(g, str)
            }
    return [groups.get(name) or split_contact(name)[0] for name in names]


def split_contact(name: str) -> tuple[str, int | None]:
    """``"LA12"`` -> ``("LA", 12)``; a name without a trailing number -> ``(name, None)``."""
    match = re.fullmatch(r"(.*?)(\d+)", name)
    if match is None or not match[1]:
        return name, None
    return match[1], int(match[2])


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


# --- re-referencing ----------------------------------------------------------------------------


def neighbour_pairs(names: list[str], shafts: list[str], xyz: np.ndarray) -> list[tuple[str, str]]:
    """Bipolar pairs (n, n+1) of neighbouring contacts along each shaft.

    Contacts are ordered by the number in their name; with positions, a pair further apart than
    2.5x the montage's median neighbour distance (a gap, e.g. a broken contact's place taken by
    the next) is skipped.
    """
    by_shaft: dict[str, list[tuple[int, int]]] = {}
    for index, (name, shaft) in enumerate(zip(names, shafts, strict=True)):
        number = split_contact(name)[1]
        if number is not None:
            by_shaft.setdefault(shaft, []).append((number, index))
    candidates = []
    for contacts in by_shaft.values():
        contacts.sort()
        candidates += [(a, b) for (na, a), (nb, b) in pairwise(contacts) if nb == na + 1]
    distances = np.array([np.linalg.norm(xyz[a] - xyz[b]) for a, b in candidates])
    known = distances[np.isfinite(distances)]
    limit = _MAX_SPACING_RATIO * np.median(known) if len(known) else np.inf
    return [
        (names[a], names[b])
        for (a, b), d in zip(candidates, distances, strict=True)
        if not np.isfinite(d) or d <= limit
    ]


def bipolar_matrix(names: list[str], pairs: list[tuple[str, str]]) -> np.ndarray:
    """Re-referencing matrix M [n_pairs, n_channels]: row i is +1 at the anode, -1 at the
    cathode of pair i, so ``M @ data`` is every bipolar derivation at once."""
    index = {name: i for i, name in enumerate(names)}
    matrix = np.zeros((len(pairs), len(names)))
    for row, (anode, cathode) in enumerate(pairs):
        matrix[row, index[anode]] = 1.0
        matrix[row, index[cathode]] = -1.0
    return matrix


def check_pairs(
    pairs: list[tuple[str, str]], names: list[str], shafts: list[str], bads: list[str], where: str
) -> None:
    """Explicit pairs must name good contacts of one shaft."""
    shaft_of = dict(zip(names, shafts, strict=True))
    for anode, cathode in pairs:
        for contact in (anode, cathode):
            if contact in bads:
                raise UserInputError(
                    f"{where}: bipolar pair {anode}-{cathode} uses bad channel {contact}; "
                    "drop the pair from pipeline.bipolar_pairs"
                )
            if contact not in shaft_of:
                raise UserInputError(
                    f"{where}: bipolar pair {anode}-{cathode} names {contact}, not a data "
                    "channel of the recording; fix pipeline.bipolar_pairs"
                )
        if shaft_of[anode] != shaft_of[cathode]:
            raise UserInputError(
                f"{where}: bipolar pair {anode}-{cathode} spans two shafts "
                f"({shaft_of[anode]}, {shaft_of[cathode]}); pair contacts of one shaft"
            )


def rereference(
    data: np.ndarray,
    channels: _Channels,
    shafts: list[str],
    bads: list[str],
    config: EphysPipelineConfig,
    where: str,
) -> tuple[np.ndarray, _Channels]:
    """Apply ``config.reference`` to data [channel, time] as one matrix product."""
    if config.reference == "none":
        return data, channels
    if config.reference == "average":
        return data - data.mean(axis=0, keepdims=True), channels
    if config.bipolar_pairs is not None:
        pairs = [tuple(p) for p in config.bipolar_pairs]
        check_pairs(pairs, channels.names, shafts, bads, where)
    else:
        pairs = neighbour_pairs(channels.names, shafts, channels.xyz)
    if not pairs:
        raise UserInputError(
            f"{where}: no bipolar pairs (no neighbouring good contacts named like LA1, LA2 on "
            "one shaft); use --set pipeline.reference=average or give pipeline.bipolar_pairs"
        )
    index = {n: i for i, n in enumerate(channels.names)}
    anodes = [index[a] for a, _ in pairs]
    cathodes = [index[c] for _, c in pairs]
    derived = _Channels(
        names=[f"{a}-{c}" for a, c in pairs],
        types=[channels.types[a] for a in anodes],
        xyz=(channels.xyz[anodes] + channels.xyz[cathodes]) / 2,
        regions=[channels.regions[a] for a in anodes],
    )
    # sparse: two non-zeros per row, so the product costs two operations per output sample
    matrix = sparse.csr_matrix(bipolar_matrix(channels.names, pairs))
    return matrix @ data, derived


# --- filtering ---------------------------------------------------------------------------------


def check_rates(raw_sfreq: float, config: EphysPipelineConfig, where: str) -> None:
    """The recording must carry the requested band, and the output rate must hold it."""
    low, high = config.band
    top = high if high is not None else 0.0
    if top and raw_sfreq / 2 <= top:
        raise UserInputError(
            f"{where}: sampled at {raw_sfreq:g} Hz (Nyquist {raw_sfreq / 2:g} Hz), too low for the "
            f"band up to {top:g} Hz; lower pipeline.h_freq (or high_gamma_band) below "
            f"{raw_sfreq / 2:g} Hz"
        )
    if config.sfreq > raw_sfreq:
        raise UserInputError(
            f"{where}: pipeline.sfreq {config.sfreq:g} Hz is above the recording's "
            f"{raw_sfreq:g} Hz; set pipeline.sfreq <= {raw_sfreq:g}"
        )
    if not config.high_gamma and top and config.sfreq / 2 <= top:
        raise UserInputError(
            f"pipeline.sfreq {config.sfreq:g} Hz cannot hold the band up to {top:g} Hz; set "
            f"pipeline.sfreq above {2 * top:g} or pipeline.h_freq below {config.sfreq / 2:g}"
        )


def filter_raw(raw: Any, config: EphysPipelineConfig) -> None:
    """Notch, band-pass and (with high_gamma) Hilbert envelope of a loaded Raw, in place."""
    low, high = config.band
    nyquist = raw.info["sfreq"] / 2
    iir = {"order": 4, "ftype": "butter", "output": "sos"}
    if config.line_freq is not None:
        # only harmonics inside the pass band: the band-pass removes the others
        freqs = np.arange(config.line_freq, nyquist - 1, config.line_freq)
        freqs = freqs[(freqs > (low or 0.0)) & (freqs < (high or nyquist))]
        for freq in freqs:  # mne's IIR notch takes one stop band at a time
            raw.notch_filter(freq, method="iir", picks="all", verbose="error")
    if low is not None or high is not None:
        raw.filter(low, high, method="iir", iir_params=iir, picks="all", verbose="error")
    if config.high_gamma:
        raw.apply_hilbert(picks="all", envelope=True, verbose="error")


def resample(data: np.ndarray, sfreq: float, target: float) -> np.ndarray:
    """Polyphase resampling of data [channel, time] from ``sfreq`` to ``target`` Hz.

    scipy's ``resample_poly`` (Kaiser-windowed anti-alias FIR of 20 x max(up, down) taps); mne's
    polyphase resampler designs a far longer filter, which dominated the pipeline's run time.
    """
    if target == sfreq:
        return data
    from fractions import Fraction

    from scipy.signal import resample_poly

    ratio = Fraction(target / sfreq).limit_denominator(10_000)
    if abs(float(ratio) - target / sfreq) > 1e-9:
        raise UserInputError(
            f"pipeline.sfreq {target:g} Hz is not a simple fraction of {sfreq:g} Hz; choose a "
            "rate such as sfreq / 2, / 4, / 5, / 10"
        )
    return resample_poly(data, ratio.numerator, ratio.denominator, axis=1)


# --- epoching ----------------------------------------------------------------------------------


def fixed_windows(recording: Path, config: EphysPipelineConfig, duration: float) -> pd.DataFrame:
    """Back-to-back windows of ``fixed_length`` s covering a recording of ``duration`` s."""
    onsets = np.arange(-config.tmin, duration - config.tmax + 1e-9, config.fixed_length)
    if not len(onsets):
        raise UserInputError(
            f"{recording.name}: {duration:.2f} s is shorter than one "
            f"{config.tmax - config.tmin:g} s window; lower pipeline.tmax"
        )
    return pd.DataFrame({"onset": onsets, "label": "window", "split": None})


def read_events(recording: Path, config: EphysPipelineConfig) -> pd.DataFrame:
    """Events of ``recording`` to epoch on: columns onset (s), label, split (None without
    ``split_column``). Empty when none of ``event_values`` occurs in it."""
    path = sidecar(recording, "events.tsv")
    if path is None:
        raise UserInputError(
            f"{recording}: no events.tsv; add one or epoch fixed windows with "
            "--set pipeline.fixed_length=SECONDS"
        )
    events = _read_tsv(path)
    for column in ("onset", config.event_column, config.label_column, config.split_column):
        if column is not None and column not in events.columns:
            raise UserInputError(
                f"{path}: no column {column!r} (columns: {', '.join(events.columns)}); "
                "set pipeline.event_column/label_column/split_column"
            )
    values = events[config.event_column].astype(str)
    if config.event_values is not None:
        events = events[values.isin(config.event_values)]
        values = values[events.index]
    raw_labels = events[config.label_column].astype(str) if config.label_column else values
    onsets = pd.to_numeric(events["onset"], errors="coerce").to_numpy(float)
    if np.isnan(onsets).any():
        raise UserInputError(f"{path}: onset column has non-numeric values; fix the events file")
    return pd.DataFrame(
        {
            "onset": onsets,
            "label": [config.labels.get(v, v) for v in raw_labels],
            "split": events[config.split_column].to_numpy() if config.split_column else None,
        }
    )


def event_values_seen(recordings: list[Path], config: EphysPipelineConfig) -> list[str]:
    """The values of ``event_column`` in the recordings' events files (for error messages)."""
    seen: set[str] = set()
    for recording in recordings:
        path = sidecar(recording, "events.tsv")
        if path is not None and path.exists():
            table = _read_tsv(path)
            if config.event_column in table.columns:
                seen |= set(table[config.event_column].astype(str))
    return sorted(seen)


def epoch(
    data: np.ndarray, sfreq: float, onsets: np.ndarray, config: EphysPipelineConfig, where: str
) -> np.ndarray:
    """Windows [tmin, tmax) around ``onsets`` (s) of data [channel, time] -> [trial, channel, time]."""
    n_times = int(round((config.tmax - config.tmin) * sfreq))
    starts = np.round((onsets + config.tmin) * sfreq).astype(int)
    outside = (starts < 0) | (starts + n_times > data.shape[1])
    if outside.any():
        first = onsets[np.flatnonzero(outside)[0]]
        raise UserInputError(
            f"{where}: event at {first:.3f} s with window [{config.tmin:g}, {config.tmax:g}) s lies "
            f"outside the recording (0-{data.shape[1] / sfreq:.3f} s); fix the events or the window"
        )
    index = starts[:, None] + np.arange(n_times)[None, :]
    return np.ascontiguousarray(data[:, index].transpose(1, 0, 2), dtype=np.float32)


# --- per subject: splits, z-score, selection ---------------------------------------------------


def stratified_split(
    labels: np.ndarray, fractions: tuple[float, float, float], seed: int
) -> np.ndarray:
    """train/val/test per trial: each label's trials shuffled (seeded) and cut by ``fractions``.

    Per label of n trials: round(n*val) val and round(n*test) test trials, the rest train.
    """
    rng = np.random.default_rng(seed)
    splits = np.empty(len(labels), dtype=object)
    for label in sorted(set(labels.tolist())):
        rows = rng.permutation(np.flatnonzero(labels == label))
        n_val = int(round(len(rows) * fractions[1]))
        n_test = int(round(len(rows) * fractions[2]))
        n_train = len(rows) - n_val - n_test
        splits[rows[:n_train]] = "train"
        splits[rows[n_train : n_train + n_val]] = "val"
        splits[rows[n_train + n_val :]] = "test"
    return splits


def zscore_with_train(signals: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Per-channel z-score of [trial, channel, time] with mean/std over training trials x time."""
    reference = signals[train]
    mean = reference.mean(axis=(0, 2), keepdims=True, dtype=np.float64)
    std = reference.std(axis=(0, 2), keepdims=True, dtype=np.float64)
    std[std == 0] = 1.0
    return ((signals - mean) / std).astype(np.float32)


def rank_channels(
    signals: np.ndarray, labels: np.ndarray, train: np.ndarray, sfreq: float, alpha: float
) -> np.ndarray:
    """Channel indices by decreasing mean |W| of a linear classifier fitted on training trials.

    Features per channel: mean and log mean square in 100 ms bins, standardised with training
    statistics so that weights compare across channels.
    """
    from sklearn.linear_model import RidgeClassifier

    n_trials, n_channels, n_times = signals.shape
    width = max(1, int(round(_RANK_BIN_S * sfreq)))
    n_bins = max(1, n_times // width)
    binned = signals[:, :, : n_bins * width].reshape(n_trials, n_channels, n_bins, width)
    features = np.stack(
        [binned.mean(axis=3), np.log(np.square(binned).mean(axis=3) + 1e-12)], axis=3
    ).reshape(n_trials, -1)
    mean = features[train].mean(axis=0)
    std = features[train].std(axis=0)
    std[std == 0] = 1.0
    features = (features - mean) / std
    classes = np.unique(labels[train])
    if len(classes) < 2:
        raise UserInputError(
            "pipeline.channels.top_k needs at least two classes among the training trials"
        )
    model = RidgeClassifier(alpha=alpha).fit(features[train], labels[train])
    weights = np.abs(np.atleast_2d(model.coef_)).reshape(-1, n_channels, n_bins * 2)
    importance = weights.mean(axis=(0, 2))
    return np.argsort(-importance, kind="stable")


def select_channels(
    subject: str,
    signals: np.ndarray,
    regions: list[str],
    labels: np.ndarray,
    train: np.ndarray,
    sfreq: float,
    settings: ChannelSettings,
) -> np.ndarray:
    """Indices of the channels to keep: region selection, then top-k ranking (kept in order)."""
    keep = np.arange(signals.shape[1])
    if settings.regions is not None:
        wanted = set(settings.regions)
        keep = np.array([i for i in keep if regions[i] in wanted], dtype=int)
        if not len(keep):
            raise UserInputError(
                f"{subject}: no channel in regions {settings.regions} (regions here: "
                f"{', '.join(sorted(set(regions)))}; column {settings.region_column!r} of "
                "electrodes.tsv); fix pipeline.channels.regions"
            )
    if settings.top_k is not None and settings.top_k < len(keep):
        order = rank_channels(signals[:, keep], labels, train, sfreq, settings.ridge_alpha)
        keep = np.sort(keep[order[: settings.top_k]])
    return keep


# --- the pipeline ------------------------------------------------------------------------------


@dataclass
class _Run:
    epochs: np.ndarray
    channels: _Channels
    events: pd.DataFrame
    bads: list[str]
    coord_frame: str


def process_recording(recording: Path, config: EphysPipelineConfig) -> _Run | None:
    """One recording -> epochs [event, channel, time] at ``config.sfreq`` and channel metadata;
    None when the recording has none of the chosen events."""
    where = recording.name
    events = read_events(recording, config) if config.fixed_length is None else None
    if events is not None and events.empty:
        return None  # none of the chosen events in this run: nothing to read
    raw, channels, bads = read_recording(recording, config)
    check_rates(raw.info["sfreq"], config, where)
    if events is None:
        events = fixed_windows(recording, config, raw.n_times / raw.info["sfreq"])
    shafts = _shafts(recording, channels.names)
    data, channels = rereference(raw.get_data(), channels, shafts, bads, config, where)
    import mne

    info = mne.create_info(channels.names, raw.info["sfreq"], channels.types)
    referenced = mne.io.RawArray(data, info, verbose="error")
    del raw, data
    filter_raw(referenced, config)
    data = resample(referenced.get_data(), referenced.info["sfreq"], config.sfreq)
    epochs = epoch(data, config.sfreq, events["onset"].to_numpy(), config, where)
    return _Run(epochs, channels, events, bads, coord_frame(recording))


def _entity(path: Path, key: str) -> str:
    match = re.search(rf"_{key}-([^_]+)", path.name)
    return match[1] if match else ""


def _combine_runs(
    subject: str, runs: list[_Run], paths: list[Path]
) -> tuple[np.ndarray, _Channels, pd.DataFrame, list[str]]:
    """Concatenate runs over trials, keeping the channels every run has (first run's order)."""
    common = set(runs[0].channels.names).intersection(*(r.channels.names for r in runs[1:]))
    if not common:
        raise UserInputError(
            f"{subject}: the runs share no good channel; check channels.tsv status"
        )
    first = runs[0].channels
    keep = [i for i, n in enumerate(first.names) if n in common]
    names = [first.names[i] for i in keep]
    blocks, tables = [], []
    for run, path in zip(runs, paths, strict=True):
        index = {n: i for i, n in enumerate(run.channels.names)}
        blocks.append(run.epochs[:, [index[n] for n in names]])
        tables.append(
            run.events.assign(session=_entity(path, "ses"), run=_entity(path, "run") or "1")
        )
    channels = _Channels(
        names, [first.types[i] for i in keep], first.xyz[keep], [first.regions[i] for i in keep]
    )
    dropped = sorted({b for r in runs for b in r.bads})
    return np.concatenate(blocks), channels, pd.concat(tables, ignore_index=True), dropped


def prepare_bids_ephys(
    root: Path, config: EphysPipelineConfig, progress: bool = True
) -> PreparedEphys:
    """Run the pipeline over a BIDS dataset; see the module docstring for the steps."""
    recordings = find_recordings(root, config)
    total = sum(len(paths) for paths in recordings.values())
    per_subject: dict[str, tuple[np.ndarray, _Channels, pd.DataFrame, list[str], str]] = {}
    with tqdm(
        total=total, desc=f"{config.datatype} pipeline", unit="run", disable=not progress
    ) as bar:
        for subject, paths in recordings.items():
            runs, used = [], []
            for path in paths:
                run = process_recording(path, config)
                bar.update(1)
                if run is not None:
                    runs.append(run)
                    used.append(path)
            if not runs:
                raise UserInputError(
                    f"{subject}: none of pipeline.event_values {config.event_values} occurs in "
                    f"column {config.event_column!r} of its events.tsv files (values there: "
                    f"{', '.join(event_values_seen(paths, config)[:12])}); fix pipeline.event_values"
                )
            signals, channels, events, dropped = _combine_runs(subject, runs, used)
            per_subject[subject] = (signals, channels, events, dropped, runs[0].coord_frame)
    labels = sorted(
        {label for _, _, events, _, _ in per_subject.values() for label in events["label"]}
    )
    subjects = {
        subject: _finish_subject(subject, *parts, labels, config)
        for subject, parts in per_subject.items()
    }
    return PreparedEphys(
        subjects=subjects,
        stimulus_ids=[f"class-{label}" for label in labels],
        stimulus_labels=labels,
        source_files=[p for paths in recordings.values() for p in paths],
    )


def _finish_subject(
    subject: str,
    signals: np.ndarray,
    channels: _Channels,
    events: pd.DataFrame,
    dropped: list[str],
    frame: str,
    labels: list[str],
    config: EphysPipelineConfig,
) -> EphysSubject:
    """Split, z-score with training statistics, select channels; build the trial table."""
    label_array = events["label"].to_numpy(dtype=object).astype(str)
    if config.split_column is not None:
        splits = events["split"].astype(str).to_numpy(dtype=object)
        bad = sorted(set(splits) - {"train", "val", "test"})
        if bad:
            raise UserInputError(
                f"{subject}: events column {config.split_column!r} has values {bad[:3]}; "
                "expected train/val/test"
            )
    else:
        # one seed per subject, derived from the split seed and the label, so adding a subject
        # does not change the others' splits
        seed = [config.split_seed, *subject.encode()]
        splits = stratified_split(
            label_array, config.split_fractions, np.random.SeedSequence(seed).generate_state(1)[0]
        )
    train = splits == "train"
    if not train.any():
        raise UserInputError(f"{subject}: no training trials; check pipeline.split_*")
    if config.zscore:
        signals = zscore_with_train(signals, train)
    keep = select_channels(
        subject, signals, channels.regions, label_array, train, config.sfreq, config.channels
    )
    stimulus_index = np.searchsorted(labels, label_array)
    repetition = pd.Series(label_array).groupby(label_array).cumcount().to_numpy()
    trials = pd.DataFrame(
        {
            "stimulus_index": stimulus_index.astype(np.int64),
            "session": events["session"].astype(str).to_numpy(dtype=object),
            "run": events["run"].astype(str).to_numpy(dtype=object),
            "repetition": repetition.astype(np.int64),
            "split": splits,
            "label": label_array.astype(object),
            "onset": events["onset"].to_numpy(float),
        }
    )
    return EphysSubject(
        signals=np.ascontiguousarray(signals[:, keep]),
        trials=trials,
        names=[channels.names[i] for i in keep],
        types=[channels.types[i] for i in keep],
        xyz=channels.xyz[keep].astype(np.float32),
        regions=[channels.regions[i] for i in keep],
        sfreq=float(config.sfreq),
        tmin=float(config.tmin),
        coord_frame=frame,
        bads_dropped=dropped,
    )


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
            },
        )
