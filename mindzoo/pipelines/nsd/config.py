"""Options of the NSD-mirror import (:class:`NSDConfig`).

Subjects are NSD's numbers 1-8 (``1``, ``"01"``, ``subj01`` and ``sub-01`` name subject 1),
sessions numbers from 1 (or ``ses-01``). The betas format defaults to ``nifti`` for the volume
spaces and ``mgh`` for fsaverage.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

_DEFAULT_FORMAT = {"func1pt8mm": "nifti", "func1mm": "nifti", "fsaverage": "mgh"}


def _subject_number(value: object) -> int:
    """1, "1", "01", "subj01" and "sub-01" all name NSD subject 1."""
    text = str(value).strip().lower().removeprefix("sub-").removeprefix("subj")
    if not text.isdigit():
        raise ValueError(f"NSD subjects are numbers 1-8 (or subj01 / sub-01), got {value!r}")
    return int(text)


def _session_number(value: object) -> int:
    text = str(value).strip().lower().removeprefix("ses-").removeprefix("session")
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"NSD sessions are numbers from 1 (or ses-01), got {value!r}")
    return int(text)


class NSDConfig(BaseModel):
    """Options of the NSD-mirror import (all names as ``--set pipeline.key=value`` takes them)."""

    model_config = ConfigDict(extra="forbid")

    subjects: list[int] | None = None
    """NSD subjects (1-8; ``subj01``/``sub-01`` accepted); ``None``: all with betas on disk."""
    sessions: list[int] | None = None
    """1-based session numbers; ``None``: every session file on disk for each subject."""
    space: Literal["func1pt8mm", "func1mm", "fsaverage"] = "func1pt8mm"
    """Volume preparation (subject-native 1.8 or 1 mm) or fsaverage surface (Brain-IT)."""
    betas_format: Literal["nifti", "hdf5", "mgh"] | None = None
    """Volume betas: ``nifti`` or ``hdf5``; fsaverage: ``mgh``; ``None``: nifti / mgh."""
    betas_version: Literal["betas_fithrf_GLMdenoise_RR", "betas_fithrf", "betas_assumehrf"] = (
        "betas_fithrf_GLMdenoise_RR"
    )
    roi: str = "nsdgeneral"
    """NSD ROI file name without extension; voxels (vertices) with a value > 0 are kept."""
    surface_coordinates: str | None = "white"
    """fsaverage surface giving vertex positions (mm); ``None`` leaves them NaN."""
    convention: Literal["single-trial", "mindeye1-averaged"] = "single-trial"
    zscore: Literal["session", "none"] = "session"
    label_column: str | None = None
    """Column of nsd_stim_info_merged.csv used as stimulus label (e.g. ``cocoId``)."""
    load_images: bool = True
    image_size: int | None = None
    """Side (pixels) the 425 x 425 images are resized to; ``None`` keeps them."""

    @field_validator("subjects", mode="before")
    @classmethod
    def _parse_subjects(cls, value: object) -> object:
        if value is None:
            return None
        values = value if isinstance(value, list | tuple) else [value]
        if not values:
            raise ValueError("subjects must name at least one subject, or be null for all")
        return sorted({_subject_number(item) for item in values})

    @field_validator("sessions", mode="before")
    @classmethod
    def _parse_sessions(cls, value: object) -> object:
        if value is None:
            return None
        values = value if isinstance(value, list | tuple) else [value]
        if not values:
            raise ValueError("sessions must name at least one session, or be null for all")
        return sorted({_session_number(item) for item in values})

    @field_validator("image_size")
    @classmethod
    def _positive_size(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError(f"image_size must be a positive number of pixels, got {value}")
        return value

    @model_validator(mode="after")
    def _format_fits_space(self) -> NSDConfig:
        allowed = ("mgh",) if self.space == "fsaverage" else ("nifti", "hdf5")
        if self.betas_format is not None and self.betas_format not in allowed:
            raise ValueError(
                f"betas_format {self.betas_format!r} does not exist for space {self.space}; "
                f"use {' or '.join(allowed)}"
            )
        return self

    @property
    def resolved_format(self) -> str:
        return self.betas_format or _DEFAULT_FORMAT[self.space]
