"""`train diffusion`: the embedded reconstruction backend's model, trained on a store's images.

    braindecode-cli train diffusion --store STORE [--out DIR] [--set model.K=V --set trainer.K=V]

It learns images from features, not features from brains, so it reads the store's stimulus
images and their cached condition features (training split only; the test images are never
seen) instead of subjects' signals. Settings: mindzoo/configs/models/diffusion.yaml
(``model:`` = :class:`~mindzoo.models.diffusion.EmbeddedConfig`, ``trainer:`` =
:class:`~mindzoo.models.diffusion.EmbeddedTrainConfig`) + ``--set``. Without ``--out`` the model
goes into the store's cache (:func:`mindzoo.reconstruction.embedded.cached_weights`); an existing
finished directory with the same key is reused and nothing is trained (a cache hit).

Its loop is not the epoch trainer's: a fixed number of steps over batches drawn with replacement
from the training images, no validation split and no checkpoints (a run takes minutes), AdamW
with linear warm-up then cosine decay to 0.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from mindzoo.atomic import atomic_directory
from mindzoo.datasets.store import TensorStore
from mindzoo.errors import UserInputError
from mindzoo.models.diffusion import (
    EmbeddedConfig,
    EmbeddedDiffusion,
    EmbeddedTrainConfig,
    denoising_loss,
    noise_scheduler,
    save_embedded,
)
from mindzoo.models.trainable import count_parameters
from mindzoo.reconstruction.base import GenerationSettings, resize_images
from mindzoo.reconstruction.embedded import (
    METRICS_FILE,
    NAME,
    EmbeddedBackend,
    cache_key,
    is_finished,
    resolve_settings,
    store_cache_dir,
)

PREVIEW_ITEMS = 8  # training images shown in samples.png


def train_embedded(
    images: np.ndarray,
    conditions: np.ndarray,
    config: EmbeddedConfig,
    train: EmbeddedTrainConfig,
    progress: bool = True,
) -> tuple[EmbeddedDiffusion, dict[str, Any]]:
    """Train a model on uint8 images [n, S, S, 3] and their condition vectors [n, d].

    Images of another size are resized (bilinear) to ``config.image_size``. Returns the model
    (eval mode) and training facts: loss every 10% of the steps, seconds, images/s.
    """
    if len(images) != len(conditions) or not len(images):
        raise UserInputError(
            f"Need as many condition vectors as images (got {len(conditions)} and {len(images)})"
        )
    torch.manual_seed(train.seed)
    conditions = np.asarray(conditions, dtype=np.float32).reshape(len(conditions), -1)
    model = EmbeddedDiffusion(config, conditions.shape[1])
    model.set_condition_statistics(conditions)
    x0_all = model.to_model_space(torch.as_tensor(resize_images(images, config.image_size)).float())
    c_all = torch.as_tensor(conditions)
    scheduler = noise_scheduler(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _warmup_cosine(step, train.warmup_steps, train.steps)
    )
    generator = torch.Generator().manual_seed(train.seed)
    history: list[dict[str, float]] = []
    running, count = 0.0, 0
    log_every = max(1, train.steps // 10)
    model.train()
    start = time.perf_counter()
    bar = tqdm(range(train.steps), desc="train diffusion", disable=not progress)
    for step in bar:
        rows = torch.randint(0, len(x0_all), (train.batch_size,), generator=generator)
        loss = denoising_loss(model, x0_all[rows], c_all[rows], generator, scheduler)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
        optimizer.step()
        lr_schedule.step()
        optimizer.zero_grad(set_to_none=True)
        running, count = running + loss.item(), count + 1
        if (step + 1) % log_every == 0 or step + 1 == train.steps:
            history.append({"step": step + 1, "loss": round(running / count, 5)})
            bar.set_postfix(loss=f"{running / count:.4f}")
            running, count = 0.0, 0
    seconds = time.perf_counter() - start
    model.eval()
    facts = {
        "train_seconds": round(seconds, 2),
        "images_per_second": round(train.steps * train.batch_size / max(seconds, 1e-9), 1),
        "n_train_images": len(images),
        "parameters": count_parameters(model),
        "history": history,
    }
    return model, facts


def _warmup_cosine(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train_diffusion(
    name: str,
    store_path: Path,
    out: Path | None,
    subjects: list[str] | None = None,
    overrides: list[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    resume: bool = False,
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

    n = min(PREVIEW_ITEMS, len(images))
    generated = EmbeddedBackend(model).generate(conditions[:n], GenerationSettings(steps=20))
    truth = resize_images(images[:n], model.config.image_size)
    grid = np.concatenate([np.concatenate(list(truth), 1), np.concatenate(list(generated), 1)], 0)
    Image.fromarray(grid).save(path)
