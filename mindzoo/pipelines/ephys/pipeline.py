"""The shared iEEG/EEG pipeline, end to end: BIDS recordings -> ``[trial, channel, time]``.

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

This module runs the steps; each lives in its own module of :mod:`mindzoo.pipelines.ephys`:
reading in ``recording`` (files found by ``bids``), re-referencing and selection in
``channels``, filtering, resampling, epoching and z-scoring in ``signal``, the store layout in
``store``, the settings in ``config``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from mindzoo.errors import UserInputError
from mindzoo.pipelines.base import Pipeline, Written
from mindzoo.pipelines.ephys.bids import (
    coord_frame,
    event_values_seen,
    find_recordings,
    input_files,
    read_events,
)
from mindzoo.pipelines.ephys.channels import Channels, rereference, select_channels
from mindzoo.pipelines.ephys.config import (
    EEGPipelineConfig,
    EphysPipelineConfig,
    IEEGPipelineConfig,
)
from mindzoo.pipelines.ephys.recording import contact_shafts, read_recording
from mindzoo.pipelines.ephys.signal import (
    check_rates,
    epoch,
    filter_raw,
    fixed_windows,
    line_frequency,
    resample,
    zscore_with_train,
)
from mindzoo.pipelines.ephys.store import EphysSubject, PreparedEphys, write_ephys_store


@dataclass
class _Run:
    epochs: np.ndarray
    channels: Channels
    events: pd.DataFrame
    bads: list[str]
    coord_frame: str
    line_noise: str  # the notch used and where it came from (line_frequency)
    n_without_value: int = 0  # events rows with n/a as their value or label: not epoched


def process_recording(recording: Path, config: EphysPipelineConfig) -> _Run | None:
    """One recording -> epochs [event, channel, time] at ``config.sfreq`` and channel metadata;
    None when the recording has none of the chosen events."""
    where = recording.name
    events = read_events(recording, config) if config.fixed_length is None else None
    if events is not None and events.empty:
        return None  # none of the chosen events in this run: nothing to read
    raw, channels, bads = read_recording(recording, config)
    check_rates(raw.info["sfreq"], config, where)
    line_freq, line_noise = line_frequency(raw.info.get("line_freq"), config)
    if events is None:
        events = fixed_windows(recording, config, raw.n_times / raw.info["sfreq"])
    shafts = contact_shafts(recording, channels.names)
    data, channels = rereference(raw.get_data(), channels, shafts, bads, config, where)
    import mne

    info = mne.create_info(channels.names, raw.info["sfreq"], channels.types)
    referenced = mne.io.RawArray(data, info, verbose="error")
    del raw, data
    filter_raw(referenced, config, line_freq)
    data = resample(referenced.get_data(), referenced.info["sfreq"], config.sfreq)
    epochs = epoch(data, config.sfreq, events["onset"].to_numpy(), config, where)
    skipped = int(events.attrs.get("n_without_value", 0))
    return _Run(epochs, channels, events, bads, coord_frame(recording), line_noise, skipped)


def _entity(path: Path, key: str) -> str:
    match = re.search(rf"_{key}-([^_]+)", path.name)
    return match[1] if match else ""


def _combine_runs(
    subject: str, runs: list[_Run], paths: list[Path]
) -> tuple[np.ndarray, Channels, pd.DataFrame, list[str]]:
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
    channels = Channels(
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
    per_subject: dict[str, tuple[np.ndarray, Channels, pd.DataFrame, list[str], str]] = {}
    line_noise: dict[str, str] = {}
    without_value: dict[str, int] = {}
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
            line_noise[subject] = "; ".join(dict.fromkeys(r.line_noise for r in runs))
            without_value[subject] = sum(r.n_without_value for r in runs)
    labels = sorted(
        {label for _, _, events, _, _ in per_subject.values() for label in events["label"]}
    )
    subjects = {
        subject: _finish_subject(subject, *parts, labels, config)
        for subject, parts in per_subject.items()
    }
    for subject, data in subjects.items():
        data.line_noise = line_noise[subject]
        data.events_without_value = without_value[subject]
    return PreparedEphys(
        subjects=subjects,
        stimulus_ids=[f"class-{label}" for label in labels],
        stimulus_labels=labels,
        source_files=[p for paths in recordings.values() for p in paths],
    )


# --- per subject: split, z-score, selection ----------------------------------------------------


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


def _finish_subject(
    subject: str,
    signals: np.ndarray,
    channels: Channels,
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


class EphysPipeline(Pipeline):
    """The iEEG/EEG pipeline (:mod:`mindzoo.pipelines.ephys.pipeline`) as a registered pipeline."""

    def __init__(self, name: str, version: str, config_cls: type[EphysPipelineConfig]) -> None:
        self.name, self.version, self.config_cls = name, version, config_cls

    def input_files(
        self, root: Path, config: EphysPipelineConfig, settings: dict[str, Any]
    ) -> list[Path]:
        return input_files(root, config)

    def write(
        self,
        root: Path,
        config: EphysPipelineConfig,
        settings: dict[str, Any],
        writer: Any,
        progress: bool,
    ) -> Written:
        prepared = prepare_bids_ephys(root, config, progress=progress)
        write_ephys_store(writer, prepared)
        return Written(sorted(prepared.subjects), len(prepared.source_files))


IEEG = EphysPipeline("ieeg", "ieeg-1", IEEGPipelineConfig)
EEG = EphysPipeline("eeg", "eeg-1", EEGPipelineConfig)
