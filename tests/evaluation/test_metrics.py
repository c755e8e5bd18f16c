"""Feature-space metrics against hand-computed values and MindEye's reference formulation."""

import numpy as np
import pytest

from mindzoo.errors import UserInputError
from mindzoo.evaluation.metrics import (
    evaluate_features,
    feature_correlation,
    pearson_matrix,
    retrieval_top1,
    two_way_identification,
)

# Three one-hot items: r(e_i, e_i) = 1 and r(e_i, e_j) = -0.5 for i != j (centre, then normalise).
BASIS = np.eye(3)


def mindeye_two_way(pred: np.ndarray, true: np.ndarray) -> float:
    """Transcription of MindEye's final_evaluations 2-way loop, used as the reference."""
    n = len(true)
    r = np.corrcoef(true.reshape(n, -1), pred.reshape(n, -1))[:n, n:]
    congruent = np.diag(r)
    success = r < congruent
    return float(np.mean(np.sum(success, axis=0) / (n - 1)))


def test_pearson_matrix_hand_values():
    r = pearson_matrix(BASIS, BASIS)
    np.testing.assert_allclose(r, [[1, -0.5, -0.5], [-0.5, 1, -0.5], [-0.5, -0.5, 1]])
    r2 = pearson_matrix(np.array([[1.0, 2, 3, 4]]), np.array([[4.0, 3, 2, 1], [2.0, 4, 6, 8]]))
    np.testing.assert_allclose(r2, [[-1.0, 1.0]])


def test_pearson_matrix_matches_numpy_and_flattens_items():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 2, 3)), rng.normal(size=(4, 2, 3))
    expected = np.corrcoef(a.reshape(5, -1), b.reshape(4, -1))[:5, 5:]
    np.testing.assert_allclose(pearson_matrix(a, b), expected, atol=1e-12)


def test_pearson_matrix_constant_row_is_nan():
    r = pearson_matrix(np.array([[1.0, 1, 1], [1.0, 2, 3]]), np.array([[1.0, 2, 4]]))
    assert np.isnan(r[0, 0])
    assert np.isfinite(r[1, 0])


def test_perfect_predictions_score_one():
    scores = evaluate_features(BASIS, BASIS, "toy")
    assert scores == pytest.approx(
        {"two_way_id.toy": 1.0, "retrieval_top1.toy": 1.0, "feature_corr.toy": 1.0}
    )


def test_derangement_scores_zero():
    pred = BASIS[[1, 2, 0]]  # every prediction is another item's ground truth
    assert two_way_identification(pred, BASIS) == 0.0
    assert retrieval_top1(pred, BASIS) == 0.0
    assert feature_correlation(pred, BASIS) == pytest.approx(-0.5)


def test_one_swap_hand_values():
    # pred_0 is right; pred_1 and pred_2 are swapped: only column 0 identifies.
    pred = BASIS[[0, 2, 1]]
    assert two_way_identification(pred, BASIS) == pytest.approx(1 / 3)
    assert retrieval_top1(pred, BASIS) == pytest.approx(1 / 3)
    assert feature_correlation(pred, BASIS) == pytest.approx((1 - 0.5 - 0.5) / 3)


def test_tie_is_a_miss_for_retrieval_and_not_counted_for_two_way():
    # pred_0 = e0 + e1 correlates 0.5 with both true_0 and true_1, and -1 with true_2.
    pred = np.array([[1.0, 1, 0], [0, 1, 0], [0, 0, 1]])
    r = pearson_matrix(BASIS, pred)
    np.testing.assert_allclose(r[:, 0], [0.5, 0.5, -1.0])
    # column 0 beats only item 2 (1/2); columns 1 and 2 beat both others (1).
    assert two_way_identification(pred, BASIS) == pytest.approx((0.5 + 1 + 1) / 3)
    assert retrieval_top1(pred, BASIS) == pytest.approx(2 / 3)


def test_two_way_matches_mindeye_reference_on_random_data():
    rng = np.random.default_rng(1)
    true = rng.normal(size=(20, 4, 8))
    pred = true + rng.normal(scale=2.0, size=true.shape)
    assert two_way_identification(pred, true) == pytest.approx(mindeye_two_way(pred, true))


def test_chance_levels_on_unrelated_data():
    rng = np.random.default_rng(2)
    n = 10
    two_way, top1, corr = [], [], []
    for _ in range(200):
        true, pred = rng.normal(size=(n, 16)), rng.normal(size=(n, 16))
        two_way.append(two_way_identification(pred, true))
        top1.append(retrieval_top1(pred, true))
        corr.append(feature_correlation(pred, true))
    assert np.mean(two_way) == pytest.approx(0.5, abs=0.02)
    assert np.mean(top1) == pytest.approx(1 / n, abs=0.03)
    assert np.mean(corr) == pytest.approx(0.0, abs=0.02)


def test_noisy_predictions_rank_between_chance_and_perfect():
    rng = np.random.default_rng(3)
    true = rng.normal(size=(50, 32))
    pred = true + rng.normal(scale=1.5, size=true.shape)
    scores = evaluate_features(pred, true, "s")
    assert 0.6 < scores["two_way_id.s"] < 1.0
    assert 1 / 50 < scores["retrieval_top1.s"] < 1.0
    # r = 1/sqrt(1 + 1.5^2) ~ 0.55 for this noise level
    assert scores["feature_corr.s"] == pytest.approx(1 / np.sqrt(1 + 1.5**2), abs=0.05)


def test_shape_mismatch_is_user_error():
    with pytest.raises(UserInputError, match=r"\(3, 3\).*\(3, 4\).*'toy'"):
        evaluate_features(BASIS, np.zeros((3, 4)), "toy")


def test_single_item_is_user_error():
    with pytest.raises(UserInputError, match="at least 2 items"):
        evaluate_features(BASIS[:1], BASIS[:1], "toy")


def test_nan_predictions_are_user_error():
    pred = BASIS.copy()
    pred[1, 1] = np.nan
    with pytest.raises(UserInputError, match="NaN"):
        evaluate_features(pred, BASIS, "toy")
