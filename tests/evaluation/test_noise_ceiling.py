"""NSD noise ceiling on arrays with known signal and noise variance."""

import numpy as np
import pytest

from mindzoo.errors import UserInputError
from mindzoo.evaluation.noise_ceiling import noise_ceiling, noise_ceiling_snr


def _betas(signal_sd: np.ndarray, noise_sd: float, n_images: int, n_reps: int, seed: int = 0):
    """betas[i, r, v] = signal[i, v] + noise[i, r, v] with the given SDs (plus a voxel offset)."""
    rng = np.random.default_rng(seed)
    n_voxels = len(signal_sd)
    signal = rng.normal(size=(n_images, 1, n_voxels)) * signal_sd
    noise = rng.normal(size=(n_images, n_reps, n_voxels)) * noise_sd
    return 5.0 + signal + noise


def test_known_snr_gives_the_analytic_ceiling():
    # signal variance s2, noise variance 1: ncsnr^2 = s2, NC(n) = s2 / (s2 + 1 / n)
    signal_sd = np.repeat([0.0, 0.5, 1.0, 2.0], 25)
    betas = _betas(signal_sd, noise_sd=1.0, n_images=2000, n_reps=3)
    nc = noise_ceiling(betas)
    s2 = signal_sd**2
    expected = s2 / (s2 + 1 / 3)
    for level in np.unique(s2):
        measured = np.median(nc[s2 == level])
        assert measured == pytest.approx(expected[s2 == level][0], abs=0.03)
    np.testing.assert_allclose(noise_ceiling_snr(betas)[s2 == 1.0], 1.0, atol=0.06)


def test_n_average_sets_how_many_repeats_are_averaged():
    betas = _betas(np.ones(50), noise_sd=1.0, n_images=2000, n_reps=3)
    assert np.median(noise_ceiling(betas, n_average=1)) == pytest.approx(0.5, abs=0.03)
    assert np.median(noise_ceiling(betas, n_average=3)) == pytest.approx(0.75, abs=0.03)
    assert np.all(noise_ceiling(betas, n_average=1) < noise_ceiling(betas))


def test_pure_noise_has_a_ceiling_near_zero_and_values_are_fractions():
    betas = _betas(np.zeros(200), noise_sd=2.0, n_images=500, n_reps=3, seed=1)
    nc = noise_ceiling(betas)
    assert nc.shape == (200,)
    assert np.all((nc >= 0.0) & (nc <= 1.0))
    assert np.median(nc) < 0.05


def test_noise_free_repeats_have_a_ceiling_of_one_and_constant_voxels_zero():
    betas = _betas(np.ones(10), noise_sd=0.0, n_images=30, n_reps=2)
    betas[..., 0] = 3.0  # a voxel that never changes
    nc = noise_ceiling(betas)
    assert nc[0] == 0.0
    np.testing.assert_allclose(nc[1:], 1.0)


@pytest.mark.parametrize(
    ("betas", "message"),
    [
        (np.zeros((10, 3)), "n_images, n_reps, n_voxels"),
        (np.zeros((10, 1, 4)), "at least 2 repeats"),
        (np.full((10, 3, 4), np.nan), "NaN"),
    ],
)
def test_bad_betas_are_user_input_errors(betas, message):
    with pytest.raises(UserInputError, match=message):
        noise_ceiling(betas)
