"""iEEG preprocessing throughput against reading the same recordings with mne alone.

Simulates the synthetic-ieeg BIDS dataset (catalog defaults, or --set simulator.KEY=VALUE), then
in one run and on the same files:

- ``mne_read``: ``mne.io.read_raw(path, preload=True)`` of every recording (the I/O floor);
- ``pipeline_high_gamma``: the synthetic-ieeg catalog pipeline (bipolar, notch, 70-170 Hz
  Hilbert envelope, 100 Hz, epochs, z-score), everything but writing the store;
- ``pipeline_du_in``: Du-IN's broadband preset (bipolar, 50 Hz notch, 0.5-200 Hz) at the raw
  rate, 1 s epochs.

Throughput is channel-seconds of raw recording per second of wall time (channels x duration of
every recording read). Also a sanity number for the simulator: per subject, held-out top-1 of a
logistic regression on the high-gamma epochs (100 ms bin means) of the speech channels (vSMC,
STG) against that of the other channels; chance is 1 / n_words.

    python bench/ieeg.py [--out bench/results/ieeg.json] [--set simulator.KEY=VALUE]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from mindzoo.datasets.catalog import get_dataset
from mindzoo.datasets.synthetic.ieeg import SPEECH_REGIONS, SyntheticIEEGConfig, simulate_bids
from mindzoo.pipelines.ephys import EXTENSIONS, PreparedEphys, prepare_bids_ephys
from mindzoo.pipelines.ephys.config import IEEGPipelineConfig
from mindzoo.pipelines.prepare import resolve_settings


def recordings(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*_ieeg.*") if p.suffix in EXTENSIONS)


def mne_read(root: Path) -> tuple[float, float]:
    """Seconds to load every recording with mne alone, and its channel-seconds."""
    import mne

    start = time.perf_counter()
    channel_seconds = 0.0
    for path in recordings(root):
        raw = mne.io.read_raw(path, preload=True, verbose="error")
        channel_seconds += len(raw.ch_names) * raw.n_times / raw.info["sfreq"]
    return time.perf_counter() - start, channel_seconds


def timed_pipeline(root: Path, config: IEEGPipelineConfig) -> tuple[float, PreparedEphys]:
    start = time.perf_counter()
    prepared = prepare_bids_ephys(root, config, progress=False)
    return time.perf_counter() - start, prepared


def speech_vs_other(prepared: PreparedEphys) -> dict[str, dict[str, float]]:
    """Held-out top-1 of a logistic regression on speech channels and on the others."""
    from sklearn.linear_model import LogisticRegression

    result = {}
    for subject, data in prepared.subjects.items():
        speech = np.isin(data.regions, SPEECH_REGIONS)
        train = data.trials["split"].to_numpy() == "train"
        test = data.trials["split"].to_numpy() == "test"
        labels = data.trials["stimulus_index"].to_numpy()
        width = max(1, int(round(0.1 * data.sfreq)))
        n_bins = data.signals.shape[2] // width
        binned = data.signals[:, :, : n_bins * width].reshape(
            *data.signals.shape[:2], n_bins, width
        )
        features = binned.mean(axis=3)
        scores = {}
        for name, mask in (("speech", speech), ("other", ~speech)):
            x = features[:, mask].reshape(len(labels), -1)
            model = LogisticRegression(C=0.05, max_iter=300).fit(x[train], labels[train])
            scores[f"{name}_top1"] = round(float(model.score(x[test], labels[test])), 4)
            scores[f"n_{name}_channels"] = int(mask.sum())
        scores["chance"] = round(1 / len(np.unique(labels)), 4)
        result[subject] = scores
    return result


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    names = ["mne_read", "pipeline_high_gamma", "pipeline_du_in"]
    left.bar(names, [results[n]["channel_seconds_per_s"] for n in names])
    left.set_ylabel("channel-seconds / s")
    left.set_title("throughput")
    left.tick_params(axis="x", labelsize=8)
    subjects = sorted(results["sanity"])
    x = np.arange(len(subjects))
    for offset, key in ((-0.2, "speech_top1"), (0.2, "other_top1")):
        right.bar(x + offset, [results["sanity"][s][key] for s in subjects], 0.4, label=key)
    right.axhline(results["sanity"][subjects[0]]["chance"], color="k", ls="--", label="chance")
    right.set_xticks(x, subjects)
    right.set_ylabel("held-out top-1")
    right.set_title("simulator sanity: logistic regression")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/ieeg.json"))
    parser.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()
    settings = resolve_settings(get_dataset("synthetic-ieeg"), args.sets)
    high_gamma = IEEGPipelineConfig(**settings["pipeline"])
    simulator = SyntheticIEEGConfig(**settings["simulator"])
    du_in = high_gamma.model_copy(update={"high_gamma": False, "sfreq": simulator.sfreq})

    results: dict = {"machine": platform.platform(), "simulator": settings["simulator"]}
    with tempfile.TemporaryDirectory(prefix="bench-ieeg-") as tmp:
        start = time.perf_counter()
        root = simulate_bids(Path(tmp) / "bids", simulator, progress=True)
        results["simulate_seconds"] = round(time.perf_counter() - start, 2)
        read_seconds, channel_seconds = mne_read(root)
        results["channel_seconds"] = round(channel_seconds, 1)
        results["mne_read"] = {"seconds": round(read_seconds, 2)}
        for name, config in (("pipeline_high_gamma", high_gamma), ("pipeline_du_in", du_in)):
            seconds, prepared = timed_pipeline(root, config)
            shapes = {s: list(d.signals.shape) for s, d in prepared.subjects.items()}
            results[name] = {"seconds": round(seconds, 2), "store_shapes": shapes}
            if name == "pipeline_high_gamma":
                results["sanity"] = speech_vs_other(prepared)
            del prepared
    for name in ("mne_read", "pipeline_high_gamma", "pipeline_du_in"):
        results[name]["channel_seconds_per_s"] = round(channel_seconds / results[name]["seconds"])
    for name in ("pipeline_high_gamma", "pipeline_du_in"):
        results[name]["x_mne_read_time"] = round(
            results[name]["seconds"] / results["mne_read"]["seconds"], 2
        )
    # Du-IN training throughput (samples/s, FLOP utilisation) is measured by bench/duin_train.py
    # on the store this pipeline writes; a function of the du-in module can add it here as
    # results["du_in_training"] when one benchmark JSON should hold both.
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    plot(results, args.out.with_suffix(".png"))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
