"""A learnable toy store (`write_toy_store`) and its layout constants, shared by the view,
trainer and model tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mindzoo.datasets.store import StoreWriter, TensorStore

TOY_TARGETS = {"global": "toy/global", "spatial": "toy/spatial"}
TOY_VOXELS = {"sub-01": 20, "sub-02": 30, "sub-03": 25}


def write_toy_store(
    store_dir: Path,
    n_train: int = 48,
    n_val: int = 0,
    n_test: int = 6,
    noise: float = 0.1,
    seed: int = 0,
) -> TensorStore:
    """A learnable toy store: voxels = features @ W_subject + noise, subjects of 20/30/25 voxels.

    Each subject sees ``n_train`` training trials (stimuli drawn from a pool that sub-01 and
    sub-02 share, so some images are seen by two subjects, some twice), ``n_val`` trials of a
    store val split when > 0, and the ``n_test`` shared test stimuli three times each.
    Features: ``toy/global`` [8] and ``toy/spatial`` [4, 3].
    """
    rng = np.random.default_rng(seed)
    n_pool = 200
    n_stim = n_pool + n_test
    global_features = rng.standard_normal((n_stim, 8)).astype(np.float32) * 2 + 1
    spatial = rng.standard_normal((n_stim, 4, 3)).astype(np.float32)
    test_stim = np.arange(n_pool, n_stim)
    with StoreWriter(store_dir, f"{seed:02d}" * 32) as writer:
        writer.write_stimuli(
            None,
            [f"img{i}" for i in range(n_stim)],
            ["x"] * n_stim,
            ["train"] * n_pool + ["test"] * n_test,
        )
        writer.write_features("toy", {"global": global_features, "spatial": spatial})
        for s, (subject, n_vox) in enumerate(TOY_VOXELS.items()):
            # sub-01 and sub-02 draw from the same 60 images; sub-03 from its own
            pool = np.arange(60) if s < 2 else np.arange(100, 200)
            train_stim = rng.choice(pool, size=n_train)
            val_stim = rng.choice(np.arange(60, 100), size=n_val, replace=False)
            stim = np.concatenate([train_stim, val_stim, np.repeat(test_stim, 3)])
            split = ["train"] * n_train + ["val"] * n_val + ["test"] * (3 * n_test)
            reps = np.concatenate([np.zeros(n_train + n_val, int), np.tile([0, 1, 2], n_test)])
            weights = rng.standard_normal((8 + 12, n_vox)).astype(np.float32) / 4
            clean = np.concatenate([global_features[stim], spatial[stim].reshape(len(stim), -1)], 1)
            signals = clean @ weights + noise * rng.standard_normal((len(stim), n_vox))
            trials = pd.DataFrame(
                {
                    "stimulus_index": stim,
                    "session": 1,
                    "run": 1,
                    "repetition": reps,
                    "split": split,
                }
            )
            writer.write_subject(
                subject,
                signals.astype(np.float32),
                trials,
                "voxels",
                {"ijk": np.zeros((n_vox, 3), dtype=np.int32)},
                {},
            )
        writer.commit({"dataset": "toy", "config": {}})
    return TensorStore.open(store_dir)
