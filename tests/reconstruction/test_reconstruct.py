"""`train diffusion` (store cache) and `reconstruct` end to end on a tiny store and decoder run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from factories.cli import TINY, cli, error_lines, sets
from PIL import Image
from safetensors.numpy import load_file, save_file

from mindzoo.datasets.store import TensorStore
from mindzoo.reconstruction.base import resize_images

# A 16x16 model that trains in seconds; the real preset is mindzoo/configs/models/diffusion.yaml.
DIFFUSION = [
    "model.image_size=16",
    "model.channels=[16,32]",
    "model.norm_groups=8",
    "model.attention_head_dim=8",
    "trainer.steps=30",
    "trainer.batch_size=8",
]
DECODER = ["trainer.epochs=3", "trainer.batch_size=32", "model.hidden_dim=64"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reconstruct") / "store"
    assert cli("prepare", "synthetic-fmri", "--out", str(out), "--seed", "3", *sets(TINY)) == 0
    return out


@pytest.fixture(scope="module")
def decoder_run(tiny_store: Path) -> Path:
    run = tiny_store.parent / "mindeye"
    args = ["train", "mindeye-mlp", "--store", str(tiny_store), "--out", str(run), *sets(DECODER)]
    assert cli(*args) == 0
    return run


@pytest.fixture(scope="module")
def weights(tiny_store: Path) -> Path:
    assert cli("train", "diffusion", "--store", str(tiny_store), *sets(DIFFUSION)) == 0
    (cached,) = (tiny_store / "cache").iterdir()
    return cached


def test_train_diffusion_caches_in_the_store_and_reuses_it(tiny_store: Path, weights: Path) -> None:
    assert weights.name.startswith("diffusion-")
    for name in ("model.safetensors", "config.json", "metrics.json", "samples.png"):
        assert (weights / name).is_file()
    config = json.loads((weights / "config.json").read_text())
    store = TensorStore.open(tiny_store)
    assert config["store_config_hash"] == store.manifest["config_hash"]
    assert config["model"]["image_size"] == 16 and config["trainer"]["steps"] == 30
    training = json.loads((weights / "metrics.json").read_text())["training"]
    assert training["n_train_images"] == store.stimulus_splits.count("train") > 0
    assert len(training["history"]) == 10
    assert Image.open(weights / "samples.png").size == (8 * 16, 2 * 16)

    stamp = (weights / "model.safetensors").stat().st_mtime_ns
    assert cli("train", "diffusion", "--store", str(tiny_store), *sets(DIFFUSION)) == 0
    assert list((tiny_store / "cache").iterdir()) == [weights]
    assert (weights / "model.safetensors").stat().st_mtime_ns == stamp  # a hit trains nothing
    # the same settings into an explicit --out that holds them: also a hit
    args = ["train", "diffusion", "--store", str(tiny_store), "--out", str(weights)]
    assert cli(*args, *sets(DIFFUSION)) == 0
    assert (weights / "model.safetensors").stat().st_mtime_ns == stamp
    # other settings into that --out: refused, nothing touched
    assert cli(*args, *sets([*DIFFUSION[:-1], "trainer.batch_size=4"])) == 2
    assert (weights / "model.safetensors").stat().st_mtime_ns == stamp
    assert cli("train", "diffusion", "--store", str(tiny_store), "--subjects", "01") == 2


def _metric_ranges(table: dict) -> None:
    assert -1.0 <= table["PixCorr"] <= 1.0
    assert -1.0 <= table["SSIM"] <= 1.0
    assert 0.0 <= table["efficientnet-lite0 2-way"] <= 1.0
    assert 0.0 <= table["efficientnet-lite0 distance"] <= 2.0


def test_reconstruct_writes_images_grid_features_and_metrics(
    tiny_store: Path, decoder_run: Path, weights: Path
) -> None:
    out = tiny_store.parent / "recon"
    args = ["reconstruct", str(decoder_run), "--store", str(tiny_store), "--weights", str(weights)]
    assert cli(*args, "--steps", "3", "--seed", "7", "--out", str(out)) == 0
    store = TensorStore.open(tiny_store)
    predictions = load_file(str(decoder_run / "predictions.safetensors"))
    features = load_file(str(out / "features.safetensors"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["lowlevel_init"] is False and metrics["settings"]["strength"] == 1.0
    assert metrics["settings"]["steps"] == 3 and metrics["settings"]["seed"] == 7
    for subject in ("sub-01", "sub-02"):
        stim = predictions[f"{subject}/test_stimulus_index"]
        np.testing.assert_array_equal(features[f"{subject}/test_stimulus_index"], stim)
        np.testing.assert_array_equal(
            features[f"{subject}/condition"], predictions[f"{subject}/test_pred"]
        )
        perm = features[f"{subject}/permutation"]
        assert sorted(perm) == list(range(8)) and not np.any(perm == np.arange(8))
        names = sorted(p.stem for p in (out / "images" / subject).glob("*.png"))
        assert names == sorted(store.stimulus_ids[i] for i in stim)
        assert len(list((out / "control" / subject).glob("*.png"))) == 8
        image = np.asarray(Image.open(out / "images" / subject / f"{names[0]}.png"))
        assert image.shape == (16, 16, 3)
        row = metrics["subjects"][subject]
        assert row["n_test_stimuli"] == 8
        _metric_ranges(row["real"])
        _metric_ranges(row["shuffled"])
        assert row["real"] != row["shuffled"]
    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape == (3 * 16, 8 * 16, 3)  # ground truth + 2 subjects, 8 test stimuli
    first = predictions["sub-01/test_stimulus_index"][0]
    truth = resize_images(store.images()[first : first + 1], 16)[0]
    np.testing.assert_array_equal(grid[:16, :16], truth)
    assert (out / "grid-shuffled.png").is_file()


def test_reconstruct_starts_from_the_predicted_lowlevel_image(
    tiny_store: Path, decoder_run: Path, weights: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(decoder_run, run, ignore=shutil.ignore_patterns("checkpoints", "eval"))
    config = json.loads((run / "config.json").read_text())
    config["settings"]["data"]["targets"] = {
        "global": "efficientnet-lite0/global",
        "lowlevel": "pixels/lowres",
    }
    (run / "config.json").write_text(json.dumps(config))
    predictions = load_file(str(run / "predictions.safetensors"))
    rng = np.random.default_rng(0)
    for subject in ("sub-01", "sub-02"):  # values outside [0, 1] are clipped
        predictions[f"{subject}/outputs/lowlevel"] = rng.uniform(
            -0.2, 1.2, (8, 28 * 28 * 3)
        ).astype(np.float32)
    save_file(predictions, str(run / "predictions.safetensors"))
    out = tmp_path / "recon"
    args = ["reconstruct", str(run), "--store", str(tiny_store), "--weights", str(weights)]
    assert cli(*args, "--strength", "0", "--no-control", "--out", str(out)) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["lowlevel_init"] is True and metrics["settings"]["strength"] == 0.0
    assert "shuffled" not in metrics["subjects"]["sub-01"] and not (out / "control").exists()
    features = load_file(str(out / "features.safetensors"))
    init = np.clip(predictions["sub-02/outputs/lowlevel"], 0, 1).reshape(8, 28, 28, 3)
    expected = resize_images((init * 255).round().astype(np.uint8), 16)
    np.testing.assert_array_equal(features["sub-02/lowlevel"].reshape(8, 28, 28, 3).max(), 255)
    store = TensorStore.open(tiny_store)
    for row, index in enumerate(features["sub-02/test_stimulus_index"]):
        image = np.asarray(
            Image.open(out / "images" / "sub-02" / f"{store.stimulus_ids[index]}.png")
        )
        np.testing.assert_array_equal(image, expected[row])  # strength 0: the init image itself


def test_reconstruct_bad_input_exits_2_and_writes_nothing(
    tiny_store: Path, decoder_run: Path, weights: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    base = ["reconstruct", str(decoder_run), "--out", str(out)]
    cases = {
        "unknown backend": [*base, "--store", str(tiny_store), "--backend", "nope"],
        "missing store": [*base, "--store", str(tmp_path / "nostore"), "--weights", str(weights)],
        "no cached model": [*base, "--store", str(tiny_store)],
        "bad strength": [
            *base,
            "--store",
            str(tiny_store),
            "--weights",
            str(weights),
            "--strength",
            "2",
        ],
    }
    expected = {
        "unknown backend": "Unknown backend 'nope'",
        "missing store": "No store at",
        "no cached model": "braindecode-cli train diffusion --store",
        "bad strength": "--strength must be in [0, 1]",
    }
    for name, args in cases.items():
        capsys.readouterr()
        assert cli(*args) == 2, name
        lines = error_lines(capsys.readouterr().err)
        assert len(lines) == 1 and expected[name] in lines[0], (name, lines)
        assert not out.exists(), name

    run = tmp_path / "pixels-run"
    shutil.copytree(decoder_run, run, ignore=shutil.ignore_patterns("checkpoints", "eval"))
    config = json.loads((run / "config.json").read_text())
    config["settings"]["feature_space"] = "pixels"
    config["settings"]["data"]["targets"] = {"global": "pixels/global"}
    (run / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    args = ["reconstruct", str(run), "--store", str(tiny_store), "--weights", str(weights)]
    assert cli(*args, "--out", str(out)) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert "predicts pixels/global" in line and "conditioned on efficientnet-lite0/global" in line
    assert not out.exists()
