"""What checking chunks against the manifest costs: a first full read of a subject's signals
through ``TensorStore`` (every chunk hashed once) against the same read through a plain Zarr
``LocalStore``, alternating, in one process. Prints and writes JSON (medians, MB/s, the ratio).

    python bench/store_reads.py --trials 2000 --voxels 15000 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import zarr

from mindzoo.datasets.store import StoreWriter, TensorStore


def build(root: Path, n_trials: int, n_voxels: int, seed: int) -> Path:
    """A one-subject store of Gaussian float32 signals (compresses like real betas: hardly)."""
    rng = np.random.default_rng(seed)
    signals = rng.standard_normal((n_trials, n_voxels), dtype=np.float32)
    trials = pd.DataFrame(
        {
            "stimulus_index": np.arange(n_trials) % 10,
            "session": 1,
            "run": 1,
            "repetition": 0,
            "split": ["train"] * n_trials,
        }
    )
    with StoreWriter(root, "ab" * 32) as writer:
        ids = [f"s{i}" for i in range(10)]
        writer.write_stimuli(np.zeros((10, 4, 4, 3), np.uint8), ids, ["x"] * 10, ["train"] * 10)
        ijk = np.zeros((n_voxels, 3), np.int32)
        writer.write_subject("sub-01", signals, trials, "voxels", {"ijk": ijk}, {})
        return writer.commit({"dataset": "bench", "modality": "fmri"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--voxels", type=int, default=15000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/store_reads.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        version = build(Path(tmp) / "store", args.trials, args.voxels, args.seed)
        n_bytes = args.trials * args.voxels * 4
        times: dict[str, list[float]] = {"checked": [], "plain": []}
        for _ in range(args.repeats):
            for kind in times:
                start = time.perf_counter()
                if kind == "checked":
                    values = TensorStore.open(version).signals("sub-01")[:]
                else:
                    store = zarr.storage.LocalStore(str(version), read_only=True)
                    values = zarr.open_group(store, mode="r")["subjects/sub-01/signals"][:]
                times[kind].append(time.perf_counter() - start)
                assert values.shape == (args.trials, args.voxels)
    median = {kind: statistics.median(t) for kind, t in times.items()}
    result = {
        "trials": args.trials,
        "voxels": args.voxels,
        "mb": n_bytes / 1e6,
        "repeats": args.repeats,
        "seconds": times,
        "median_s": median,
        "mb_per_s": {kind: n_bytes / 1e6 / s for kind, s in median.items()},
        "checked_over_plain": median["checked"] / median["plain"],
    }
    print(json.dumps({k: v for k, v in result.items() if k != "seconds"}, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
