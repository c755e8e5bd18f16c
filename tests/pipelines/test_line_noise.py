"""Line noise is notched at the recording's own frequency: BIDS ``PowerLineFrequency`` (60 Hz in
American data) is read from the sidecar, ``pipeline.line_freq`` overrides it, and the summary
and ``metrics.json`` say which was used."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from factories.cli import cli, sets

from mindzoo.datasets.store import TensorStore
from mindzoo.pipelines.ephys.config import EEGPipelineConfig
from mindzoo.pipelines.ephys.signal import line_frequency

AMERICAN = [
    "simulator.n_subjects=1",
    "simulator.n_categories=2",
    "simulator.repetitions=10",
    "simulator.line_freq=60",
    "simulator.line_uv=20",
    "pipeline.h_freq=90",  # a band that holds 60 Hz, so only the notch can remove it
    "pipeline.reference=none",  # the simulated hum is common to all channels: a re-reference
    # would cancel it (real hum is not that uniform)
]


def _line_ratio(store_dir: Path, freq: float) -> float:
    """Power at ``freq`` over the mean of 5-10 Hz either side, averaged over trials and channels
    of the stored epochs (1 s at 250 Hz: 1 Hz bins)."""
    store = TensorStore.open(store_dir)
    signals = np.asarray(store.signals("sub-01")[:], dtype=np.float64)
    sfreq = store.axis("sub-01")[1]["sfreq"]
    power = (np.abs(np.fft.rfft(signals, axis=-1)) ** 2).mean(axis=(0, 1))
    freqs = np.fft.rfftfreq(signals.shape[-1], 1 / sfreq)
    at = power[np.argmin(np.abs(freqs - freq))]
    side = (np.abs(freqs - freq) >= 5) & (np.abs(freqs - freq) <= 10)
    return float(at / power[side].mean())


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("line-noise")
    auto, forced = root / "auto", root / "fifty"
    assert cli("prepare", "synthetic-eeg", "--out", str(auto), *sets(AMERICAN)) == 0
    args = ["prepare", "synthetic-eeg", "--out", str(forced)]
    assert cli(*args, *sets([*AMERICAN, "pipeline.line_freq=50"])) == 0
    return {"auto": auto, "fifty": forced}


def test_the_sidecar_frequency_is_notched_and_said(prepared: dict[str, Path]) -> None:
    metrics = json.loads((prepared["auto"] / "metrics.json").read_text())
    assert metrics["subjects"]["sub-01"]["line_noise"] == "60 Hz (PowerLineFrequency)"
    assert _line_ratio(prepared["auto"], 60.0) < 3.0  # notched to the neighbours' level


def test_the_setting_overrides_the_sidecar(prepared: dict[str, Path]) -> None:
    metrics = json.loads((prepared["fifty"] / "metrics.json").read_text())
    assert metrics["subjects"]["sub-01"]["line_noise"] == "50 Hz (pipeline.line_freq)"
    assert _line_ratio(prepared["fifty"], 60.0) > 30.0  # 60 Hz left in: what the user asked
    assert _line_ratio(prepared["fifty"], 60.0) > 10 * _line_ratio(prepared["auto"], 60.0)


def test_line_frequency_resolution() -> None:
    auto = EEGPipelineConfig()
    assert line_frequency(60.0, auto) == (60.0, "60 Hz (PowerLineFrequency)")
    freq, said = line_frequency(None, auto)
    assert freq == 50.0 and "no PowerLineFrequency" in said and "pipeline.line_freq" in said
    assert line_frequency(60.0, EEGPipelineConfig(line_freq=50.0))[0] == 50.0
    assert line_frequency(60.0, EEGPipelineConfig(line_freq=None)) == (
        None,
        "no notch (pipeline.line_freq null)",
    )
    with pytest.raises(ValueError, match="line_freq"):
        EEGPipelineConfig(line_freq=-50.0)
