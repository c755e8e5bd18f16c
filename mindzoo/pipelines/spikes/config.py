"""The NWB spikes pipeline's settings (``pipeline.*``); the steps are in
:mod:`mindzoo.pipelines.spikes.pipeline`."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

CONDITION_COLUMNS = ("condition", "stimulus", "trial_type", "clip")


class SpikesPipelineConfig(BaseModel):
    """Settings of the NWB spikes pipeline (``pipeline.*``)."""

    model_config = ConfigDict(extra="forbid")

    subjects: list[str] | None = None
    """Subject labels to prepare (without ``sub-``; the NWB ``subject.subject_id`` or the file
    name's ``sub-`` entity); None or empty: every subject."""
    sessions: list[str] | None = None
    """Session labels to prepare (NWB ``session_id`` or the file name's ``ses-`` entity);
    None or empty: every session."""
    condition_column: str | list[str] | None = None
    """Trial column(s) naming a trial's condition (trials of one condition share a PSTH); a
    list joins the values with ``-`` (MC_Maze: ``[trial_type, trial_version]``). None: the
    first of condition, stimulus, trial_type, clip present, else the first frame shown in
    the trial, else ``all``."""
    split_column: str | None = "split"
    """Trial column holding train/val/test (trials marked ``none`` are dropped); used when
    present. None, or a file without it: a seeded split stratified by condition."""
    interval: float = Field(default=2.0, gt=0)
    """Length of the fixed intervals cut over the recording when the file has no trials, s."""
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    """train/val/test fractions of each condition's trials (seeded split)."""
    split_seed: int = 0
    """Seed of the stratified split (combined with the store subject name)."""
    min_spikes: int = Field(default=0, ge=0)
    """Drop units with fewer spikes than this (0 keeps every unit)."""
    drop_empty_units: bool = False
    """Drop units without any spike; by default such a unit is an error that names it."""
    behaviour: list[str] = []
    """Behaviour series to keep (snake_case names, e.g. ``running_speed``); empty: all."""

    @model_validator(mode="after")
    def _fractions(self) -> SpikesPipelineConfig:
        if min(self.split) < 0 or abs(sum(self.split) - 1) > 1e-6:
            raise ValueError(f"split {self.split} must be >= 0 and sum to 1")
        return self
