"""What every pipeline provides, and the registry that finds a dataset's pipeline by name.

A pipeline turns one raw dataset (a BIDS tree, an NSD mirror ...) into its part of a store
version. It names itself and its version (the version enters every store's config hash, so a
change in what a version holds makes a new version instead of a stale cache hit), its
``pipeline.*`` settings class, the input files it will read for given settings (a DataLad source
fetches only those), and how it runs and writes the store. :mod:`mindzoo.pipelines.prepare`
does everything around it (sources, cache key, atomic publishing) the same way for all.

A new pipeline: one module with a :class:`Pipeline` subclass instance, one entry in
:data:`PIPELINES`.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel

from mindzoo.errors import UserInputError


@dataclass(frozen=True)
class Written:
    """What a pipeline wrote into a store version: its subjects and how many raw files it read."""

    subjects: list[str]
    n_files_read: int


class Pipeline(ABC):
    """One raw-data-to-store pipeline (the module docstring says what each part is for)."""

    name: ClassVar[str]
    version: ClassVar[str]
    config_cls: ClassVar[type[BaseModel]]

    def input_files(self, root: Path, config: BaseModel, settings: dict[str, Any]) -> list[Path]:
        """Every file under ``root`` the pipeline reads for ``config`` (for selective fetching);
        ``settings`` are the whole prepare settings (e.g. ``features``: images needed)."""
        raise UserInputError(f"The {self.name} pipeline does not read DataLad datasets")

    def parallel_units(
        self, root: Path, config: BaseModel, settings: dict[str, Any], writer: Any, workers: int
    ) -> list[str] | None:
        """The units a parallel prepare runs as separate jobs (subjects, chunks of the feature
        arrays ...; about ``workers`` run at once), after creating in ``writer`` what several
        jobs fill. None: this pipeline runs only whole (a parallel prepare then runs it here)."""
        return None

    def write_unit(
        self,
        root: Path,
        config: BaseModel,
        settings: dict[str, Any],
        writer: Any,
        unit: str,
        progress: bool,
    ) -> list[str]:
        """One unit of :meth:`parallel_units` into ``writer`` (its own arrays only); the raw
        files it read (their union is the whole prepare's). The bytes equal :meth:`write`'s."""
        raise NotImplementedError

    @abstractmethod
    def write(
        self,
        root: Path,
        config: BaseModel,
        settings: dict[str, Any],
        writer: Any,
        progress: bool,
    ) -> Written:
        """Run on the raw data in ``root`` and write stimuli, features and subjects with the
        :class:`~mindzoo.datasets.store.StoreWriter` ``writer`` (which publishes atomically)."""


# name -> "module:attribute" of the pipeline instance, imported on first use.
PIPELINES: dict[str, str] = {
    "fmri": "mindzoo.pipelines.fmri_store:BIDS_FMRI",
    "nsd-mirror": "mindzoo.pipelines.fmri_store:NSD_MIRROR",
    "ieeg": "mindzoo.pipelines.ephys.pipeline:IEEG",
    "eeg": "mindzoo.pipelines.ephys.pipeline:EEG",
    "spikes": "mindzoo.pipelines.spikes.pipeline:NWB_SPIKES",
}


def get_pipeline(name: str) -> Pipeline:
    """The pipeline registered as ``name``; an unknown name lists the known ones."""
    if name not in PIPELINES:
        raise UserInputError(
            f"No pipeline {name!r} in this version; pipelines: {', '.join(sorted(PIPELINES))}"
        )
    module, _, attribute = PIPELINES[name].partition(":")
    return getattr(importlib.import_module(module), attribute)
