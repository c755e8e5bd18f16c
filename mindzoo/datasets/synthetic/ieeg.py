"""``synthetic-ieeg``: a seeded sEEG word-reading simulator written as BIDS iEEG (mne-bids).

Generative model (all units volts, times seconds; every random draw comes from
``numpy.random.SeedSequence(seed)``, one child per subject, so a seed gives the same bytes):

- **Montage.** Each subject has ``n_shafts`` (uniform in ``shafts``) depth electrodes of
  ``n_contacts`` (uniform in ``contacts``) contacts 3.5 mm apart, named like clinical sEEG
  (``LA1 .. LA12``, ``LB1`` ...). Shafts enter the left hemisphere laterally and run medially
  (direction (1, 0, 0) plus N(0, 0.25) jitter in y and z) from next to a target region centre
  (MNI-like mm): two shafts target vSMC (-58, -8, 28) and STG (-60, -22, 6), a third targets one
  of them, the rest MTG (-62, -35, -8), MFG (-40, 28, 36), insula (-37, 2, 4) or hippocampus
  (-28, -22, -12). A contact within 10 mm of a region centre carries that region's label,
  otherwise ``white-matter`` (electrodes.tsv column ``region``; ``group`` is the shaft).
- **Background.** Per contact Gaussian noise with power spectrum 1 / (1 + f^2) (a 1/f^2 slope
  above a 1 Hz knee, the aperiodic slope of intracranial LFP) of RMS ``background_uv``, half of
  its variance shared by the contacts of a shaft (volume conduction, removed by bipolar
  reference), plus a white floor of 10 % of that RMS. Drawn as random Fourier coefficients.
- **High gamma.** Per contact a carrier of noise band-limited to 70-170 Hz (4th-order
  Butterworth magnitude) of RMS ``hg_uv``, multiplied by an envelope 1 + m(t). On each trial of word w,
  speech contacts (vSMC, STG) add m_c(t) = g * a * sum_s relu(L_c . z_{w,s}) * G(t - t_s - d_c):
  three syllable segments s at t_s = 0.25, 0.45, 0.65 s after the cue (Gaussian G of 70 ms
  s.d.), word features z_{w,s} ~ N(0, I_8), contact loadings L_c ~ N(0, I_8 / 8), a contact lag
  d_c (vSMC ~ U(-0.03, 0.03), STG 0.1 s later: auditory feedback), gain g = ``hg_gain`` and a
  per-trial amplitude a ~ lognormal(0, 0.25) and onset jitter N(0, ``jitter_s``). Other cortical
  contacts (MTG, MFG, insula, hippocampus) get the same cue response on every trial (a 0.15 s
  bump at 0.2 s): task-related but carrying no word information. White matter gets nothing.
- **Line noise.** 50 Hz and its harmonics 100/150 Hz (amplitudes 1, 0.3, 0.1 x ``line_uv``),
  shared by all contacts with per-contact gains U(0.8, 1.2).
- **Bad channels.** ``n_bad`` contacts per subject are flat (1e-3 x) or 20x noisy and marked
  ``status=bad`` in channels.tsv.
- **Trials.** ``repetitions`` trials per word in a random order, one cue every ``trial_period``
  seconds plus U(0, 0.1) s, split over ``n_runs`` runs; events.tsv ``trial_type`` is the word.
- **Free speech** (task ``speech``, ``speech_seconds`` per subject, 0 = none): one unlabeled
  recording of the same contacts in which the subject keeps speaking words outside the
  vocabulary: an utterance every U(0.8, 1.6) s whose syllable features z_s ~ N(0, I_8) are fresh
  for each utterance, through the same loadings, lags and gain (no cue response). Du-IN
  pre-trains on hours of such unlabeled recordings; the labeled trials are a small part. Drawn
  from its own seed stream, so it never changes the word-reading runs of a seed.

Words are 61 (``n_words``) fixed two-syllable pseudo-words (``bado``, ``kesu`` ...), the same
for every seed. The simulator knows nothing of any decoding model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tqdm.auto import tqdm

from mindzoo.atomic import atomic_directory
from mindzoo.datasets.synthetic.spectral import spectral_noise
from mindzoo.errors import UserInputError

TASK = "wordreading"
SPEECH_TASK = "speech"
SPEECH_REGIONS = ("vSMC", "STG")
REGION_CENTRES = {
    "vSMC": (-58.0, -8.0, 28.0),
    "STG": (-60.0, -22.0, 6.0),
    "MTG": (-62.0, -35.0, -8.0),
    "MFG": (-40.0, 28.0, 36.0),
    "insula": (-37.0, 2.0, 4.0),
    "hippocampus": (-28.0, -22.0, -12.0),
}
WHITE_MATTER = "white-matter"
COORD_SYSTEM = "MNI152NLin2009aSym"
_SPACING_MM = 3.5
_REGION_RADIUS_MM = 10.0
_SYLLABLE_TIMES = (0.25, 0.45, 0.65)
_SYLLABLE_SD = 0.07
_N_FEATURES = 8
_CUE_TIME, _CUE_SD = 0.2, 0.075


class SyntheticIEEGConfig(BaseModel):
    """``simulator.*`` of synthetic-ieeg."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    n_subjects: int = Field(default=3, ge=1)
    n_words: int = Field(default=61, ge=2, le=100)
    repetitions: int = Field(default=20, ge=1)
    n_runs: int = Field(default=2, ge=1)
    shafts: tuple[int, int] = (6, 8)
    contacts: tuple[int, int] = (8, 10)
    sfreq: float = Field(default=500.0, gt=0)
    """Sampling rate of the raw recordings, Hz (500 keeps the default prepare under a minute;
    Du-IN's recordings were resampled to 1000 Hz)."""
    trial_period: float = Field(default=1.0, gt=0)
    """Seconds between cues (plus up to 0.1 s)."""
    background_uv: float = 30.0
    hg_uv: float = 3.0
    hg_gain: float = 0.5
    """Peak word-specific envelope increase (0.5: logistic regression on the speech channels'
    envelope reaches about 60 % top-1 of 61 words, all channels about 40 %, like Du-IN's data)."""
    jitter_s: float = Field(default=0.05, ge=0)
    line_freq: float = 50.0
    line_uv: float = 20.0
    n_bad: int = Field(default=2, ge=0)
    speech_seconds: float = Field(default=0.0, ge=0)
    """Length of the unlabeled free-speech recording per subject (task ``speech``), s; 0 writes
    none. Prepare it as a pre-training store with ``--set pipeline.task=speech
    pipeline.fixed_length=1.0``."""

    @model_validator(mode="after")
    def _ranges(self) -> SyntheticIEEGConfig:
        for name in ("shafts", "contacts"):
            low, high = getattr(self, name)
            if not 1 <= low <= high:
                raise ValueError(f"{name} {low, high} must be 1 <= min <= max")
        if self.shafts[0] < 3:
            raise ValueError("shafts needs at least 3 (two speech targets and one other)")
        if self.sfreq / 2 <= 170:
            raise ValueError(f"sfreq {self.sfreq} must exceed 340 Hz to carry 70-170 Hz")
        return self


def word_list(n_words: int) -> list[str]:
    """``n_words`` fixed two-syllable pseudo-words, independent of the seed."""
    consonants, vowels = "bdgklmnprstv", "aeiou"
    syllables = [c + v for c in consonants for v in vowels]
    words = [a + b for a in syllables for b in syllables if a != b]
    order = np.random.default_rng(20240511).permutation(len(words))[:n_words]
    return [words[i] for i in sorted(order)]


def region_of(point: np.ndarray) -> str:
    """Label of the region whose centre is within 10 mm of ``point``, else white matter."""
    names = list(REGION_CENTRES)
    distances = np.linalg.norm(np.array([REGION_CENTRES[n] for n in names]) - point, axis=1)
    nearest = int(np.argmin(distances))
    return names[nearest] if distances[nearest] <= _REGION_RADIUS_MM else WHITE_MATTER


def make_montage(rng: np.random.Generator, config: SyntheticIEEGConfig) -> pd.DataFrame:
    """Contacts of one subject: name, x, y, z (mm), group (shaft), region."""
    n_shafts = int(rng.integers(config.shafts[0], config.shafts[1] + 1))
    others = ["MTG", "MFG", "insula", "hippocampus"]
    targets = ["vSMC", "STG", str(rng.choice(SPEECH_REGIONS))]
    targets += [str(rng.choice(others)) for _ in range(n_shafts - 3)]
    rows = []
    for shaft, target in enumerate(targets):
        name = "L" + chr(ord("A") + shaft)
        n_contacts = int(rng.integers(config.contacts[0], config.contacts[1] + 1))
        direction = np.array([1.0, *rng.normal(0, 0.25, 2)])
        direction /= np.linalg.norm(direction)
        start = np.array(REGION_CENTRES[target]) + [-6.0, *rng.normal(0, 3, 2)]
        for k in range(n_contacts):
            point = start + k * _SPACING_MM * direction
            rows.append(
                {
                    "name": f"{name}{k + 1}",
                    "x": point[0],
                    "y": point[1],
                    "z": point[2],
                    "group": name,
                    "region": region_of(point),
                }
            )
    return pd.DataFrame(rows)


def _background(
    rng: np.random.Generator, groups: np.ndarray, n_samples: int, sfreq: float, rms: float
) -> np.ndarray:
    """1/f^2 (knee 1 Hz) noise per contact, half its variance shared per shaft, plus a white
    floor of 10 % RMS; [ch, time] of RMS about ``rms``."""
    freqs = np.fft.rfftfreq(n_samples, 1 / sfreq)
    amplitude = 1 / np.sqrt(1 + freqs**2)
    amplitude[0] = 0.0
    shafts, shaft_index = np.unique(groups, return_inverse=True)
    walks = spectral_noise(rng, len(groups) + len(shafts), n_samples, amplitude)
    local, shared = walks[: len(groups)], walks[len(groups) :]
    signal = np.float32(np.sqrt(0.5)) * local
    signal += np.float32(np.sqrt(0.5)) * shared[shaft_index]
    signal += np.float32(0.1) * rng.standard_normal(signal.shape, dtype=np.float32)
    signal *= np.float32(rms)
    return signal


def _carrier(
    rng: np.random.Generator, n_channels: int, n_samples: int, sfreq: float, rms: float
) -> np.ndarray:
    """Noise band-limited to 70-170 Hz (4th-order Butterworth magnitude), RMS ``rms``, [ch, time]."""
    freqs = np.fft.rfftfreq(n_samples, 1 / sfreq)
    with np.errstate(divide="ignore"):
        amplitude = 1 / np.sqrt(
            (1 + (70.0 / np.maximum(freqs, 1e-9)) ** 8) * (1 + (freqs / 170.0) ** 8)
        )
    return spectral_noise(rng, n_channels, n_samples, amplitude) * np.float32(rms)


def _gaussian(t: np.ndarray, centre: np.ndarray, sd: float) -> np.ndarray:
    return np.exp(-0.5 * ((t - centre) / sd) ** 2)


@dataclass(frozen=True)
class SpeechModel:
    """How one subject's contacts respond to speech: syllable-feature loadings ``[ch, 8]``, lags
    ``[ch]`` (s), the speech-contact mask ``[ch]`` and the gain."""

    loadings: np.ndarray
    lags: np.ndarray
    speech: np.ndarray
    gain: float

    def envelope(self, features: np.ndarray, sfreq: float) -> np.ndarray:
        """High-gamma envelope increments of utterances with syllable features
        ``[n, 3, 8]`` over the 1 s after their onset: ``[n, ch, time]``."""
        t = np.arange(int(round(1.0 * sfreq))) / sfreq
        patterns = np.zeros((len(features), len(self.lags), len(t)), dtype=np.float32)
        for s, time in enumerate(_SYLLABLE_TIMES):
            bumps = _gaussian(t[None, :], time + self.lags[:, None], _SYLLABLE_SD)  # [ch, time]
            weights = np.maximum(features[:, s] @ self.loadings.T, 0.0) * self.speech  # [n, ch]
            patterns += (self.gain * weights[:, :, None] * bumps[None]).astype(np.float32)
        return patterns


def word_patterns(
    rng: np.random.Generator, regions: np.ndarray, n_words: int, sfreq: float, gain: float
) -> tuple[np.ndarray, np.ndarray, SpeechModel]:
    """High-gamma envelope increments after the cue: word-specific [word, ch, time] (zero
    outside speech regions), the word-independent cue response [ch, time] (other cortex), and
    the subject's :class:`SpeechModel` that made the word patterns."""
    n_channels = len(regions)
    t = np.arange(int(round(1.0 * sfreq))) / sfreq
    features = rng.standard_normal((n_words, len(_SYLLABLE_TIMES), _N_FEATURES))
    loadings = rng.standard_normal((n_channels, _N_FEATURES)) / np.sqrt(_N_FEATURES)
    lags = rng.uniform(-0.03, 0.03, n_channels) + np.where(regions == "STG", 0.1, 0.0)
    speech = np.isin(regions, SPEECH_REGIONS)
    model = SpeechModel(loadings, lags, speech, gain)
    cortical = ~speech & (regions != WHITE_MATTER)
    cue = (cortical[:, None] * _gaussian(t[None, :], np.full((1, 1), _CUE_TIME), _CUE_SD)).astype(
        np.float32
    )
    return model.envelope(features, sfreq), cue, model


@dataclass(frozen=True)
class SimulatedSubject:
    """What the runs of one subject share: contacts, bad contacts, speech model, line gains."""

    montage: pd.DataFrame
    bads: list[str]
    model: SpeechModel
    line_gain: np.ndarray


def simulate_subject(
    rng: np.random.Generator, config: SyntheticIEEGConfig, words: list[str]
) -> tuple[SimulatedSubject, list[np.ndarray], list[pd.DataFrame]]:
    """One subject's word-reading runs: the subject, per-run data [ch, time] (V) and per-run
    events."""
    montage = make_montage(rng, config)
    regions = montage["region"].to_numpy()
    patterns, cue, model = word_patterns(rng, regions, len(words), config.sfreq, config.hg_gain)
    n_channels, n_pattern = len(montage), patterns.shape[2]
    order = rng.permutation(np.repeat(np.arange(len(words)), config.repetitions))
    runs = np.array_split(order, config.n_runs)
    line_gain = rng.uniform(0.8, 1.2, n_channels).astype(np.float32)
    bads = list(rng.choice(montage["name"], size=min(config.n_bad, n_channels), replace=False))
    data, events = [], []
    for trials in runs:
        gaps = config.trial_period + rng.uniform(0, 0.1, len(trials))
        onsets = 1.0 + np.concatenate([[0.0], np.cumsum(gaps[:-1])])
        n_samples = int(round((onsets[-1] + config.trial_period + 1.0) * config.sfreq))
        envelope = np.ones((n_channels, n_samples), dtype=np.float32)
        for word, onset in zip(trials, onsets, strict=True):
            amplitude = rng.lognormal(0.0, 0.25)
            start = int(round((onset + rng.normal(0, config.jitter_s)) * config.sfreq))
            envelope[:, start : start + n_pattern] += amplitude * patterns[word]
            cue_start = int(round(onset * config.sfreq))
            envelope[:, cue_start : cue_start + n_pattern] += cue
        data.append(_record(rng, montage, envelope, config, line_gain, bads))
        events.append(
            pd.DataFrame(
                {"onset": onsets, "duration": 1.0, "trial_type": [words[w] for w in trials]}
            )
        )
    return SimulatedSubject(montage, bads, model, line_gain), data, events


def simulate_speech(
    rng: np.random.Generator, config: SyntheticIEEGConfig, subject: SimulatedSubject
) -> tuple[np.ndarray, pd.DataFrame]:
    """The unlabeled free-speech recording of one subject: data [ch, time] (V) of
    ``speech_seconds`` and its utterance onsets (events.tsv ``trial_type`` "utterance")."""
    n_samples = int(round(config.speech_seconds * config.sfreq))
    n_pattern = int(round(1.0 * config.sfreq))
    gaps = rng.uniform(0.8, 1.6, int(config.speech_seconds / 0.8) + 1)
    onsets = 1.0 + np.concatenate([[0.0], np.cumsum(gaps)])
    onsets = onsets[onsets + 1.0 <= config.speech_seconds]
    features = rng.standard_normal((len(onsets), len(_SYLLABLE_TIMES), _N_FEATURES))
    amplitudes = rng.lognormal(0.0, 0.25, len(onsets)).astype(np.float32)
    envelope = np.ones((len(subject.montage), n_samples), dtype=np.float32)
    for chunk in range(0, len(onsets), 256):  # bounded memory: 256 utterances at a time
        patterns = subject.model.envelope(features[chunk : chunk + 256], config.sfreq)
        for k, pattern in enumerate(patterns):
            start = int(round(onsets[chunk + k] * config.sfreq))
            envelope[:, start : start + n_pattern] += amplitudes[chunk + k] * pattern
    data = _record(rng, subject.montage, envelope, config, subject.line_gain, subject.bads)
    events = pd.DataFrame({"onset": onsets, "duration": 1.0, "trial_type": "utterance"})
    return data, events


def _record(
    rng: np.random.Generator,
    montage: pd.DataFrame,
    envelope: np.ndarray,
    config: SyntheticIEEGConfig,
    line_gain: np.ndarray,
    bads: list[str],
) -> np.ndarray:
    """One recording [ch, time] (V): background + high-gamma carrier x ``envelope`` + line
    noise, bad contacts flattened or amplified. ``envelope`` is consumed."""
    n_channels, n_samples = envelope.shape
    signal = _background(
        rng, montage["group"].to_numpy(), n_samples, config.sfreq, config.background_uv
    )
    signal += _carrier(rng, n_channels, n_samples, config.sfreq, config.hg_uv) * envelope
    del envelope
    t = np.arange(n_samples, dtype=np.float32) / np.float32(config.sfreq)
    line = sum(
        a * np.sin(2 * np.pi * config.line_freq * k * t + rng.uniform(0, 2 * np.pi))
        for k, a in ((1, 1.0), (2, 0.3), (3, 0.1))
    )
    signal += config.line_uv * line_gain[:, None] * line.astype(np.float32)[None, :]
    for k, name in enumerate(bads):
        row = int(np.flatnonzero(montage["name"] == name)[0])
        signal[row] *= np.float32(1e-3 if k % 2 == 0 else 20.0)
    return signal * np.float32(1e-6)


def simulate_bids(out_dir: Path, config: SyntheticIEEGConfig, progress: bool = True) -> Path:
    """Simulate the dataset and write it as BIDS iEEG under ``out_dir``; return the root.

    Built in a temporary sibling and renamed at the end: a failed run leaves nothing behind.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserInputError(
            f"Output directory {out_dir} already exists and is not empty; remove it or choose another"
        )
    with atomic_directory(out_dir) as tmp:
        words = word_list(config.n_words)
        seeds = np.random.SeedSequence(config.seed).spawn(config.n_subjects)
        for index, seed in enumerate(
            tqdm(seeds, desc="simulating sEEG", unit="subject", disable=not progress)
        ):
            simulated, data, events = simulate_subject(np.random.default_rng(seed), config, words)
            recordings = [
                (TASK, run, d, e) for run, (d, e) in enumerate(zip(data, events, strict=True), 1)
            ]
            if config.speech_seconds > 0:  # its own stream: the word-reading runs stay the same
                speech_rng = np.random.default_rng(seed.spawn(1)[0])
                recordings.append((SPEECH_TASK, 1, *simulate_speech(speech_rng, config, simulated)))
            _write_subject(tmp, f"{index + 1:02d}", simulated, recordings, config)
    return out_dir


def _write_subject(
    root: Path,
    subject: str,
    simulated: SimulatedSubject,
    recordings: list[tuple[str, int, np.ndarray, pd.DataFrame]],
    config: SyntheticIEEGConfig,
) -> None:
    """write_raw_bids (BrainVision) per (task, run, data [ch, time] V, events) recording, then
    electrodes.tsv (with regions) and coordsystem."""
    import mne
    from mne_bids import BIDSPath, write_raw_bids

    montage = simulated.montage
    names = montage["name"].tolist()
    for task, run, signal, table in recordings:
        info = mne.create_info(names, config.sfreq, "seeg")
        info["line_freq"] = config.line_freq
        raw = mne.io.RawArray(signal, info, verbose="error")
        raw.info["bads"] = list(simulated.bads)
        raw.set_annotations(mne.Annotations(table["onset"], table["duration"], table["trial_type"]))
        path = BIDSPath(subject=subject, task=task, run=run, datatype="ieeg", root=root)
        write_raw_bids(
            raw, path, format="BrainVision", allow_preload=True, overwrite=True, verbose="error"
        )
    folder = root / f"sub-{subject}" / "ieeg"
    # mne-bids writes placeholder positions (all n/a) for a recording without a montage
    for placeholder in ("electrodes.tsv", "electrodes.json", "coordsystem.json"):
        (folder / f"sub-{subject}_{placeholder}").unlink(missing_ok=True)
    stem = f"sub-{subject}_space-{COORD_SYSTEM}"
    electrodes = montage.assign(size=5.0)[["name", "x", "y", "z", "size", "group", "region"]]
    electrodes.round(2).to_csv(folder / f"{stem}_electrodes.tsv", sep="\t", index=False)
    (folder / f"{stem}_coordsystem.json").write_text(
        json.dumps(
            {
                "iEEGCoordinateSystem": COORD_SYSTEM,
                "iEEGCoordinateUnits": "mm",
                "iEEGCoordinateSystemDescription": "simulated MNI-like space (mindzoo synthetic-ieeg)",
            },
            indent=2,
        )
    )
