"""A tiny ephys store in the ieeg schema, written directly with StoreWriter (no BIDS, no MNE).

Each subject has ``n_channels`` channels; the first ``n_informative`` carry a class-specific
spatio-temporal pattern (a smooth bump whose latency and channel weights depend on the class),
scaled by ``signal``; all channels add white noise. Splits are per trial, label-stratified.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mindzoo.datasets.store import StoreWriter


def write_ephys_store(
    out: Path,
    n_subjects: int = 2,
    n_classes: int = 4,
    trials_per_class: int = 20,
    n_channels: tuple[int, ...] = (6, 8),
    n_informative: int = 4,
    sfreq: float = 100.0,
    seconds: float = 1.0,
    signal: float = 1.5,
    seed: int = 0,
) -> Path:
    """Write the store to ``out`` and return it (a store directory with CURRENT)."""
    rng = np.random.default_rng(seed)
    n_times = int(round(seconds * sfreq))
    t = np.arange(n_times) / sfreq
    with StoreWriter(out, f"ephys-test-{seed}-{n_subjects}-{n_classes}-{sfreq}") as writer:
        ids = [f"word-{k:02d}" for k in range(n_classes)]
        writer.write_stimuli(None, ids, [f"w{k}" for k in range(n_classes)], ["train"] * n_classes)
        for s in range(n_subjects):
            n_ch = n_channels[s % len(n_channels)]
            weights = rng.normal(size=(n_classes, n_informative))
            latency = rng.uniform(0.2, 0.8, size=n_classes) * seconds
            labels = np.repeat(np.arange(n_classes), trials_per_class)
            rng.shuffle(labels)
            x = rng.normal(size=(len(labels), n_ch, n_times)).astype(np.float32)
            bump = np.exp(-0.5 * ((t[None, :] - latency[:, None]) / (0.08 * seconds)) ** 2)
            x[:, :n_informative] += signal * (
                weights[labels][:, :, None] * bump[labels][:, None, :]
            ).astype(np.float32)
            split = np.empty(len(labels), dtype=object)
            for k in range(n_classes):  # 60/20/20 per class
                rows = np.flatnonzero(labels == k)
                n_val = n_test = max(1, len(rows) // 5)
                split[rows] = "train"
                split[rows[:n_val]] = "val"
                split[rows[n_val : n_val + n_test]] = "test"
            trials = pd.DataFrame(
                {
                    "stimulus_index": labels.astype(np.int64),
                    "session": ["1"] * len(labels),
                    "run": np.ones(len(labels), dtype=np.int64),
                    "repetition": np.zeros(len(labels), dtype=np.int64),
                    "split": split,
                    "label": [f"w{k}" for k in labels],
                    "onset": np.arange(len(labels), dtype=np.float64) * 3.0,
                }
            )
            writer.write_subject(
                f"sub-{s + 1:02d}",
                x,
                trials,
                axis_name="channels",
                axis_arrays={
                    "xyz": np.full((n_ch, 3), np.nan, dtype=np.float32),
                    "region": np.zeros(n_ch, dtype=np.int16),
                },
                axis_attrs={
                    "names": [f"A{c + 1}-A{c + 2}" for c in range(n_ch)],
                    "types": ["seeg"] * n_ch,
                    "region_names": ["vSMC"],
                    "sfreq": sfreq,
                    "tmin": 0.0,
                    "coord_frame": "unknown",
                    "bads_dropped": [],
                },
            )
        writer.commit({"dataset": "ephys-test", "modality": "ieeg", "pipeline": "ieeg"})
    return out
