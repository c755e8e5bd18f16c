"""Feature-space decoding metrics, following the field's definitions exactly.

All metrics compare predicted feature vectors with the true ones, one row per test item, after
flattening each item's features (MindEye's ``final_evaluations`` flattens too). Correlations are
Pearson r over the flattened feature dimension.

- :func:`two_way_identification` is MindEye's 2-way identification: for each prediction, the
  fraction of the other items whose ground truth correlates less with it than its own ground
  truth does. Chance is 0.5. It saturates near 1.0 in deep-feature spaces, so model comparisons
  should use :func:`retrieval_top1` and :func:`feature_correlation`.
- :func:`retrieval_top1`: for each prediction, is its own ground truth the best-correlated of all
  N test items. Chance is 1/N.
- :func:`feature_correlation`: mean over items of Pearson r(prediction, ground truth).

A row with zero variance has an undefined correlation; like ``numpy.corrcoef`` we return NaN for
it, and NaN never wins a comparison (so that item counts as a miss in both identification metrics).
"""

from __future__ import annotations

import numpy as np

from mindzoo.errors import UserInputError


def _flatten_items(x: np.ndarray) -> np.ndarray:
    """Reshape ``[n, ...]`` to ``[n, features]`` in float64 (correlations need the precision)."""
    x = np.asarray(x)
    return x.reshape(x.shape[0], -1).astype(np.float64, copy=False)


def _standardise_rows(x: np.ndarray) -> np.ndarray:
    """Centre each row and scale it to unit norm; zero-variance rows become NaN."""
    centred = x - x.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norms > 0, centred / norms, np.nan)


def pearson_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r between every row of ``a`` and every row of ``b``.

    ``a`` is ``[n, ...]`` and ``b`` is ``[m, ...]``; each row is flattened, and both must have
    the same number of features per row. Returns ``[n, m]`` float64 with ``r[i, j] = r(a_i, b_j)``.
    """
    a2, b2 = _flatten_items(a), _flatten_items(b)
    if a2.shape[1] != b2.shape[1]:
        raise UserInputError(
            f"Cannot correlate rows of {a2.shape[1]} and {b2.shape[1]} features; "
            "pass arrays with the same feature shape per item"
        )
    return _standardise_rows(a2) @ _standardise_rows(b2).T


def _identification_matrix(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """``r[i, j]`` = Pearson r(true_i, pred_j): rows are ground truths, columns predictions."""
    _check_pair(pred, true)
    return pearson_matrix(true, pred)


def two_way_identification(pred: np.ndarray, true: np.ndarray) -> float:
    """MindEye's 2-way identification accuracy (chance 0.5) of ``pred`` against ``true``.

    ``r = corrcoef(true, pred)[:N, N:]``; for each prediction j count the ground truths i with
    ``r[i, j] < r[j, j]``, divide by N-1 and average over j. Inputs are ``[N, ...]``.
    """
    r = _identification_matrix(pred, true)
    n = r.shape[0]
    own = np.diag(r)
    # Strict "<" as in final_evaluations: i == j never counts, and neither do NaN comparisons.
    beaten = (r < own[None, :]).sum(axis=0)
    return float(np.mean(beaten / (n - 1)))


def retrieval_top1(pred: np.ndarray, true: np.ndarray) -> float:
    """Fraction of predictions whose own ground truth is the best-correlated of all N items.

    A tie with another item counts as a miss. Chance is 1/N. Inputs are ``[N, ...]``.
    """
    r = _identification_matrix(pred, true)
    n = r.shape[0]
    own = np.diag(r)
    others_below = (r < own[None, :]).sum(axis=0)
    return float(np.mean(others_below == n - 1))


def feature_correlation(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean over items of Pearson r(pred_j, true_j); inputs are ``[N, ...]``."""
    _check_pair(pred, true, min_items=1)
    # Row-wise dot products instead of standardised copies: 3x faster on 425x425 RGB PixCorr.
    p, t = _flatten_items(pred), _flatten_items(true)
    p, t = p - p.mean(axis=1, keepdims=True), t - t.mean(axis=1, keepdims=True)
    norms = np.sqrt(np.einsum("ij,ij->i", p, p) * np.einsum("ij,ij->i", t, t))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(norms > 0, np.einsum("ij,ij->i", p, t) / norms, np.nan)
    return float(np.mean(r))


def evaluate_features(pred: np.ndarray, true: np.ndarray, space: str) -> dict[str, float]:
    """All feature-space metrics for one feature space, keyed ``"<metric>.<space>"``.

    ``pred`` and ``true`` are ``[n_items, ...]`` with identical shapes (flattened per item).
    Returns ``two_way_id.<space>``, ``retrieval_top1.<space>`` and ``feature_corr.<space>``.
    """
    _check_pair(pred, true, space=space)
    return {
        f"two_way_id.{space}": two_way_identification(pred, true),
        f"retrieval_top1.{space}": retrieval_top1(pred, true),
        f"feature_corr.{space}": feature_correlation(pred, true),
    }


def _check_pair(pred: np.ndarray, true: np.ndarray, min_items: int = 2, space: str = "") -> None:
    """Validate that predictions and ground truth line up item for item and are finite."""
    where = f" in feature space '{space}'" if space else ""
    pred, true = np.asarray(pred), np.asarray(true)
    if pred.shape != true.shape:
        raise UserInputError(
            f"Predictions have shape {pred.shape} but ground truth has {true.shape}{where}; "
            "pass one prediction per test item with the ground truth's feature shape"
        )
    if pred.ndim < 2 or pred.shape[0] < min_items:
        raise UserInputError(
            f"Need at least {min_items} items of shape [n_items, features...], got {pred.shape}"
            f"{where}; pass the whole test set"
        )
    for name, arr in (("Predictions", pred), ("Ground truth", true)):
        if not np.all(np.isfinite(arr)):
            raise UserInputError(
                f"{name} contain NaN or infinite values{where}; check the model output "
                "and the feature cache"
            )
