"""`synthetic-fmri` subjects, trials and BOLD: trial order and onsets, HRF, responses, noise.

Draws everything of one subject before its runs (anatomy, voxel tuning, HRF delays, noise
loadings, trial order) and simulates a run's 4D image; see "Responses" and "BOLD" in
:mod:`mindzoo.datasets.synthetic.fmri`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nilearn.glm.first_level import glover_hrf
from scipy import ndimage, signal

from mindzoo.datasets.synthetic.fmri_anatomy import Anatomy, draw_anatomy
from mindzoo.datasets.synthetic.fmri_config import SyntheticFMRIConfig
from mindzoo.datasets.synthetic.fmri_tuning import (
    Population,
    jitter_voxel_tuning,
    voxel_tuning_responses,
)

FINE_OVERSAMPLING = 16  # fine time grid = TR / 16 (0.1 s at TR 1.6 s)
HRF_LENGTH_S = 32.0
HRF_DELAY_STEP_S = 0.4  # per-voxel HRF delays are rounded to this step so voxels share regressors
N_REGIONAL_COMPONENTS = 8
REGIONAL_SMOOTHNESS_VOXELS = 3.0


def trial_order(
    rng: np.random.Generator,
    config: SyntheticFMRIConfig,
    test_ids: np.ndarray,
    train_ids: np.ndarray,
) -> np.ndarray:
    """Stimulus index of every trial slot, in presentation order: [n_trial_slots]."""
    n_extra = config.n_trial_slots - config.n_test_images * config.test_repeats - len(train_ids)
    extra = rng.choice(train_ids, size=n_extra, replace=n_extra > len(train_ids))
    trials = np.concatenate([np.repeat(test_ids, config.test_repeats), train_ids, extra])
    return rng.permutation(trials)


def run_onsets(rng: np.random.Generator, config: SyntheticFMRIConfig) -> np.ndarray:
    """Onsets (s) of a run's image trials: every trial slot except the blanks.

    One blank falls at a random slot of each of ``blank_trials_per_run`` equal stretches of the
    run, so that no run has a long unbroken stretch of trials (which makes single-trial betas
    poorly estimable).
    """
    n_slots = config.trials_per_run + config.blank_trials_per_run
    stretches = np.array_split(np.arange(n_slots), config.blank_trials_per_run or 1)
    blanks = [rng.choice(stretch) for stretch in stretches] if config.blank_trials_per_run else []
    slots = np.setdiff1d(np.arange(n_slots), blanks)
    return config.run_lead_in + slots * config.trial_period


def trial_regressors(config: SyntheticFMRIConfig, onsets: np.ndarray, delay: float) -> np.ndarray:
    """BOLD time course of every trial of a run for a given HRF delay: [n_volumes, n_trials].

    Scaled so that one trial with the canonical (zero-delay) HRF peaks at 1 (amplitudes are in
    peak % signal change).
    """
    dt = config.tr / FINE_OVERSAMPLING
    boxcar = np.ones(round(config.stimulus_duration / dt))
    kernel = np.convolve(boxcar, glover_hrf(config.tr, FINE_OVERSAMPLING, HRF_LENGTH_S, delay))
    canonical = np.convolve(boxcar, glover_hrf(config.tr, FINE_OVERSAMPLING, HRF_LENGTH_S))
    kernel /= canonical.max()
    onset_samples = np.round(onsets / dt).astype(int)
    lag = np.arange(config.n_volumes)[:, None] * FINE_OVERSAMPLING - onset_samples[None, :]
    valid = (lag >= 0) & (lag < len(kernel))
    return np.where(valid, kernel[np.clip(lag, 0, len(kernel) - 1)], 0.0)


def _ar1(rng: np.random.Generator, n_times: int, n_series: int, phi: float) -> np.ndarray:
    """Stationary unit-variance AR(1) series [n_times, n_series]."""
    white = rng.normal(size=(n_times, n_series))
    white[0] /= np.sqrt(1 - phi**2)  # start from the stationary distribution
    return signal.lfilter([np.sqrt(1 - phi**2)], [1.0, -phi], white, axis=0)


@dataclass(frozen=True)
class Subject:
    """Everything drawn for one subject before its runs are simulated."""

    anatomy: Anatomy
    voxel_cluster: np.ndarray  # [V_signal] cluster index of each signal voxel (brain order)
    responses: np.ndarray  # [n_stimuli, V_signal] amplitude without trial noise, psc
    evoked: np.ndarray  # [V_signal]
    hrf_delay: np.ndarray  # [V_signal] s, on the HRF_DELAY_STEP_S grid
    physio_loading: np.ndarray  # [V_brain, 4] cardiac/respiratory cos/sin loadings
    regional_loading: np.ndarray  # [V_brain, N_REGIONAL_COMPONENTS]
    global_loading: np.ndarray  # [V_brain]
    noise_scale: float
    trials: np.ndarray  # [n_trial_slots] stimulus index


def draw_subject(
    rng: np.random.Generator,
    config: SyntheticFMRIConfig,
    population: Population,
    test_ids: np.ndarray,
    train_ids: np.ndarray,
) -> Subject:
    """Anatomy, voxel tuning, HRF delays, noise loadings and trial order of one subject."""
    anatomy = draw_anatomy(rng, config, population.cluster_region)
    signal_mask = anatomy.roi[anatomy.brain] > 0
    voxel_cluster = anatomy.cluster[anatomy.brain][signal_mask].astype(int) - 1
    voxels = jitter_voxel_tuning(rng, population.clusters, voxel_cluster)
    tuning = voxel_tuning_responses(population, voxels)
    n_signal = len(voxel_cluster)
    # log-normal with mean 1: exp(N(-0.3**2 / 2, 0.3))
    gain = config.signal_psc * np.exp(rng.normal(-0.045, 0.3, n_signal))
    evoked = config.evoked_psc * np.exp(rng.normal(-0.045, 0.3, n_signal))
    delay = np.clip(rng.normal(0.0, config.hrf_delay_sd, n_signal), -1.5, 1.5)
    n_brain = int(anatomy.brain.sum())
    physio = rng.normal(size=(n_brain, 4)) / 2.0  # unit expected power over the 4 components
    regional = _regional_loadings(rng, anatomy)
    return Subject(
        anatomy=anatomy,
        voxel_cluster=voxel_cluster,
        responses=(gain * tuning).astype(np.float32),
        evoked=evoked,
        hrf_delay=np.round(delay / HRF_DELAY_STEP_S) * HRF_DELAY_STEP_S,
        physio_loading=physio,
        regional_loading=regional,
        global_loading=np.exp(rng.normal(0.0, 0.3, n_brain)),
        noise_scale=float(np.exp(rng.normal(0.0, config.subject_noise_jitter))),
        trials=trial_order(rng, config, test_ids, train_ids),
    )


def _regional_loadings(rng: np.random.Generator, anatomy: Anatomy) -> np.ndarray:
    """Smooth spatial maps, normalised so every voxel gets unit total regional variance."""
    positions = np.argwhere(anatomy.brain)
    centres = positions[rng.choice(len(positions), N_REGIONAL_COMPONENTS, replace=False)]
    d2 = ((positions[:, None, :] - centres[None, :, :]) ** 2).sum(axis=-1)
    loading = np.exp(-d2 / (2 * REGIONAL_SMOOTHNESS_VOXELS**2)) + 0.05
    return loading / np.linalg.norm(loading, axis=1, keepdims=True)


def simulate_run(
    rng: np.random.Generator,
    config: SyntheticFMRIConfig,
    subject: Subject,
    run_trials: np.ndarray,
    onsets: np.ndarray,
    session_scale: float,
) -> np.ndarray:
    """One run's 4D image, float32 [*shape, n_volumes], in scanner intensity units."""
    n_vols = config.n_volumes
    noise = _run_noise(rng, config, subject) * subject.noise_scale
    n_trials = len(run_trials)
    trial_gain = 1.0 + rng.normal(0.0, config.trial_gain_sd, size=(n_trials, 1))
    n_clusters = int(subject.voxel_cluster.max(initial=-1)) + 1
    neural = rng.normal(0.0, config.neural_noise_psc, size=(n_trials, n_clusters))
    amplitude = (subject.evoked + subject.responses[run_trials]) * trial_gain
    amplitude += neural[:, subject.voxel_cluster]
    evoked_bold = np.zeros((n_vols, len(subject.voxel_cluster)))
    for delay in np.unique(subject.hrf_delay):
        columns = subject.hrf_delay == delay
        evoked_bold[:, columns] = trial_regressors(config, onsets, delay) @ amplitude[:, columns]
    signal_mask = subject.anatomy.roi[subject.anatomy.brain] > 0
    noise[:, signal_mask] += evoked_bold
    anatomy = subject.anatomy
    baseline = anatomy.baseline[anatomy.brain] * session_scale
    volume = np.zeros((*anatomy.shape, n_vols), dtype=np.float32)
    volume[anatomy.brain] = (baseline * (1.0 + noise / 100.0)).T
    return volume


def _run_noise(
    rng: np.random.Generator, config: SyntheticFMRIConfig, subject: Subject
) -> np.ndarray:
    """All noise of one run in psc, [n_volumes, V_brain]."""
    n_vols = config.n_volumes
    n_brain = len(subject.global_loading)
    times = np.arange(n_vols) * config.tr
    duration = n_vols * config.tr
    # voxel noise
    noise = config.thermal_noise_psc * _ar1(rng, n_vols, n_brain, config.ar_coefficient)
    # slow drift: a linear trend and cosines of period 2, 1 and 2/3 run lengths, weaker with order
    orders = np.arange(1, 4)
    basis = np.cos(np.pi * np.outer(times / duration, orders))
    basis = np.column_stack([basis, times / duration - 0.5])
    coefficients = rng.normal(size=(4, n_brain)) / np.append(orders, 1.0)[:, None]
    noise += config.drift_psc * (basis @ coefficients) / np.sqrt(basis.shape[1] / 2)
    # global and regional shared fluctuations
    noise += config.global_noise_psc * np.outer(
        _ar1(rng, n_vols, 1, 0.9)[:, 0], subject.global_loading
    )
    regional = _ar1(rng, n_vols, N_REGIONAL_COMPONENTS, 0.7)
    noise += config.regional_noise_psc * regional @ subject.regional_loading.T
    noise += config.physio_noise_psc * _physiological(rng, config) @ subject.physio_loading.T
    return noise


def _physiological(rng: np.random.Generator, config: SyntheticFMRIConfig) -> np.ndarray:
    """Cardiac and respiratory quadrature pairs sampled at the TR (aliased): [n_volumes, 4]."""
    dt = config.tr / FINE_OVERSAMPLING
    n_fine = config.n_volumes * FINE_OVERSAMPLING
    series = []
    for mean_hz, spread_hz in ((1.1, 0.1), (0.27, 0.04)):
        # the rate differs between runs and wanders slowly within a run
        rate = mean_hz + spread_hz * rng.uniform(-1, 1)
        wander = ndimage.gaussian_filter1d(rng.normal(size=n_fine), sigma=10.0 / dt)
        wander *= 0.05 * rate / (wander.std() + 1e-12)
        phase = 2 * np.pi * np.cumsum(rate + wander) * dt + rng.uniform(0, 2 * np.pi)
        series += [np.cos(phase), np.sin(phase)]
    return np.stack(series, axis=1)[::FINE_OVERSAMPLING] * np.sqrt(2)
