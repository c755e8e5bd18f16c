"""`reconstruct`: a `train` run's test predictions -> images -> the MindEye2 metric table.

For every chosen subject, the run's predicted condition features (the backend's feature space,
e.g. efficientnet-lite0 ``global``) of the test stimuli go through a diffusion backend; when the
run also predicts a low-level image (a target named ``lowlevel``: ``pixels/lowres``, float
[n, s*s*3] in [0, 1], row-major HWC) and ``strength < 1``, generation starts part-way from it.

Permutation control: the same predictions shuffled across test items (one random cycle, so no
item keeps its own) go through the backend with the same seeds. Reconstructions that carry
information about their stimulus beat this control on every metric; a backend that ignores its
condition ties with it.

The output directory appears atomically (built in a hidden sibling, then renamed):

    images/<subject>/<stimulus id>.png   one reconstruction per test stimulus and subject
    control/<subject>/<stimulus id>.png  the permutation control's images
    grid.png                             ground-truth row, then one row per subject
    features.safetensors                 "<subject>/condition" (the predicted features used),
                                         "<subject>/test_stimulus_index", "<subject>/lowlevel"
                                         (uint8 init images, when used), "<subject>/permutation"
    metrics.json                         per subject: "real" and "shuffled" metric tables
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from mindzoo.atomic import atomic_directory
from mindzoo.datasets.store import TensorStore
from mindzoo.errors import UserInputError
from mindzoo.reconstruction.base import (
    GenerationSettings,
    ReconstructionBackend,
    load_backend,
    resize_images,
)
from mindzoo.tensorfile import load_arrays, save_arrays

LOWLEVEL_TARGET = "lowlevel"
GRID_COLUMNS = 16  # test stimuli shown in grid.png
CONTROL_SEED_OFFSET = 1  # the permutation is drawn from seed + 1 (the images use seed + i)


def run_targets(config: dict[str, Any]) -> dict[str, str]:
    """A run's predicted targets ``{name: "space/kind"}`` from its config.json.

    Decoders list theirs under ``settings.data.targets`` (empty = only the evaluated feature);
    ridge runs predict only the evaluated feature (``settings.feature_space/feature_kind``).
    """
    settings = config.get("settings", {})
    evaluated = f"{settings.get('feature_space')}/{settings.get('feature_kind')}"
    return dict(
        settings.get("data", {}).get("targets") or {settings.get("feature_kind"): evaluated}
    )


def _prediction_key(subject: str, target: str, spec: str, config: dict[str, Any]) -> list[str]:
    """Where a target's test predictions live: decoder outputs, else the evaluated `test_pred`."""
    settings = config["settings"]
    keys = [f"{subject}/outputs/{target}"]
    if spec == f"{settings['feature_space']}/{settings['feature_kind']}":
        keys.append(f"{subject}/test_pred")
    return keys


def _read_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    config_path, pred_path = run_dir / "config.json", run_dir / "predictions.safetensors"
    for path in (config_path, pred_path):
        if not path.is_file():
            raise UserInputError(
                f"{path} is missing; pass a finished run directory of `braindecode-cli train`"
            )
    config = json.loads(config_path.read_text())
    if "settings" not in config or "subjects" not in config:
        raise UserInputError(
            f"{config_path} is not an image-feature decoder run (no settings/subjects); "
            "reconstruct needs the --out of `braindecode-cli train` for an fMRI decoder"
        )
    return config, load_arrays(pred_path)


def _pick_subjects(config: dict[str, Any], subjects: list[str] | None, run_dir: Path) -> list[str]:
    if not subjects:
        return list(config["subjects"])
    chosen = [s if s.startswith("sub-") else f"sub-{s}" for s in subjects]
    missing = [s for s in chosen if s not in config["subjects"]]
    if missing:
        raise UserInputError(
            f"Subject {missing[0]} was not trained in run {run_dir}; it has: "
            f"{', '.join(config['subjects'])}"
        )
    return chosen


def _condition_target(
    targets: dict[str, str], backend: ReconstructionBackend, run_dir: Path
) -> str:
    wanted = "/".join(backend.condition)
    for name, spec in targets.items():
        if spec == wanted:
            return name
    raise UserInputError(
        f"Run {run_dir} predicts {', '.join(sorted(set(targets.values())))} but backend "
        f"{backend.name} is conditioned on {wanted}; train a decoder with that target "
        f"(e.g. --set data.targets={{global: {wanted}}})"
    )


def lowlevel_images(values: np.ndarray) -> np.ndarray:
    """Predicted low-level images float [n, s*s*3] in [0, 1] (row-major HWC) -> uint8 [n,s,s,3].

    Values are clipped to [0, 1] first (a regression head overshoots).
    """
    values = np.asarray(values, dtype=np.float32).reshape(len(values), -1)
    side = int(round((values.shape[1] / 3) ** 0.5))
    if side * side * 3 != values.shape[1]:
        raise UserInputError(
            f"A '{LOWLEVEL_TARGET}' prediction of width {values.shape[1]} is not a square RGB "
            "image (s*s*3 values); train the low-level head on pixels/lowres"
        )
    return (np.clip(values, 0.0, 1.0) * 255).round().astype(np.uint8).reshape(-1, side, side, 3)


def derangement(n: int, seed: int) -> np.ndarray:
    """A random permutation of ``range(n)`` that is one cycle (no item maps to itself, n >= 2)."""
    order = np.random.default_rng(seed).permutation(n)
    result = np.empty(n, dtype=np.int64)
    result[order] = np.roll(order, -1)
    return result


def _safe_name(stimulus_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", stimulus_id)


def _resolve_weights(
    name: str, weights: Path | None, store: TensorStore
) -> tuple[Path | None, str | None]:
    """The embedded backend defaults to the store's cached default-settings model."""
    if weights is not None or name != "embedded":
        return weights, None
    from mindzoo.datasets.remote import is_url
    from mindzoo.reconstruction.embedded import cached_weights

    if is_url(str(store.path)):
        raise UserInputError(
            f"Store {store.path} is at a URL and has no local diffusion cache; pass --weights DIR "
            "(the --out of `braindecode-cli train diffusion`)"
        )
    cached = cached_weights(store)
    if not (cached / "model.safetensors").is_file():
        root = store.path.parent.parent
        raise UserInputError(
            f"No trained embedded diffusion model for store {root} (looked in {cached}); run "
            f"`braindecode-cli train diffusion --store {root}` or pass --weights DIR"
        )
    return cached, "store cache"


def reconstruct_run(
    run_dir: Path,
    store_path: Path | str,
    out: Path,
    backend: str = "embedded",
    weights: Path | None = None,
    subjects: list[str] | None = None,
    settings: GenerationSettings | None = None,
    control: bool = True,
    overwrite: bool = False,
    device: str = "cpu",
    progress: bool = True,
    metric_weights: dict[str, Path] | None = None,
) -> dict[str, Any]:
    """Reconstruct a run's test stimuli with ``backend``; write ``out`` (see module docstring).

    Everything is checked (run, store, subjects, backend, its weights and condition) before
    anything is written; an existing non-empty ``out`` is refused unless ``overwrite``.
    Returns the metrics.json content.
    """
    from mindzoo.evaluation.image_metrics import reconstruction_metrics

    settings = settings or GenerationSettings()
    _check_settings(settings)
    run_dir, out = Path(run_dir), Path(out)
    config, predictions = _read_run(run_dir)
    store = TensorStore.open(store_path)
    if store.manifest["config_hash"] != config.get("store_config_hash"):
        raise UserInputError(
            f"Run {run_dir} was trained on another store version than {store.path} (config hash "
            "differs); pass the store it was trained on"
        )
    chosen = _pick_subjects(config, subjects, run_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserInputError(f"{out} exists and is not empty; choose another --out")
    weights, weights_source = _resolve_weights(backend, weights, store)
    model = load_backend(backend, weights, device)
    targets = run_targets(config)
    condition_target = _condition_target(targets, model, run_dir)
    use_lowlevel = (
        LOWLEVEL_TARGET in targets and settings.strength < 1.0 and model.supports_lowlevel
    )
    truths_all = store.images()
    ids = store.stimulus_ids

    generation_seconds = 0.0
    per_subject: dict[str, dict[str, Any]] = {}
    arrays: dict[str, np.ndarray] = {}
    images: dict[str, dict[str, np.ndarray]] = {}
    for subject in tqdm(chosen, desc="reconstruct", disable=not progress):
        stim = predictions[f"{subject}/test_stimulus_index"]
        condition = _prediction(predictions, subject, condition_target, targets, config, run_dir)
        lowlevel = None
        if use_lowlevel:
            lowlevel = lowlevel_images(
                _prediction(predictions, subject, LOWLEVEL_TARGET, targets, config, run_dir)
            )
        truths = np.asarray(truths_all.get_orthogonal_selection((stim,)))
        true_condition = np.asarray(
            store.features(*model.condition).get_orthogonal_selection((stim,)), dtype=np.float32
        ).reshape(len(stim), -1)
        start = time.perf_counter()
        real = model.generate(condition, settings, lowlevel)
        generation_seconds += time.perf_counter() - start
        scores = {
            "real": reconstruction_metrics(
                real, truths, metric_weights, settings.seed, embeddings=(condition, true_condition)
            )
        }
        images[subject] = {"real": real}
        arrays[f"{subject}/condition"] = condition.astype(np.float32)
        arrays[f"{subject}/test_stimulus_index"] = stim.astype(np.int64)
        if lowlevel is not None:
            arrays[f"{subject}/lowlevel"] = lowlevel
        if control and len(stim) >= 2:
            perm = derangement(len(stim), settings.seed + CONTROL_SEED_OFFSET)
            start = time.perf_counter()
            shuffled = model.generate(
                condition[perm], settings, None if lowlevel is None else lowlevel[perm]
            )
            generation_seconds += time.perf_counter() - start
            scores["shuffled"] = reconstruction_metrics(
                shuffled,
                truths,
                metric_weights,
                settings.seed,
                embeddings=(condition[perm], true_condition),
            )
            images[subject]["shuffled"] = shuffled
            arrays[f"{subject}/permutation"] = perm
        per_subject[subject] = {"n_test_stimuli": int(len(stim)), **scores}
    n_images = sum(len(v) for per in images.values() for v in per.values())
    metrics = {
        "run": str(run_dir.resolve()),
        "store": str(store.path.resolve()),
        "dataset": store.dataset,
        "model": config.get("model"),
        "backend": backend,
        "weights": None if weights is None else str(Path(weights).resolve()),
        "weights_source": weights_source or ("--weights" if weights is not None else "default"),
        "condition": f"{'/'.join(model.condition)} (target '{condition_target}')",
        "lowlevel_init": use_lowlevel,
        "settings": {
            "steps": settings.steps,
            "guidance": settings.guidance,
            "seed": settings.seed,
            "strength": settings.strength if use_lowlevel else 1.0,
        },
        "generation_seconds": round(generation_seconds, 2),
        "seconds_per_image": round(generation_seconds / max(n_images, 1), 4),
        "subjects": per_subject,
    }
    with atomic_directory(out) as tmp:
        _write_images(tmp, images, predictions, chosen, ids)
        _write_grid(tmp / "grid.png", images, predictions, chosen, truths_all, "real")
        if any("shuffled" in per for per in images.values()):
            _write_grid(
                tmp / "grid-shuffled.png", images, predictions, chosen, truths_all, "shuffled"
            )
        save_arrays(arrays, tmp / "features.safetensors")
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def _check_settings(settings: GenerationSettings) -> None:
    if not (math.isfinite(settings.guidance) and math.isfinite(settings.strength)):
        raise UserInputError(
            f"--guidance and --strength must be finite numbers (got {settings.guidance}, "
            f"{settings.strength})"
        )
    if settings.steps < 1 or settings.batch_size < 1 or settings.guidance < 0:
        raise UserInputError(
            f"Need --steps >= 1, --batch-size >= 1 and --guidance >= 0 (got {settings.steps}, "
            f"{settings.batch_size}, {settings.guidance})"
        )
    if not 0.0 <= settings.strength <= 1.0:
        raise UserInputError(f"--strength must be in [0, 1], got {settings.strength}")


def _prediction(
    predictions: dict[str, np.ndarray],
    subject: str,
    target: str,
    targets: dict[str, str],
    config: dict[str, Any],
    run_dir: Path,
) -> np.ndarray:
    for key in _prediction_key(subject, target, targets[target], config):
        if key in predictions:
            return np.asarray(predictions[key], dtype=np.float32).reshape(
                len(predictions[f"{subject}/test_stimulus_index"]), -1
            )
    raise UserInputError(
        f"{run_dir / 'predictions.safetensors'} has no predictions of target '{target}' for "
        f"{subject}; re-run train"
    )


def _write_images(
    out: Path,
    images: dict[str, dict[str, np.ndarray]],
    predictions: dict[str, np.ndarray],
    subjects: list[str],
    ids: list[str],
) -> None:
    for subject in subjects:
        stim = predictions[f"{subject}/test_stimulus_index"]
        for kind, folder in (("real", "images"), ("shuffled", "control")):
            if kind not in images[subject]:
                continue
            directory = out / folder / subject
            directory.mkdir(parents=True)
            for image, index in zip(images[subject][kind], stim, strict=True):
                Image.fromarray(image).save(directory / f"{_safe_name(ids[index])}.png")


def _write_grid(
    path: Path,
    images: dict[str, dict[str, np.ndarray]],
    predictions: dict[str, np.ndarray],
    subjects: list[str],
    truths_all: Any,
    kind: str,
) -> None:
    """Ground-truth row (the first subject's test order), then one row per subject.

    Shows the first :data:`GRID_COLUMNS` test stimuli; every subject's row is put in the
    ground-truth row's stimulus order.
    """
    first = predictions[f"{subjects[0]}/test_stimulus_index"][:GRID_COLUMNS]
    size = images[subjects[0]][kind].shape[1]
    truths = np.asarray(truths_all.get_orthogonal_selection((first,)))
    rows = [resize_images(truths, size)]
    for subject in subjects:
        stim = list(predictions[f"{subject}/test_stimulus_index"])
        order = [stim.index(i) if i in stim else None for i in first]
        blank = np.full((size, size, 3), 255, np.uint8)
        rows.append(np.stack([blank if j is None else images[subject][kind][j] for j in order]))
    grid = np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)
    Image.fromarray(grid).save(path)
