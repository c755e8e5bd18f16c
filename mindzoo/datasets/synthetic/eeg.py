"""``synthetic-eeg``: a seeded THINGS-EEG-like simulator (image-category ERPs), BIDS EEG via mne-bids.

Generative model (volts and seconds; draws from ``numpy.random.SeedSequence(seed)``, one child
per subject plus one for the category patterns shared by all subjects):

- **Montage.** 32 scalp electrodes of the 10-20 system (BrainProducts' 32-channel layout) at
  the positions of mne's ``standard_1020`` montage (``colin27_1020`` since MNE 1.13), written to electrodes.tsv/coordsystem.json
  by mne-bids.
- **ERPs.** Four components with a scalp topography each, a Gaussian bump over the sphere
  around a centre electrode (angular s.d. 0.5 rad): P1 (O1/O2 region, 100 ms, s.d. 25 ms), N1
  (P7/P8, 170 ms, 30 ms), P3 (Pz, 350 ms, 80 ms) and a frontal component (Fz, 450 ms, 80 ms).
  Every trial carries their sum with amplitudes (2, -3, 3, 1.5) x ``erp_uv``; category c
  scales each component by (1 + 0.5 u_{c,k}), u ~ N(0, 1), and adds its own pattern: a random
  smooth topography (two Gaussians) times a 200 ms (s.d. 50 ms) waveform of amplitude
  ``category_uv``. Per trial: amplitude x lognormal(0, 0.2), latency jitter N(0, 10 ms). The
  category patterns are shared by all subjects; each subject's topographies are rotated by
  a small random angle (individual anatomy).
- **Background.** 1/f^2 noise (1 Hz knee) per electrode of RMS ``background_uv``, spatially
  smoothed (mixing by a Gaussian kernel of electrode distance), plus occipital 10 Hz alpha
  (random phase drift, amplitude ``alpha_uv``) and 50 Hz line noise (``line_uv``).
- **Bad channels.** ``n_bad`` electrodes per subject carry 10x noise and are marked bad.
- **Trials.** ``repetitions`` trials per category in a random order, one image every
  ``trial_period`` s plus U(0, 0.2) s; events.tsv ``trial_type`` is the category.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from mindzoo.atomic import atomic_directory
from mindzoo.datasets.synthetic.spectral import spectral_noise
from mindzoo.errors import UserInputError

TASK = "things"
CHANNELS = (
    "Fp1 Fp2 F7 F3 Fz F4 F8 FC5 FC1 FC2 FC6 T7 C3 Cz C4 T8 "
    "TP9 CP5 CP1 CP2 CP6 TP10 P7 P3 Pz P4 P8 PO9 O1 Oz O2 PO10"
).split()
CATEGORIES = ("animal", "body", "building", "face", "food", "plant", "tool", "vehicle")
# (centre electrodes, latency s, width s, relative amplitude)
_COMPONENTS = (
    (("O1", "O2"), 0.10, 0.025, 2.0),
    (("P7", "P8"), 0.17, 0.030, -3.0),
    (("Pz",), 0.35, 0.080, 3.0),
    (("Fz",), 0.45, 0.080, 1.5),
)
_TOPOGRAPHY_SD = 0.5  # radians on the unit sphere
_EPOCH_S = 1.0


class SyntheticEEGConfig(BaseModel):
    """``simulator.*`` of synthetic-eeg."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    n_subjects: int = Field(default=2, ge=1)
    n_categories: int = Field(default=8, ge=2, le=len(CATEGORIES))
    repetitions: int = Field(default=40, ge=1)
    sfreq: float = Field(default=500.0, gt=100)
    trial_period: float = Field(default=1.0, gt=0)
    background_uv: float = 6.0
    erp_uv: float = 2.0
    category_uv: float = 6.0
    """Amplitude of each category's own pattern (6: logistic regression on 100 ms bin means
    reaches 25-50 % top-1 of 8 categories on held-out trials; chance 12.5 %)."""
    alpha_uv: float = 5.0
    line_freq: float = 50.0
    line_uv: float = 5.0
    n_bad: int = Field(default=1, ge=0)


def montage_name() -> str:
    """mne's 10-20 template: ``standard_1020``, called ``colin27_1020`` since MNE 1.13."""
    import mne

    builtin = mne.channels.get_builtin_montages()
    return "colin27_1020" if "colin27_1020" in builtin else "standard_1020"


def _unit_positions() -> np.ndarray:
    """Electrode directions on the unit sphere [32, 3] from mne's standard_1020 montage."""
    import mne

    positions = mne.channels.make_standard_montage(montage_name()).get_positions()["ch_pos"]
    xyz = np.array([positions[name] for name in CHANNELS])
    xyz -= xyz.mean(axis=0) * np.array([1, 1, 0])  # centre left-right/front-back
    return xyz / np.linalg.norm(xyz, axis=1, keepdims=True)


def _topography(units: np.ndarray, centre: np.ndarray) -> np.ndarray:
    angle = np.arccos(np.clip(units @ (centre / np.linalg.norm(centre)), -1, 1))
    return np.exp(-0.5 * (angle / _TOPOGRAPHY_SD) ** 2)


def _rotation(rng: np.random.Generator, scale: float) -> np.ndarray:
    """A small random rotation matrix (angles N(0, scale) about each axis)."""
    ax, ay, az = rng.normal(0, scale, 3)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rx @ ry @ rz


def category_erps(
    shared: np.random.Generator, rng: np.random.Generator, config: SyntheticEEGConfig
) -> np.ndarray:
    """ERP of each category for one subject, [category, channel, time] over 0-1 s, volts."""
    units = _unit_positions() @ _rotation(rng, 0.1).T
    t = np.arange(int(_EPOCH_S * config.sfreq)) / config.sfreq
    index = {name: i for i, name in enumerate(CHANNELS)}
    gains = 1 + 0.5 * shared.standard_normal((config.n_categories, len(_COMPONENTS)))
    centres = shared.standard_normal((config.n_categories, 2, 3))
    centres[..., 2] = np.abs(centres[..., 2])  # on the upper half of the head
    erps = np.zeros((config.n_categories, len(CHANNELS), len(t)))
    for k, (names, latency, width, amplitude) in enumerate(_COMPONENTS):
        centre = _unit_positions()[[index[n] for n in names]].mean(axis=0)
        topo = _topography(units, centre)
        wave = amplitude * np.exp(-0.5 * ((t - latency) / width) ** 2)
        erps += gains[:, k, None, None] * topo[None, :, None] * wave[None, None, :]
    erps *= config.erp_uv
    wave = np.exp(-0.5 * ((t - 0.2) / 0.05) ** 2)
    for c in range(config.n_categories):
        topo = _topography(units, centres[c, 0]) - _topography(units, centres[c, 1])
        erps[c] += config.category_uv * topo[:, None] * wave[None, :]
    return erps * 1e-6


def simulate_subject(
    shared_seed: np.random.SeedSequence, rng: np.random.Generator, config: SyntheticEEGConfig
) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """One subject: data [channel, time] (V), onsets (s), categories per trial, bad channels."""
    erps = category_erps(np.random.default_rng(shared_seed), rng, config)
    n_ch, n_erp = erps.shape[1], erps.shape[2]
    order = rng.permutation(np.repeat(np.arange(config.n_categories), config.repetitions))
    gaps = config.trial_period + rng.uniform(0, 0.2, len(order))
    onsets = 1.0 + np.concatenate([[0.0], np.cumsum(gaps[:-1])])
    n_samples = int(round((onsets[-1] + _EPOCH_S + 1.0) * config.sfreq))
    freqs = np.fft.rfftfreq(n_samples, 1 / config.sfreq)
    amplitude = 1 / np.sqrt(1 + freqs**2)
    amplitude[0] = 0.0
    units = _unit_positions()
    mixing = np.exp(-0.5 * (np.arccos(np.clip(units @ units.T, -1, 1)) / 0.4) ** 2)
    mixing /= np.linalg.norm(mixing, axis=1, keepdims=True)
    signal = mixing @ spectral_noise(rng, n_ch, n_samples, amplitude) * config.background_uv
    t = np.arange(n_samples) / config.sfreq
    phase = np.cumsum(rng.normal(0, 0.05, n_samples))
    occipital = _topography(units, units[CHANNELS.index("Oz")])
    signal += config.alpha_uv * occipital[:, None] * np.sin(2 * np.pi * 10 * t + phase)[None]
    signal += config.line_uv * np.sin(2 * np.pi * config.line_freq * t)[None]
    signal *= 1e-6
    for category, onset in zip(order, onsets, strict=True):
        start = int(round((onset + rng.normal(0, 0.01)) * config.sfreq))
        signal[:, start : start + n_erp] += rng.lognormal(0, 0.2) * erps[category]
    bads = list(rng.choice(CHANNELS, size=min(config.n_bad, n_ch), replace=False))
    for name in bads:
        row = CHANNELS.index(name)
        signal[row] += 10 * config.background_uv * 1e-6 * rng.standard_normal(n_samples)
    return signal, onsets, [CATEGORIES[c] for c in order], bads


def simulate_bids(out_dir: Path, config: SyntheticEEGConfig, progress: bool = True) -> Path:
    """Simulate the dataset and write it as BIDS EEG (BrainVision) under ``out_dir``.

    Built in a temporary sibling and renamed at the end: a failed run leaves nothing behind.
    """
    import mne
    from mne_bids import BIDSPath, write_raw_bids

    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserInputError(
            f"Output directory {out_dir} already exists and is not empty; remove it or choose another"
        )
    with atomic_directory(out_dir) as tmp:
        shared, *subjects = np.random.SeedSequence(config.seed).spawn(1 + config.n_subjects)
        for index, seed in enumerate(
            tqdm(subjects, desc="simulating EEG", unit="subject", disable=not progress)
        ):
            signal, onsets, labels, bads = simulate_subject(
                shared, np.random.default_rng(seed), config
            )
            info = mne.create_info(list(CHANNELS), config.sfreq, "eeg")
            info["line_freq"] = config.line_freq
            raw = mne.io.RawArray(signal, info, verbose="error")
            raw.set_montage(montage_name(), verbose="error")
            raw.info["bads"] = bads
            raw.set_annotations(mne.Annotations(onsets, 0.5, labels))
            path = BIDSPath(subject=f"{index + 1:02d}", task=TASK, datatype="eeg", root=tmp)
            write_raw_bids(
                raw, path, format="BrainVision", allow_preload=True, overwrite=True, verbose="error"
            )
    return out_dir
