"""A grid with a reconstruction backend: image cells equal a direct `reconstruct`."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from factories.cli import cli, sets

# A 16x16 embedded model that trains in seconds (as tests/reconstruction/test_reconstruct.py).
DIFFUSION = [
    "model.image_size=16",
    "model.channels=[16,32]",
    "model.norm_groups=8",
    "model.attention_head_dim=8",
    "trainer.steps=30",
    "trainer.batch_size=8",
]


def test_image_cells_equal_a_direct_reconstruction(shared_tiny_store: Path, tmp_path: Path) -> None:
    weights = tmp_path / "diffusion"
    store = str(shared_tiny_store)
    assert cli("train", "diffusion", "--store", store, "--out", str(weights), *sets(DIFFUSION)) == 0
    generation = {"steps": 3, "guidance": 2.0, "seed": 1, "batch_size": 8}
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        yaml.safe_dump(
            {
                "name": "recon",
                "stores": {"tiny": store},
                "runs": {"ridge": {"train": {"model": "ridge"}}},
                "backends": ["none", "embedded"],
                "metrics": ["features", "images"],
                "reconstruct": {**generation, "weights": {"embedded": str(weights)}},
            }
        )
    )
    out = tmp_path / "out"
    assert cli("evaluate", "--grid", str(grid), "--out", str(out), "--jobs", "2") == 0
    table = pd.read_csv(out / "results.csv")
    assert sorted(zip(table["subject"], table["backend"], strict=True)) == [
        ("sub-01", "embedded"),
        ("sub-01", "none"),
        ("sub-02", "embedded"),
        ("sub-02", "none"),
    ]
    images = table[table["backend"] == "embedded"].set_index("subject")
    assert images["two_way_id.efficientnet-lite0"].isna().all()  # image cells: image metrics
    run_dir = next((out / "runs").iterdir())
    direct = tmp_path / "direct"
    args = ["reconstruct", str(run_dir), "--store", store, "--out", str(direct)]
    args += ["--weights", str(weights), "--steps", "3", "--guidance", "2.0", "--seed", "1"]
    assert cli(*args, "--batch-size", "8") == 0
    expected = json.loads((direct / "metrics.json").read_text())["subjects"]
    for subject, row in expected.items():
        for kind in ("real", "shuffled"):
            for metric in ("PixCorr", "SSIM"):
                value = images.loc[subject, f"{kind}.{metric}"]
                # the cell ran on one thread, the direct call on two: last-bit differences
                assert value == pytest.approx(row[kind][metric], abs=1e-6)
    figures = {p.name for p in (out / "figures").iterdir()}
    assert "real.PixCorr.png" in figures
