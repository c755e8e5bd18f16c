"""The settings of `synthetic-fmri` and the experimental design they imply (trials, runs, volumes).

The generative model they parameterise is stated in :mod:`mindzoo.datasets.synthetic.fmri`.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SyntheticFMRIConfig(BaseModel):
    """Everything that defines a synthetic-fmri dataset; same config and seed, same data.

    Amplitudes and noise levels are in percent signal change (psc) of the voxel baseline.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 0
    n_subjects: int = Field(4, ge=1, le=99)
    image_size: int = Field(64, ge=16, le=512)
    n_test_images: int = Field(50, ge=2, description="shared by all subjects")
    test_repeats: int = Field(3, ge=1, description="presentations of each test image")
    n_train_images: int = Field(500, ge=1, description="each subject's own training images")
    n_sessions: int = Field(2, ge=1)
    runs_per_session: int = Field(5, ge=1)
    trials_per_run: int = Field(75, ge=1, description="image trials per run")
    blank_trials_per_run: int = Field(
        12, ge=0, description="blank 4 s slots, one per equal stretch of the run, as in NSD"
    )
    tr: float = Field(1.6, gt=0.0, description="repetition time, s")
    stimulus_duration: float = Field(3.0, gt=0.0, description="s")
    interstimulus_interval: float = Field(1.0, ge=0.0, description="s")
    run_lead_in: float = Field(4.0, ge=0.0, description="rest before the first trial, s")
    run_tail: float = Field(14.0, ge=0.0, description="rest after the last trial, s")
    volume_shape: tuple[int, int, int] = (24, 28, 24)
    voxel_size: float = Field(2.5, gt=0.0, description="mm, isotropic")
    n_semantic_components: int = Field(32, ge=1)
    evoked_psc: float = Field(1.5, ge=0.0, description="mean response common to all images")
    signal_psc: float = Field(0.8, ge=0.0, description="SD of the image-specific response")
    trial_gain_sd: float = Field(0.1, ge=0.0, description="trial-to-trial gain shared by voxels")
    neural_noise_psc: float = Field(0.15, ge=0.0, description="trial noise shared in a cluster")
    thermal_noise_psc: float = Field(1.25, ge=0.0, description="AR(1) noise per voxel")
    ar_coefficient: float = Field(0.4, ge=0.0, lt=1.0, description="of the voxel noise, at TR")
    physio_noise_psc: float = Field(0.5, ge=0.0, description="cardiac + respiratory")
    global_noise_psc: float = Field(0.4, ge=0.0, description="fluctuation shared by all voxels")
    regional_noise_psc: float = Field(0.5, ge=0.0, description="fluctuations of nearby voxels")
    drift_psc: float = Field(2.0, ge=0.0, description="slow drift")
    hrf_delay_sd: float = Field(0.5, ge=0.0, description="per-voxel HRF delay, s")
    subject_noise_jitter: float = Field(0.1, ge=0.0, description="log-SD of subject noise scale")

    @model_validator(mode="after")
    def _check_design(self) -> SyntheticFMRIConfig:
        needed = self.n_test_images * self.test_repeats + self.n_train_images
        if needed > self.n_trial_slots:
            raise ValueError(
                f"{self.n_test_images} test images x {self.test_repeats} repeats + "
                f"{self.n_train_images} train images = {needed} trials, but n_sessions x "
                f"runs_per_session x trials_per_run = {self.n_trial_slots}; add runs or trials"
            )
        if min(self.volume_shape) < 12:
            raise ValueError(f"volume_shape {self.volume_shape} is too small; use >= 12 per axis")
        return self

    @property
    def n_trial_slots(self) -> int:
        """Trials per subject."""
        return self.n_sessions * self.runs_per_session * self.trials_per_run

    @property
    def n_runs(self) -> int:
        """Runs per subject."""
        return self.n_sessions * self.runs_per_session

    @property
    def trial_period(self) -> float:
        """Stimulus onset asynchrony, s."""
        return self.stimulus_duration + self.interstimulus_interval

    @property
    def n_volumes(self) -> int:
        """Volumes per run."""
        n_slots = self.trials_per_run + self.blank_trials_per_run
        run_length = self.run_lead_in + n_slots * self.trial_period + self.run_tail
        return math.ceil(run_length / self.tr)
