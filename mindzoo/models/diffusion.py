"""`diffusion`: the embedded reconstruction backend's model, trained with `train diffusion`.

A zoo family with its own training loop (``train_fn``): it learns images from features, not
features from brains, so it reads the store's stimulus images and their cached condition
features (training split only; the test images are never seen) instead of subjects' signals.

    braindecode-cli train diffusion --store STORE [--out DIR] [--set model.K=V --set trainer.K=V]

Settings: configs/models/diffusion.yaml (``model:`` = :class:`EmbeddedConfig`, ``trainer:`` =
:class:`EmbeddedTrainConfig`) + ``--set``. Without ``--out`` the model goes into the store's
cache, ``STORE/cache/diffusion-<key>``, where ``key`` hashes the store version and the settings;
an existing finished directory with the same key is reused and nothing is trained (a cache hit).
`reconstruct --backend embedded` finds the default-settings model there by itself.

Diffusers is imported only when a model is built (inside :mod:`mindzoo.reconstruction.embedded`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mindzoo.atomic import atomic_directory
from mindzoo.config import apply_overrides, config_hash, configs_dir, load_yaml, validate
from mindzoo.datasets.store import TensorStore
from mindzoo.errors import UserInputError
from mindzoo.models.registry import register_model
from mindzoo.reconstruction.embedded import (
    CONFIG_FILE,
    EmbeddedConfig,
    EmbeddedTrainConfig,
    count_parameters,
)

NAME = "diffusion"
METRICS_FILE = "metrics.json"
PREVIEW_ITEMS = 8  # training images shown in samples.png


def resolve_settings(overrides: list[str]) -> tuple[EmbeddedConfig, EmbeddedTrainConfig]:
    """configs/models/diffusion.yaml + config defaults + ``--set`` overrides, validated."""
    preset_path = configs_dir() / "models" / f"{NAME}.yaml"
    preset = load_yaml(preset_path) if preset_path.is_file() else {}
    unknown = set(preset) - {"name", "model", "trainer"}
    if unknown:
        raise UserInputError(
            f"Unknown section(s) {sorted(unknown)} in {preset_path}; use model: and trainer:"
        )
    settings = {
        "model": validate(EmbeddedConfig, preset.get("model", {}), f"{preset_path} (model:)"),
        "trainer": validate(
            EmbeddedTrainConfig, preset.get("trainer", {}), f"{preset_path} (trainer:)"
        ),
    }
    settings = apply_overrides(
        {k: v.model_dump(mode="json") for k, v in settings.items()}, overrides
    )
    model = validate(EmbeddedConfig, settings["model"], f"model {NAME} (model.*)")
    trainer = validate(EmbeddedTrainConfig, settings["trainer"], f"model {NAME} (trainer.*)")
    model.check()
    return model, trainer


def cache_key(store: TensorStore, model: EmbeddedConfig, trainer: EmbeddedTrainConfig) -> str:
    """Hash of what determines the trained weights: store version and settings."""
    return config_hash(
        {
            "store_config_hash": store.manifest["config_hash"],
            "model": model.model_dump(mode="json"),
            "trainer": trainer.model_dump(mode="json"),
        }
    )


def store_cache_dir(store: TensorStore) -> Path:
    """``STORE/cache`` beside ``CURRENT`` and ``versions/`` (never inside a checksummed version)."""
    if store.path.parent.name != "versions":
        raise UserInputError(
            f"Store {store.path} is a bare version directory with no cache; give the diffusion "
            "model's directory explicitly (train diffusion --out DIR, reconstruct --weights DIR)"
        )
    return store.path.parent.parent / "cache"


def cached_weights(store: TensorStore, overrides: list[str] | None = None) -> Path:
    """Where `train diffusion --store STORE [--set ...]` (no --out) puts its model."""
    model, trainer = resolve_settings(overrides or [])
    return store_cache_dir(store) / f"{NAME}-{cache_key(store, model, trainer)[:12]}"


def is_finished(directory: Path, key: str) -> bool:
    """True when ``directory`` holds a finished model trained with cache key ``key``."""
    config_path = Path(directory) / CONFIG_FILE
    if not (config_path.is_file() and (Path(directory) / METRICS_FILE).is_file()):
        return False
    return json.loads(config_path.read_text()).get("cache_key") == key


def train_diffusion(
    store_path: Path,
    out: Path | None,
    subjects: list[str] | None = None,
    overrides: list[str] | None = None,
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Train the embedded diffusion model on the store's training images; returns its directory.

    ``out`` None = the store's cache. A finished directory with the same store version and
    settings is returned as it is (nothing trained); another existing ``out`` is refused.
    The directory appears atomically: ``model.safetensors``, ``config.json``, ``metrics.json``
    (training facts, ``cache_hit``) and ``samples.png`` (training images vs. generated).
    """
    if subjects:
        raise UserInputError(
            "train diffusion learns from the stimulus images, not from subjects; drop --subjects"
        )
    if resume:
        raise UserInputError("train diffusion cannot --resume; run it again without --resume")
    model_cfg, train_cfg = resolve_settings(overrides or [])
    store = TensorStore.open(store_path)
    key = cache_key(store, model_cfg, train_cfg)
    out = Path(out) if out is not None else store_cache_dir(store) / f"{NAME}-{key[:12]}"
    if is_finished(out, key):
        return out
    if out.exists() and any(out.iterdir()):
        raise UserInputError(
            f"{out} exists and holds something else than this store's diffusion model with "
            "these settings; choose another --out"
        )
    images, conditions = training_data(store, model_cfg)
    from mindzoo.reconstruction.embedded import save_embedded, train_embedded

    model, facts = train_embedded(images, conditions, model_cfg, train_cfg, progress=progress)
    with atomic_directory(out) as tmp:
        save_embedded(
            model,
            tmp,
            {
                "trainer": train_cfg.model_dump(mode="json"),
                "cache_key": key,
                "store": str(store.path.resolve()),
                "store_config_hash": store.manifest["config_hash"],
                "dataset": store.dataset,
            },
        )
        _write_preview(tmp / "samples.png", model, images, conditions)
        metrics = {"model": NAME, "dataset": store.dataset, "training": facts}
        (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    return out


def training_data(store: TensorStore, config: EmbeddedConfig) -> tuple[np.ndarray, np.ndarray]:
    """Training-split stimulus images uint8 [n, h, w, 3] and their conditions float32 [n, d]."""
    rows = np.flatnonzero(np.asarray(store.stimulus_splits) == "train")
    if not len(rows):
        raise UserInputError(f"Store {store.path} has no training-split stimuli to learn from")
    features = store.features(config.condition_space, config.condition_kind)
    images = np.asarray(store.images().get_orthogonal_selection((rows,)))
    conditions = np.asarray(features.get_orthogonal_selection((rows,)), dtype=np.float32)
    return images, conditions.reshape(len(rows), -1)


def _write_preview(path: Path, model: Any, images: np.ndarray, conditions: np.ndarray) -> None:
    """Two rows: training images, and what the model generates from their conditions."""
    from PIL import Image

    from mindzoo.reconstruction.base import GenerationSettings, resize_images
    from mindzoo.reconstruction.embedded import EmbeddedBackend

    n = min(PREVIEW_ITEMS, len(images))
    generated = EmbeddedBackend(model).generate(conditions[:n], GenerationSettings(steps=20))
    truth = resize_images(images[:n], model.config.image_size)
    grid = np.concatenate([np.concatenate(list(truth), 1), np.concatenate(list(generated), 1)], 0)
    Image.fromarray(grid).save(path)


def _build(config: EmbeddedConfig) -> Any:
    """An untrained model for a 1280-d condition (efficientnet-lite0 global), for `models`."""
    from mindzoo.reconstruction.embedded import EmbeddedDiffusion

    return EmbeddedDiffusion(config, condition_dim=1280)


register_model(
    NAME,
    config_cls=EmbeddedConfig,
    description=(
        "Embedded conditional pixel diffusion (UNet, classifier-free guidance) for "
        "`reconstruct --backend embedded`; trains on the store's training images"
    ),
    factory=_build,
    count_parameters=count_parameters,
    train_fn=train_diffusion,
)
