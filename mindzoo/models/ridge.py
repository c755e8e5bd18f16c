"""Per-subject ridge regression from voxels to a feature space, the zoo's linear baseline.

``RidgeDecoder`` fits ``Y ≈ standardise(X) @ coef + intercept`` for one subject, where ``X`` is
``[n_trials, n_voxels]`` (single-trial betas) and ``Y`` is ``[n_trials, n_features]`` (the image
features of each trial's stimulus). The penalty is chosen by K-fold cross-validation on the
training data only; folds are grouped by stimulus so that repeats of one image never sit in the
training and validation parts of a fold at once (that would reward memorising images).

Penalty units: with standardised voxels, each trial's squared norm is ``n_voxels``, and under an
isotropic Gaussian prior on the weights the optimal penalty is ``n_voxels / SNR`` (SNR = explained
over unexplained target variance). ``RidgeConfig.alphas`` are therefore given per voxel by default
(``alpha_scale="n_voxels"``): the same grid suits a subject with 2k voxels and one with 15k.

Cross-validation is cheap: one eigendecomposition of the smaller Gram matrix per fold (primal
``XᵀX`` when voxels <= trials, dual ``XXᵀ`` otherwise) gives the solution for every penalty at once.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mindzoo.errors import UserInputError


class RidgeConfig(BaseModel):
    """Hyper-parameters of :class:`RidgeDecoder`; ``alphas`` is the cross-validated grid.

    ``cv_score="pearson"`` (validation r per feature, averaged) tracks the identification
    metrics and, on low-SNR data, keeps more signal than ``"r2"``, which shrinks predictions
    towards the mean. Pearson r is scale-free, though: on targets with no signal at all it cannot
    rank the penalties and the choice is arbitrary, whereas ``"r2"`` then picks a large one.
    """

    model_config = ConfigDict(extra="forbid")

    alphas: list[float] = Field(
        default_factory=lambda: np.logspace(-4, 4, 17).tolist(),
        description="Penalty grid searched by cross-validation (in units set by alpha_scale).",
    )
    alpha_scale: Literal["n_voxels", "none"] = Field(
        "n_voxels", description="Multiply alphas by the number of voxels ('n_voxels') or not."
    )
    n_folds: int = Field(5, ge=2, description="Cross-validation folds, grouped by stimulus.")
    fit_intercept: bool = Field(True, description="Centre voxels and targets on training means.")
    standardize: bool = Field(True, description="Scale voxels to unit variance (training stats).")
    per_target_alpha: bool = Field(
        False, description="Choose one alpha per feature instead of one for all features."
    )
    cv_score: Literal["pearson", "r2"] = Field(
        "pearson", description="Validation score per feature averaged to choose alpha."
    )
    seed: int = Field(0, description="Seed for assigning stimuli to folds.")

    @field_validator("alphas")
    @classmethod
    def _positive_sorted(cls, alphas: list[float]) -> list[float]:
        if not alphas or any(not np.isfinite(a) or a <= 0 for a in alphas):
            raise ValueError(f"alphas must be a non-empty list of positive numbers, got {alphas}")
        return sorted(set(alphas))


def grouped_folds(groups: np.ndarray, n_folds: int, seed: int = 0) -> np.ndarray:
    """Assign each sample to one of ``n_folds`` folds, keeping each group in a single fold.

    ``groups`` is ``[n_samples]`` (e.g. the stimulus index of each trial). Groups are shuffled
    with ``seed`` and dealt, largest first, to the fold with the fewest samples so far, so folds
    are balanced in samples. Returns the fold index ``[n_samples]`` (int64).
    """
    groups = np.asarray(groups)
    if groups.ndim != 1:
        raise UserInputError(f"groups must be 1-D (one stimulus id per trial), got {groups.shape}")
    unique, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    if len(unique) < n_folds:
        raise UserInputError(
            f"Cannot make {n_folds} cross-validation folds from {len(unique)} distinct stimuli; "
            "lower n_folds or train on more stimuli"
        )
    order = np.random.default_rng(seed).permutation(len(unique))
    order = order[np.argsort(-counts[order], kind="stable")]
    fold_of_group = np.empty(len(unique), dtype=np.int64)
    fold_sizes = np.zeros(n_folds, dtype=np.int64)
    for g in order:
        fold = int(np.argmin(fold_sizes))
        fold_of_group[g] = fold
        fold_sizes[fold] += counts[g]
    return fold_of_group[inverse]


@dataclass
class _Standardiser:
    """Column offsets and scales learnt on training rows."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, centre: bool, scale: bool) -> _Standardiser:
        mean = x.mean(axis=0)
        std = x.std(axis=0)
        # Constant voxels carry no information; scaling them by 1 keeps them at zero.
        std = np.where(std > 0, std, 1.0)
        return cls(
            mean=mean if centre else np.zeros_like(mean),
            scale=std if scale else np.ones_like(std),
        )

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.scale


@dataclass
class _RidgePath:
    """Ridge solutions for every penalty: ``coef(alpha) = basis @ (proj_y / (eigvals + alpha))``."""

    basis: np.ndarray  # [n_voxels, k]
    eigvals: np.ndarray  # [k]
    proj_y: np.ndarray  # [k, n_features]

    @classmethod
    def fit(cls, xs: np.ndarray, yc: np.ndarray) -> _RidgePath:
        """``xs`` standardised voxels ``[n, v]``, ``yc`` centred targets ``[n, d]``."""
        n, v = xs.shape
        if v <= n:  # primal: (XᵀX + αI)⁻¹XᵀY with XᵀX = V Λ Vᵀ
            eigvals, vecs = np.linalg.eigh(xs.T @ xs)
            return cls(basis=vecs, eigvals=np.clip(eigvals, 0, None), proj_y=vecs.T @ (xs.T @ yc))
        # dual: Xᵀ(XXᵀ + αI)⁻¹Y with XXᵀ = U Λ Uᵀ
        eigvals, vecs = np.linalg.eigh(xs @ xs.T)
        return cls(basis=xs.T @ vecs, eigvals=np.clip(eigvals, 0, None), proj_y=vecs.T @ yc)

    def coef(self, alpha: np.ndarray) -> np.ndarray:
        """Weights ``[v, d]``; ``alpha`` is a scalar array or one penalty per target ``[d]``."""
        shrink = 1.0 / (self.eigvals[:, None] + np.atleast_1d(alpha)[None, :])
        return self.basis @ (self.proj_y * shrink)

    def predictions(self, xs_val: np.ndarray, alphas: np.ndarray):
        """Yield validation predictions ``[n_val, d]`` for each penalty in turn."""
        projected = xs_val @ self.basis
        for alpha in alphas:
            yield (projected / (self.eigvals + alpha)) @ self.proj_y


def _warn_if_at_grid_edge(best: np.ndarray, alphas: np.ndarray) -> None:
    """Warn when most targets chose the smallest or largest alpha: the optimum may lie outside."""
    at_edge = np.isin(best, [0, len(alphas) - 1]).mean()
    if len(alphas) > 1 and at_edge > 0.5:
        warnings.warn(
            f"Ridge CV chose an alpha at the edge of the grid [{alphas[0]:.3g}, {alphas[-1]:.3g}] "
            f"for {at_edge:.0%} of targets; widen RidgeConfig.alphas",
            UserWarning,
            stacklevel=3,
        )


def _column_scores(pred: np.ndarray, true: np.ndarray, kind: str) -> np.ndarray:
    """Per-target validation score ``[d]``; targets constant in validation score 0."""
    tc = true - true.mean(axis=0)
    ss_true = np.sum(tc**2, axis=0)
    if kind == "r2":
        sse = np.sum((true - pred) ** 2, axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(ss_true > 0, 1.0 - sse / ss_true, 0.0)
    pc = pred - pred.mean(axis=0)
    denom = np.sqrt(ss_true * np.sum(pc**2, axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, np.sum(pc * tc, axis=0) / denom, 0.0)


class RidgeDecoder:
    """Ridge regression voxels -> features for one subject, with a cross-validated penalty.

    After :meth:`fit`, ``cv_results_`` holds ``alphas`` (absolute penalties searched),
    ``mean_scores`` (validation score per alpha, averaged over folds and targets), ``alpha``
    (the chosen penalty: a float, or an array ``[d]`` with ``per_target_alpha``) and ``score``.
    """

    def __init__(self, config: RidgeConfig | None = None):
        self.config = config or RidgeConfig()
        self.cv_results_: dict = {}
        self._coef: np.ndarray | None = None
        self._intercept: np.ndarray | None = None
        self._x: _Standardiser | None = None

    # ------------------------------------------------------------------ fitting
    def fit(self, X: np.ndarray, Y: np.ndarray, groups: np.ndarray | None = None) -> RidgeDecoder:
        """Cross-validate the penalty on ``X [n, v]``, ``Y [n, d]`` and refit on all rows.

        ``groups [n]`` names the stimulus of each row (repeats share a group); ``None`` treats
        every row as its own stimulus.
        """
        X, Y = _as_float_matrices(X, Y)
        groups = np.arange(len(X)) if groups is None else np.asarray(groups)
        if groups.shape != (len(X),):
            raise UserInputError(
                f"groups has shape {groups.shape} but X has {len(X)} rows; "
                "pass one stimulus id per trial"
            )
        alphas = self._absolute_alphas(X.shape[1])
        fold_scores = self._cross_validate(X, Y, groups, alphas)  # [n_folds, n_alphas, d]
        if not self.config.per_target_alpha:
            fold_scores = fold_scores.mean(axis=2, keepdims=True)
        cv_scores = fold_scores.mean(axis=0)  # [n_alphas, d] or [n_alphas, 1]
        best = np.argmax(cv_scores, axis=0)
        _warn_if_at_grid_edge(best, alphas)
        chosen = alphas[best]
        score = float(cv_scores[best, np.arange(len(best))].mean())
        mean_scores = cv_scores.mean(axis=1)

        self._x, yc, y_mean = self._prepare(X, Y)
        self._coef = _RidgePath.fit(self._x(X), yc).coef(chosen).astype(np.float32)
        self._intercept = y_mean.astype(np.float32)
        self.cv_results_ = {
            "alphas": alphas,
            "mean_scores": mean_scores,
            "alpha": chosen if self.config.per_target_alpha else float(chosen[0]),
            "score": score,
        }
        return self

    def _absolute_alphas(self, n_voxels: int) -> np.ndarray:
        factor = n_voxels if self.config.alpha_scale == "n_voxels" else 1
        return np.asarray(self.config.alphas, dtype=np.float64) * factor

    def _prepare(self, X: np.ndarray, Y: np.ndarray):
        """Standardiser for ``X`` and centred ``Y`` (with its mean) from training rows."""
        cfg = self.config
        standardiser = _Standardiser.fit(X, centre=cfg.fit_intercept, scale=cfg.standardize)
        y_mean = Y.mean(axis=0) if cfg.fit_intercept else np.zeros(Y.shape[1])
        return standardiser, Y - y_mean, y_mean

    def _cross_validate(
        self, X: np.ndarray, Y: np.ndarray, groups: np.ndarray, alphas: np.ndarray
    ) -> np.ndarray:
        """Validation score ``[n_folds, n_alphas, d]``."""
        folds = grouped_folds(groups, self.config.n_folds, self.config.seed)
        scores = np.zeros((self.config.n_folds, len(alphas), Y.shape[1]))
        for fold in range(self.config.n_folds):
            train, val = folds != fold, folds == fold
            standardiser, yc, y_mean = self._prepare(X[train], Y[train])
            path = _RidgePath.fit(standardiser(X[train]), yc)
            preds = path.predictions(standardiser(X[val]), alphas)
            for i, pred in enumerate(preds):
                scores[fold, i] = _column_scores(pred + y_mean, Y[val], self.config.cv_score)
        return scores

    # --------------------------------------------------------------- inference
    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted features ``[n, d]`` (float32) for voxels ``X [n, v]``."""
        if self._coef is None or self._x is None:
            raise RuntimeError("RidgeDecoder.predict called before fit or from_state_dict")
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self._coef.shape[0]:
            raise UserInputError(
                f"Expected voxels of shape [n, {self._coef.shape[0]}], got {X.shape}; "
                "pass the same subject and voxel selection the decoder was trained on"
            )
        return (self._x(X) @ self._coef + self._intercept).astype(np.float32)

    # ------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, np.ndarray]:
        """All fitted arrays, ready for ``safetensors.numpy.save_file``."""
        if self._coef is None or self._x is None:
            raise RuntimeError("RidgeDecoder.state_dict called before fit")
        cv = self.cv_results_
        return {
            "coef": self._coef,
            "intercept": self._intercept,
            "x_mean": self._x.mean.astype(np.float64),
            "x_scale": self._x.scale.astype(np.float64),
            "alpha": np.atleast_1d(np.asarray(cv["alpha"], dtype=np.float64)),
            "cv_alphas": np.asarray(cv["alphas"], dtype=np.float64),
            "cv_mean_scores": np.asarray(cv["mean_scores"], dtype=np.float64),
            "cv_score": np.asarray([cv["score"]], dtype=np.float64),
        }

    @classmethod
    def from_state_dict(cls, config: RidgeConfig, state: dict[str, np.ndarray]) -> RidgeDecoder:
        """Rebuild a fitted decoder from :meth:`state_dict` output."""
        missing = sorted(set(_STATE_KEYS) - set(state))
        if missing:
            raise UserInputError(
                f"Ridge checkpoint lacks arrays {missing}; pass a model.safetensors written by "
                "RidgeDecoder.state_dict"
            )
        coef = np.asarray(state["coef"], dtype=np.float32)
        n_voxels, n_features = coef.shape
        expected = {"intercept": (n_features,), "x_mean": (n_voxels,), "x_scale": (n_voxels,)}
        for key, shape in expected.items():
            if np.shape(state[key]) != shape:
                raise UserInputError(
                    f"Ridge checkpoint array '{key}' has shape {np.shape(state[key])}, expected "
                    f"{shape} for coef {coef.shape}; the checkpoint is inconsistent, retrain it"
                )
        model = cls(config)
        model._coef = coef
        model._intercept = np.asarray(state["intercept"], dtype=np.float32)
        model._x = _Standardiser(
            mean=np.asarray(state["x_mean"], dtype=np.float64),
            scale=np.asarray(state["x_scale"], dtype=np.float64),
        )
        alpha = np.asarray(state["alpha"], dtype=np.float64)
        model.cv_results_ = {
            "alphas": np.asarray(state["cv_alphas"], dtype=np.float64),
            "mean_scores": np.asarray(state["cv_mean_scores"], dtype=np.float64),
            "alpha": alpha if config.per_target_alpha else float(alpha[0]),
            "score": float(np.asarray(state["cv_score"])[0]),
        }
        return model


_STATE_KEYS = (
    "coef",
    "intercept",
    "x_mean",
    "x_scale",
    "alpha",
    "cv_alphas",
    "cv_mean_scores",
    "cv_score",
)


def _as_float_matrices(X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``X [n, v]`` and ``Y [n, d]`` and return them as finite float64 arrays."""
    X, Y = np.asarray(X, dtype=np.float64), np.asarray(Y, dtype=np.float64)
    if X.ndim != 2 or Y.ndim != 2:
        raise UserInputError(
            f"Expected voxels [n, v] and features [n, d], got {X.shape} and {Y.shape}; "
            "flatten spatial features per trial before fitting"
        )
    if len(X) != len(Y):
        raise UserInputError(
            f"Voxels have {len(X)} trials but features have {len(Y)}; "
            "pass one feature row per trial (index features by each trial's stimulus)"
        )
    for name, arr in (("Voxel data", X), ("Target features", Y)):
        if not np.all(np.isfinite(arr)):
            raise UserInputError(
                f"{name} contain NaN or infinite values; drop or impute them before fitting"
            )
    return X, Y
