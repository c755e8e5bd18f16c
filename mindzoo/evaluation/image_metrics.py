"""Image reconstruction metrics, defined exactly as MindEye2's ``final_evaluations`` notebook.

Reconstructions and ground truths are uint8 ``[n, h, w, 3]`` (the two sets may differ in size).
Like MindEye2, both are first brought to 256x256 float in [0, 1] (:func:`eval_images`); then

- **PixCorr**: resize to 425x425 (bilinear), flatten RGB, Pearson r per (reconstruction, truth)
  pair, mean over pairs.
- **SSIM**: resize to 425x425, grayscale with ``skimage.color.rgb2gray``, then
  ``structural_similarity(recon, truth, gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1.0)`` per pair, mean over pairs.
- **Alex(2), Alex(5), Incep, CLIP**: two-way identification in a network's feature space
  (:func:`two_way_identification`: for each reconstruction, the fraction of the other items'
  ground truths that correlate less with it than its own ground truth). Higher is better.
- **Eff, SwAV**: mean correlation distance (scipy's ``1 - Pearson r``) between the features of
  each reconstruction and its ground truth (:func:`correlation_distance`). Lower is better.
- **Retrieval** (on predicted vs true embeddings, not on images): :func:`retrieval_top1`, cosine
  similarity, top-1 in both directions, averaged over 30 random subsets of 300 items.

The networks behind the six feature columns need user-supplied weights
(:mod:`mindzoo.features.backbones`); columns without them are ``None`` with a note. The offline
``efficientnet-lite0`` columns (two-way identification and correlation distance on its pooled
1280-d features) are always computed.

Two deliberate differences from the notebook: resizing uses antialiasing (torchvision's current
default; it only matters when shrinking images larger than 256 px), and a retrieval tie counts
as a miss (the notebook's ``argsort`` breaks ties arbitrarily).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from skimage.color import rgb2gray
from skimage.metrics import structural_similarity
from tqdm.auto import tqdm

from mindzoo.errors import UserInputError
from mindzoo.evaluation.metrics import feature_correlation, two_way_identification
from mindzoo.features import compute_features
from mindzoo.features.backbones import (
    BACKBONES,
    backbone_features,
    check_metric_weights,
    resize_square,
    unavailable_reason,
)

__all__ = [
    "DISTANCE_COLUMNS",
    "EVAL_SIZE",
    "LITE0_COLUMNS",
    "LOW_LEVEL_SIZE",
    "STANDARD_COLUMNS",
    "correlation_distance",
    "eval_images",
    "pixcorr",
    "reconstruction_metrics",
    "retrieval_top1",
    "ssim_score",
    "two_way_identification",
]

EVAL_SIZE = 256  # MindEye2 brings reconstructions and truths to 256x256 before every metric
LOW_LEVEL_SIZE = 425  # PixCorr and SSIM are computed at 425x425
CHUNK = 16  # images per chunk at 425 px (16 x 425 x 425 x 3 float32 = 35 MB)

STANDARD_COLUMNS = ("PixCorr", "SSIM", "Alex(2)", "Alex(5)", "Incep", "CLIP", "Eff", "SwAV")
LITE0_COLUMNS = ("efficientnet-lite0 2-way", "efficientnet-lite0 distance")
DISTANCE_COLUMNS = ("Eff", "SwAV")  # correlation distance; the other feature columns are 2-way


# ------------------------------------------------------------------------ preprocessing
def eval_images(images: np.ndarray, size: int = EVAL_SIZE) -> torch.Tensor:
    """uint8 ``[n, h, w, 3]`` -> float32 ``[n, 3, size, size]`` in [0, 1], bilinear resize."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    return resize_square(x, size)


def _low_level_chunks(a: np.ndarray, b: np.ndarray):
    """Yield matching chunks of both image sets at 425 px, float32 ``[k, 3, 425, 425]``."""
    for start in range(0, len(a), CHUNK):
        stop = start + CHUNK
        yield (
            resize_square(eval_images(a[start:stop]), LOW_LEVEL_SIZE),
            resize_square(eval_images(b[start:stop]), LOW_LEVEL_SIZE),
        )


def _check_image_pair(recons: np.ndarray, truths: np.ndarray, min_items: int = 1) -> None:
    for name, images in (("Reconstructions", recons), ("Ground-truth images", truths)):
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            kind = getattr(images, "dtype", type(images).__name__)
            raise UserInputError(f"{name} must be uint8 [n, h, w, 3], got {kind}")
        if images.ndim != 4 or images.shape[-1] != 3:
            raise UserInputError(f"{name} must have shape [n, h, w, 3], got {images.shape}")
    if len(recons) != len(truths) or len(recons) < min_items:
        raise UserInputError(
            f"Got {len(recons)} reconstructions for {len(truths)} ground-truth images; pass one "
            f"reconstruction per test image (at least {min_items})"
        )


# --------------------------------------------------------------------- low-level metrics
def pixcorr(recons: np.ndarray, truths: np.ndarray) -> float:
    """MindEye2 PixCorr: mean over pairs of Pearson r of the flattened 425x425 RGB images."""
    _check_image_pair(recons, truths)
    total = 0.0
    for rec, true in _low_level_chunks(recons, truths):
        total += feature_correlation(rec.numpy(), true.numpy()) * len(rec)
    return total / len(recons)


def ssim_score(recons: np.ndarray, truths: np.ndarray) -> float:
    """MindEye2 SSIM: mean over pairs of Gaussian-weighted SSIM of 425x425 grayscale images."""
    _check_image_pair(recons, truths)
    scores = []
    for rec, true in _low_level_chunks(recons, truths):
        rec_gray = rgb2gray(rec.permute(0, 2, 3, 1).numpy())
        true_gray = rgb2gray(true.permute(0, 2, 3, 1).numpy())
        for r, t in zip(rec_gray, true_gray, strict=True):
            scores.append(
                structural_similarity(
                    r,
                    t,
                    gaussian_weights=True,
                    sigma=1.5,
                    use_sample_covariance=False,
                    data_range=1.0,
                )
            )
    return float(np.mean(scores))


# ------------------------------------------------------------------- feature-space metrics
def correlation_distance(pred_feats: np.ndarray, true_feats: np.ndarray) -> float:
    """Mean over items of scipy's correlation distance ``1 - Pearson r`` (EffNet/SwAV columns).

    Inputs are ``[n, ...]`` feature arrays, flattened per item. 0 is identical, 1 uncorrelated.
    """
    return 1.0 - feature_correlation(pred_feats, true_feats)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norms > 0, x / norms, np.nan)


def _top1(similarity: np.ndarray) -> float:
    """Fraction of rows whose own column (the diagonal) is strictly the most similar."""
    own = np.diag(similarity)
    others = similarity.copy()
    np.fill_diagonal(others, -np.inf)
    return float(np.mean(own > others.max(axis=1)))


def retrieval_top1(
    pred: np.ndarray,
    true: np.ndarray,
    n_subsets: int = 30,
    subset_size: int = 300,
    seed: int = 0,
) -> dict[str, float]:
    """MindEye2 retrieval: top-1 accuracy by cosine similarity, in both directions.

    ``pred`` are the brain-predicted embeddings and ``true`` the embeddings of the seen images,
    ``[n, ...]`` each (flattened, L2-normalised). For each of ``n_subsets`` random subsets of
    ``subset_size`` items (drawn without replacement with ``seed``), ``brain->image`` is the
    fraction of predictions whose own image is the most similar of the subset's images, and
    ``image->brain`` the fraction of images whose own prediction is the most similar of the
    subset's predictions; both are averaged over subsets. With ``n <= subset_size`` every subset
    would be the whole set, so it is scored once on all items (chance is 1/n, else 1/subset_size).
    A tie counts as a miss.

    Note: MindEye2's notebook stores image->brain in ``percent_correct_fwd`` (its
    ``batchwise_cosine_similarity`` returns rows indexed by the second argument).
    """
    pred, true = np.asarray(pred), np.asarray(true)
    if pred.shape != true.shape or pred.ndim < 2 or len(pred) < 2:
        raise UserInputError(
            f"Retrieval needs predicted and true embeddings of one shape [n >= 2, ...], got "
            f"{pred.shape} and {true.shape}; pass one prediction per test image"
        )
    if n_subsets < 1 or subset_size < 2:
        raise UserInputError(
            f"Retrieval needs n_subsets >= 1 and subset_size >= 2, got {n_subsets}, {subset_size}"
        )
    p, t = _unit_rows(pred), _unit_rows(true)
    if len(pred) <= subset_size:
        subsets = [np.arange(len(pred))]
    else:
        rng = np.random.default_rng(seed)
        subsets = [rng.choice(len(pred), size=subset_size, replace=False) for _ in range(n_subsets)]
    brain_to_image, image_to_brain = [], []
    for subset in subsets:
        sim = p[subset] @ t[subset].T  # [prediction i, image j]
        brain_to_image.append(_top1(sim))
        image_to_brain.append(_top1(sim.T))
    return {
        "brain->image": float(np.mean(brain_to_image)),
        "image->brain": float(np.mean(image_to_brain)),
    }


# ------------------------------------------------------------------------------ the table
def reconstruction_metrics(
    recons: np.ndarray,
    truths: np.ndarray,
    weights: dict[str, Path] | None = None,
    seed: int = 0,
    progress: bool = False,
    embeddings: tuple[np.ndarray, np.ndarray] | None = None,
    device: str = "cpu",
    batch_size: int = 32,
) -> dict:
    """The MindEye2 reconstruction table for one set of reconstructions.

    ``recons`` and ``truths`` are uint8 ``[n, H, W, 3]`` and ``[n, h, w, 3]``, item for item
    (n >= 2). ``weights`` maps backbone names (``alexnet``, ``inception``, ``clip``,
    ``efficientnet-b1``, ``swav``) to local weight paths. ``embeddings`` = (predicted, true)
    semantic embeddings ``[n, ...]`` adds the two retrieval directions, subsets drawn with
    ``seed``.

    Returns ``{column: float | None}`` for :data:`STANDARD_COLUMNS` and :data:`LITE0_COLUMNS`
    (plus ``retrieval brain->image`` / ``retrieval image->brain`` with ``embeddings``), and
    ``notes``: ``{column: why it is blank}``.
    """
    _check_image_pair(recons, truths, min_items=2)
    weights = check_metric_weights(weights)
    steps = ["PixCorr", "SSIM", "efficientnet-lite0", *BACKBONES]
    bar = tqdm(total=len(steps), desc="reconstruction metrics", disable=not progress)

    result: dict = {"PixCorr": pixcorr(recons, truths)}
    bar.update()
    result["SSIM"] = ssim_score(recons, truths)
    bar.update()

    lite_rec = compute_features("efficientnet-lite0", recons, progress=False)["global"]
    lite_true = compute_features("efficientnet-lite0", truths, progress=False)["global"]
    result["efficientnet-lite0 2-way"] = two_way_identification(lite_rec, lite_true)
    result["efficientnet-lite0 distance"] = correlation_distance(lite_rec, lite_true)
    bar.update()

    notes: dict[str, str] = {}
    images = None
    for name, backbone in BACKBONES.items():
        reason = unavailable_reason(name, weights)
        if reason is not None:
            for column in backbone.columns.values():
                result[column], notes[column] = None, reason
        else:
            if images is None:
                images = (eval_images(recons), eval_images(truths))
            extractor = backbone.load(weights[name], device)
            rec = backbone_features(backbone, extractor, images[0], batch_size, device)
            true = backbone_features(backbone, extractor, images[1], batch_size, device)
            for layer, column in backbone.columns.items():
                score = (
                    correlation_distance if column in DISTANCE_COLUMNS else two_way_identification
                )
                result[column] = score(rec[layer], true[layer])
        bar.update()
    bar.close()

    if embeddings is not None:
        retrieval = retrieval_top1(*embeddings, seed=seed)
        result.update({f"retrieval {key}": value for key, value in retrieval.items()})
    ordered = {column: result[column] for column in (*STANDARD_COLUMNS, *LITE0_COLUMNS)}
    ordered.update({k: v for k, v in result.items() if k.startswith("retrieval ")})
    ordered["notes"] = notes
    return ordered
