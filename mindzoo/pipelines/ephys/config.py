"""The ephys pipeline's settings (``pipeline.*``): the shared core and the modality presets.

:class:`EphysPipelineConfig` holds every setting of the shared core (steps in
:mod:`mindzoo.pipelines.ephys.pipeline`); :class:`IEEGPipelineConfig` and
:class:`EEGPipelineConfig` set a modality's recording datatype, channel types and defaults.

iEEG (sEEG/ECoG): Du-IN's published defaults. Du-IN (Zheng et al., NeurIPS 2024, section 4.2):
band-pass 0.5-200 Hz, 50 Hz notch (ours: the recording's PowerLineFrequency, 50 Hz where the
sidecar has none), resampled to 1000 Hz, bipolar re-reference along each shaft,
per-channel z-score, 3 s windows after the cue, a label-stratified 80/10/10 split per subject.
Those are the shared defaults, so the iEEG preset only names its datatype.

Scalp EEG: 0.1-40 Hz band, notch at the recording's PowerLineFrequency (harmonics above the band are not notched), common
average reference, 250 Hz, epochs -0.2 to 0.8 s around each event (an ERP window, as in
THINGS-EEG work), per-channel z-score with training statistics; electrodes.tsv positions (e.g. a
CapTrak or standard 10-20 montage written by mne-bids) are stored as given.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ChannelSettings(BaseModel):
    """Which channels reach the store (``pipeline.channels.*``)."""

    model_config = ConfigDict(extra="forbid")

    region_column: str = "region"
    """electrodes.tsv column holding each contact's region label (absent -> ``unknown``)."""
    regions: list[str] | None = None
    """Keep only channels in these regions (e.g. ``[vSMC, STG]``); None keeps all."""
    top_k: int | None = Field(default=None, ge=1)
    """Keep the k channels a linear classifier on the training trials weighs most (Du-IN: 10)."""
    ridge_alpha: float = Field(default=1.0, gt=0)
    """Regularisation of that classifier."""


class EphysPipelineConfig(BaseModel):
    """Settings of the ephys pipeline (``pipeline.*``); subclasses set a modality's defaults."""

    model_config = ConfigDict(extra="forbid")
    datatype: ClassVar[str] = "ieeg"
    data_types: ClassVar[tuple[str, ...]] = ("seeg", "ecog", "dbs")

    subjects: list[str] | None = None
    sessions: list[str] | None = None
    task: str | None = None
    acquisition: str | None = None
    line_freq: float | Literal["auto"] | None = "auto"
    """Line-noise fundamental in Hz, notched with its harmonics inside the band. ``auto``: the
    recording's BIDS ``PowerLineFrequency`` (50 Hz in Europe and Asia, 60 Hz in the Americas),
    and 50 Hz, said in the summary, where the sidecar has none; a number overrides the sidecar;
    None: no notch."""
    l_freq: float | None = Field(default=0.5, gt=0)
    h_freq: float | None = Field(default=200.0, gt=0)
    reference: Literal["bipolar", "average", "none"] = "bipolar"
    bipolar_pairs: list[tuple[str, str]] | None = None
    """Explicit (anode, cathode) pairs; None pairs neighbouring contacts of each shaft."""
    high_gamma: bool = False
    high_gamma_band: tuple[float, float] = (70.0, 170.0)
    sfreq: float = Field(default=1000.0, gt=0)
    """Sampling rate of the stored signals, Hz."""
    tmin: float = 0.0
    tmax: float = 3.0
    """Epoch [tmin, tmax) in seconds relative to each event."""
    event_column: str = "trial_type"
    event_values: list[str] | None = None
    """Events (values of event_column) to epoch on; None: every event."""
    label_column: str | None = None
    """events.tsv column holding the class label; None: the event value."""
    labels: dict[str, str] = {}
    """Map event values (or label_column values) to class names; unmapped values stay."""
    fixed_length: float | None = Field(default=None, gt=0)
    """Epoch back-to-back windows of this many seconds instead of events (label ``window``)."""
    split_column: str | None = None
    """events.tsv column holding train/val/test; None: a label-stratified seeded split."""
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_seed: int = 0
    zscore: bool = True
    channels: ChannelSettings = ChannelSettings()

    @model_validator(mode="after")
    def _consistent(self) -> EphysPipelineConfig:
        if self.tmax <= self.tmin:
            raise ValueError(f"tmax ({self.tmax}) must be after tmin ({self.tmin})")
        if isinstance(self.line_freq, float) and self.line_freq <= 0:
            raise ValueError(f"line_freq ({self.line_freq}) must be > 0, auto or null")
        if self.l_freq and self.h_freq and self.l_freq >= self.h_freq:
            raise ValueError(f"l_freq ({self.l_freq}) must be below h_freq ({self.h_freq})")
        low, high = self.high_gamma_band
        if not 0 < low < high:
            raise ValueError(f"high_gamma_band {self.high_gamma_band} must be 0 < low < high")
        if min(self.split_fractions) < 0 or abs(sum(self.split_fractions) - 1) > 1e-6:
            raise ValueError(f"split_fractions {self.split_fractions} must be >= 0 and sum to 1")
        return self

    @property
    def band(self) -> tuple[float | None, float | None]:
        """The pass band applied to the signal, Hz."""
        return self.high_gamma_band if self.high_gamma else (self.l_freq, self.h_freq)


class IEEGPipelineConfig(EphysPipelineConfig):
    """``pipeline.*`` of an iEEG dataset: the shared defaults, which are the Du-IN preset
    (line_freq 50, l_freq 0.5, h_freq 200, reference bipolar, sfreq 1000, tmin 0, tmax 3)."""

    datatype: ClassVar[str] = "ieeg"
    data_types: ClassVar[tuple[str, ...]] = ("seeg", "ecog", "dbs")


class EEGPipelineConfig(EphysPipelineConfig):
    """``pipeline.*`` of an EEG dataset."""

    datatype: ClassVar[str] = "eeg"
    data_types: ClassVar[tuple[str, ...]] = ("eeg",)

    l_freq: float | None = Field(default=0.1, gt=0)
    h_freq: float | None = Field(default=40.0, gt=0)
    reference: Literal["bipolar", "average", "none"] = "average"
    sfreq: float = Field(default=250.0, gt=0)
    tmin: float = -0.2
    tmax: float = 0.8
