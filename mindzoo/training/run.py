"""`train`: one entry for every model of the zoo; the registry's ``kind`` picks the runner.

=============  ============================================  ==================================
kind           runner                                        run directory
=============  ============================================  ==================================
estimator      :func:`~mindzoo.training.estimators.fit_estimator`   per-subject numpy fits (ridge)
decoder        :func:`~mindzoo.training.decoders.train_decoder`     torch fMRI decoders
ephys          :func:`~mindzoo.training.ephys.train_ephys`          Du-IN stages, EEG baselines
diffusion      :func:`~mindzoo.training.diffusion.train_diffusion`  the store's diffusion cache
=============  ============================================  ==================================

Every runner takes ``(name, store_path, out, subjects, overrides, overwrite, progress, resume)``
and returns the run directory; the layouts are described in each runner's module.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mindzoo.models import get_model_info
from mindzoo.training.decoders import train_decoder
from mindzoo.training.diffusion import train_diffusion
from mindzoo.training.ephys import train_ephys
from mindzoo.training.estimators import fit_estimator

RUNNERS: dict[str, Callable[..., Path]] = {
    "estimator": fit_estimator,
    "decoder": train_decoder,
    "ephys": train_ephys,
    "diffusion": train_diffusion,
}


def train_model(
    name: str,
    store_path: Path,
    out: Path | None,
    subjects: list[str] | None = None,
    overrides: list[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    resume: bool = False,
) -> Path:
    """Train model ``name`` on the store's training split; returns the run directory.

    ``resume`` continues a torch model's run in ``out`` from its newest checkpoint; ``out=None``
    is for runners that choose their own place (diffusion: the store's cache).
    """
    runner = RUNNERS[get_model_info(name).kind]
    return runner(
        name,
        Path(store_path),
        None if out is None else Path(out),
        subjects,
        overrides or [],
        overwrite=overwrite,
        progress=progress,
        resume=resume,
    )
