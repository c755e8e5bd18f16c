"""Ridge decoder: recovery of a known map, penalty selection, grouped folds, persistence."""

import warnings

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from mindzoo.errors import UserInputError
from mindzoo.models import create_model
from mindzoo.models.ridge import RidgeConfig, RidgeDecoder, grouped_folds

# Noiseless and pure-noise fixtures legitimately choose the grid's end; one test checks the warning.
pytestmark = pytest.mark.filterwarnings("ignore:Ridge CV chose an alpha at the edge")


def linear_data(seed: int, n: int, v: int, d: int, noise: float):
    """``Y = X W + noise`` with voxels on arbitrary offsets and scales (standardisation matters)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, v)) * rng.uniform(0.5, 3.0, size=v) + rng.normal(size=v) * 5
    W = rng.normal(size=(v, d))
    Y = X @ W + 2.0 + noise * rng.normal(size=(n, d)) * np.std(X @ W)
    return X, Y


def column_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a - a.mean(0), b - b.mean(0)
    return (a * b).sum(0) / np.sqrt((a**2).sum(0) * (b**2).sum(0))


@pytest.mark.parametrize("n_voxels", [30, 300])  # primal (v < n) and dual (v > n) solvers
def test_recovers_known_linear_map_on_held_out_data(n_voxels):
    X, Y = linear_data(0, n=400, v=n_voxels, d=8, noise=0.1)
    model = RidgeDecoder(RidgeConfig(n_folds=4)).fit(X[:250], Y[:250])
    pred = model.predict(X[250:])
    assert pred.dtype == np.float32 and pred.shape == (150, 8)
    r = column_pearson(pred, Y[250:])
    # with 300 voxels and 250 trials the map is under-determined, so recovery is partial
    assert r.min() > (0.9 if n_voxels == 30 else 0.5)


def test_matches_closed_form_ridge_at_the_chosen_alpha():
    X, Y = linear_data(1, n=120, v=40, d=3, noise=0.5)
    model = RidgeDecoder(RidgeConfig(n_folds=3)).fit(X, Y)
    alpha = model.cv_results_["alpha"]
    xs = (X - X.mean(0)) / X.std(0)
    coef = np.linalg.solve(xs.T @ xs + alpha * np.eye(40), xs.T @ (Y - Y.mean(0)))
    np.testing.assert_allclose(model.predict(X), xs @ coef + Y.mean(0), rtol=1e-4, atol=1e-3)


def test_dual_solver_matches_closed_form_ridge():
    # v > n takes the kernel (dual) path; its weights must equal the primal closed form
    X, Y = linear_data(2, n=50, v=80, d=2, noise=0.3)
    cfg = RidgeConfig(alphas=[1.0], n_folds=2)
    dual = RidgeDecoder(cfg).fit(X, Y)
    xs = (X - X.mean(0)) / X.std(0)
    coef = np.linalg.solve(xs.T @ xs + 80 * np.eye(80), xs.T @ (Y - Y.mean(0)))
    np.testing.assert_allclose(dual.state_dict()["coef"], coef, rtol=1e-4, atol=1e-5)


def test_cv_picks_smallest_alpha_on_noiseless_targets():
    X, Y = linear_data(3, n=200, v=20, d=5, noise=0.0)
    for score in ("pearson", "r2"):
        model = RidgeDecoder(RidgeConfig(cv_score=score)).fit(X, Y)
        assert model.cv_results_["alpha"] == pytest.approx(1e-4 * 20)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cv_picks_a_large_alpha_on_pure_noise_targets(seed):
    # Under R² the best no-signal prediction is the training mean, i.e. maximal shrinkage.
    # (Pearson r is scale-free, so on pure noise it cannot rank penalties: see RidgeConfig.)
    rng = np.random.default_rng(seed)
    X, Y = rng.normal(size=(200, 50)), rng.normal(size=(200, 10))
    model = RidgeDecoder(RidgeConfig(cv_score="r2")).fit(X, Y)
    assert model.cv_results_["alpha"] >= 10 * 50  # penalty / n_voxels ≥ 10 (SNR ≤ 0.1)
    assert model.cv_results_["score"] < 0.01


def test_cv_results_layout():
    X, Y = linear_data(4, n=100, v=10, d=3, noise=0.5)
    cfg = RidgeConfig(alphas=[0.1, 1.0, 10.0], n_folds=3)
    res = RidgeDecoder(cfg).fit(X, Y).cv_results_
    np.testing.assert_allclose(res["alphas"], [1.0, 10.0, 100.0])  # scaled by 10 voxels
    assert res["mean_scores"].shape == (3,)
    assert res["alpha"] == res["alphas"][np.argmax(res["mean_scores"])]
    assert res["score"] == pytest.approx(res["mean_scores"].max())


def test_no_warning_when_the_optimum_is_inside_the_grid():
    X, Y = linear_data(11, n=200, v=40, d=4, noise=1.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        alpha = RidgeDecoder(RidgeConfig()).fit(X, Y).cv_results_["alpha"]
    assert not caught
    assert 1e-4 * 40 < alpha < 1e4 * 40


def test_warns_when_the_optimum_is_at_the_edge_of_the_grid():
    X, Y = linear_data(12, n=200, v=20, d=3, noise=0.0)
    with pytest.warns(UserWarning, match="edge of the grid"):
        RidgeDecoder(RidgeConfig(alphas=[10.0, 100.0, 1000.0])).fit(X, Y)


def test_per_target_alpha_follows_each_targets_noise():
    X, Y = linear_data(5, n=300, v=20, d=2, noise=0.0)
    Y[:, 1] = np.random.default_rng(0).normal(size=300)  # target 1 is pure noise
    cfg = RidgeConfig(per_target_alpha=True, cv_score="r2")
    model = RidgeDecoder(cfg).fit(X, Y)
    alpha = model.cv_results_["alpha"]
    assert alpha.shape == (2,)
    assert alpha[0] == pytest.approx(1e-4 * 20)
    assert alpha[1] >= 10 * 20


def test_state_dict_round_trip_through_safetensors(tmp_path):
    X, Y = linear_data(6, n=150, v=25, d=4, noise=0.3)
    cfg = RidgeConfig(n_folds=3, per_target_alpha=True)
    model = RidgeDecoder(cfg).fit(X, Y)
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    restored = RidgeDecoder.from_state_dict(cfg, load_file(tmp_path / "model.safetensors"))
    np.testing.assert_array_equal(restored.predict(X), model.predict(X))
    np.testing.assert_array_equal(restored.cv_results_["alpha"], model.cv_results_["alpha"])
    assert restored.cv_results_["score"] == model.cv_results_["score"]


def test_from_state_dict_rejects_incomplete_checkpoint():
    X, Y = linear_data(7, n=60, v=5, d=2, noise=0.3)
    state = RidgeDecoder(RidgeConfig(n_folds=3)).fit(X, Y).state_dict()
    del state["x_scale"]
    with pytest.raises(UserInputError, match="x_scale"):
        RidgeDecoder.from_state_dict(RidgeConfig(), state)


def test_grouped_folds_keep_repeats_together_and_balance_sizes():
    groups = np.repeat(np.arange(30), 3)[np.random.default_rng(0).permutation(90)]
    folds = grouped_folds(groups, n_folds=5, seed=0)
    for g in range(30):
        assert len(np.unique(folds[groups == g])) == 1
    np.testing.assert_array_equal(np.bincount(folds), [18] * 5)
    # a different seed deals stimuli differently
    assert not np.array_equal(folds, grouped_folds(groups, n_folds=5, seed=1))


def test_grouped_folds_with_unequal_repeat_counts():
    groups = np.array([0] * 6 + [1] * 3 + [2] * 3 + [3] * 2 + [4] * 2)
    folds = grouped_folds(groups, n_folds=2)
    assert sorted(np.bincount(folds)) == [8, 8]
    for g in range(5):
        assert len(np.unique(folds[groups == g])) == 1


def test_fit_uses_groups_so_no_stimulus_straddles_folds(monkeypatch):
    seen = []
    real = grouped_folds

    def spy(groups, n_folds, seed=0):
        folds = real(groups, n_folds, seed)
        seen.append((groups, folds))
        return folds

    monkeypatch.setattr("mindzoo.models.ridge.grouped_folds", spy)
    X, Y = linear_data(8, n=60, v=5, d=2, noise=0.3)
    RidgeDecoder(RidgeConfig(n_folds=3)).fit(X, Y, groups=np.arange(60) // 3)
    groups, folds = seen[0]
    assert all(len(set(folds[groups == g])) == 1 for g in range(20))


def test_too_few_stimuli_for_folds_is_user_error():
    with pytest.raises(UserInputError, match="3 distinct stimuli"):
        grouped_folds(np.array([0, 0, 1, 1, 2, 2]), n_folds=5)


def test_bad_inputs_are_user_errors():
    X, Y = linear_data(9, n=40, v=5, d=2, noise=0.3)
    model = RidgeDecoder(RidgeConfig(n_folds=3))
    with pytest.raises(UserInputError, match="40 trials but features have 39"):
        model.fit(X, Y[:39])
    with pytest.raises(UserInputError, match="groups has shape"):
        model.fit(X, Y, groups=np.arange(10))
    X_nan = X.copy()
    X_nan[3, 2] = np.nan
    with pytest.raises(UserInputError, match="NaN"):
        model.fit(X_nan, Y)
    model.fit(X, Y)
    with pytest.raises(UserInputError, match=r"\[n, 5\]"):
        model.predict(X[:, :4])


def test_constant_voxel_does_not_break_the_fit():
    X, _ = linear_data(10, n=80, v=6, d=2, noise=0.1)
    X[:, 0] = 3.0
    Y = X[:, 1:] @ np.random.default_rng(0).normal(size=(5, 2))
    pred = RidgeDecoder(RidgeConfig(n_folds=4)).fit(X, Y).predict(X)
    assert np.all(np.isfinite(pred))
    assert column_pearson(pred, Y).min() > 0.9


def test_registry_builds_ridge_with_validated_settings():
    model = create_model("ridge", {"n_folds": 3, "alphas": [10.0, 1.0]})
    assert isinstance(model, RidgeDecoder)
    assert model.config.n_folds == 3
    assert model.config.alphas == [1.0, 10.0]  # sorted for the search
