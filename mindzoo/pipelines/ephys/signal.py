"""Signal processing of the ephys pipeline: filtering, resampling, epoching, z-scoring.

With mne: notch the line frequency and its harmonics inside the pass band, band-pass (4th-order
Butterworth, zero phase: IIR keeps long recordings fast); with ``high_gamma`` the band is
``high_gamma_band`` (70-170 Hz) and the signal becomes its Hilbert envelope. Then resample to
``sfreq`` (scipy polyphase, with its anti-alias filter), epoch ``[tmin, tmax)`` around the
events or in fixed-length windows (``fixed_length``) for recordings without events, and z-score
each channel with the mean and standard deviation of the training trials (over trials and time).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mindzoo.errors import UserInputError
from mindzoo.pipelines.ephys.config import EphysPipelineConfig

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


DEFAULT_LINE_FREQ = 50.0  # Hz, where pipeline.line_freq is auto and the sidecar says nothing


def line_frequency(recorded: float | None, config: EphysPipelineConfig) -> tuple[float | None, str]:
    """The line-noise fundamental to notch (Hz, or None) and where it came from: the setting,
    the recording's ``PowerLineFrequency`` (``recorded``, as mne-bids reads it into
    ``info["line_freq"]``), or the 50 Hz default when neither says."""
    if config.line_freq is None:
        return None, "no notch (pipeline.line_freq null)"
    if config.line_freq != "auto":
        return float(config.line_freq), f"{config.line_freq:g} Hz (pipeline.line_freq)"
    if recorded:
        return float(recorded), f"{recorded:g} Hz (PowerLineFrequency)"
    return DEFAULT_LINE_FREQ, (
        f"{DEFAULT_LINE_FREQ:g} Hz (no PowerLineFrequency in the sidecar; set pipeline.line_freq)"
    )


def filter_raw(raw: Any, config: EphysPipelineConfig, line_freq: float | None = None) -> None:
    """Notch at ``line_freq`` Hz and its harmonics (None: no notch), band-pass and (with
    high_gamma) Hilbert envelope of a loaded Raw, in place."""
    low, high = config.band
    nyquist = raw.info["sfreq"] / 2
    iir = {"order": 4, "ftype": "butter", "output": "sos"}
    if line_freq is not None:
        # only harmonics inside the pass band: the band-pass removes the others
        freqs = np.arange(line_freq, nyquist - 1, line_freq)
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


# --- normalisation -----------------------------------------------------------------------------


def zscore_with_train(signals: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Per-channel z-score of [trial, channel, time] with mean/std over training trials x time."""
    reference = signals[train]
    mean = reference.mean(axis=(0, 2), keepdims=True, dtype=np.float64)
    std = reference.std(axis=(0, 2), keepdims=True, dtype=np.float64)
    std[std == 0] = 1.0
    return ((signals - mean) / std).astype(np.float32)
