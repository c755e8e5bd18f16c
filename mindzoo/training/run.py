"""`train`: one entry for every model of the zoo; the registry's ``kind`` picks the runner.

=============  ============================================  ==================================
kind           runner                                        run directory
=============  ============================================  ==================================
estimator      :func:`~mindzoo.training.estimators.fit_estimator`   per-subject numpy fits (ridge)
decoder        :func:`~mindzoo.training.decoders.train_decoder`     torch fMRI decoders
ephys          :func:`~mindzoo.training.ephys.train_ephys`          Du-IN stages, EEG baselines
diffusion      :func:`~mindzoo.training.diffusion.train_diffusion`  the store's diffusion cache
spikes         :func:`~mindzoo.training.spikes.train_spikes`        Neuroformer, spike baselines
=============  ============================================  ==================================

Every runner takes ``(name, store_path, out, subjects, overrides, overwrite, progress, resume)``
and returns the run directory; the layouts are described in each runner's module.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from mindzoo.datasets.remote import RemotePath, is_url, stage_run, upload_run
from mindzoo.datasets.store import TensorStore
from mindzoo.errors import UserInputError
from mindzoo.models import get_model_info
from mindzoo.training.decoders import train_decoder
from mindzoo.training.diffusion import train_diffusion
from mindzoo.training.ephys import train_ephys
from mindzoo.training.estimators import fit_estimator
from mindzoo.training.spikes import train_spikes

RUNNERS: dict[str, Callable[..., Path]] = {
    "estimator": fit_estimator,
    "decoder": train_decoder,
    "ephys": train_ephys,
    "diffusion": train_diffusion,
    "spikes": train_spikes,
}


IMAGE_FEATURE_KINDS = ("estimator", "decoder", "diffusion")  # models of fMRI and images
EPHYS_MODELS = "eegnet, shallow-fbcsp, eeg-conformer or du-in-*"


def check_image_store(name: str, store_path: Path | str) -> None:
    """Refuse a store that is not fMRI for a model that decodes (or generates) images: say the
    store's modality and what the model needs, not which image features to add."""
    store = TensorStore.open(store_path)
    modality = store.manifest.get("modality", "fmri")
    if modality == "fmri":
        return
    other = {"spikes": "a spike model (neuroformer, spike-*)"}.get(modality, EPHYS_MODELS)
    raise UserInputError(
        f"Store {store.path} holds {modality} data ({store.manifest.get('dataset')}); {name} "
        f"decodes image features from fMRI voxels: prepare an fMRI dataset (e.g. "
        f"`braindecode-cli prepare synthetic-fmri`) or train {other} on this store"
    )


def train_model(
    name: str,
    store_path: Path | str,
    out: Path | str | None,
    subjects: list[str] | None = None,
    overrides: list[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    resume: bool = False,
) -> Path | RemotePath:
    """Train model ``name`` on the store's training split; returns the run directory.

    ``resume`` continues a torch model's run in ``out`` from its newest checkpoint; ``out=None``
    is for runners that choose their own place (diffusion: the store's cache). ``store_path``
    may be an fsspec URL (read remotely); a URL ``out`` is trained in a local staging directory
    (:func:`~mindzoo.datasets.remote.stage_run`) and uploaded when finished.
    """
    kind = get_model_info(name).kind
    runner = RUNNERS[kind]
    if kind in IMAGE_FEATURE_KINDS:
        check_image_store(name, store_path)
    if out is None and is_url(store_path):
        raise UserInputError(f"A store at a URL ({store_path}) has no local cache; pass --out")
    remote_out = str(out) if is_url(out) else None
    main = os.environ.get("RANK", "0") == "0"
    if remote_out is not None:  # train in a local staging directory, upload when finished
        out = stage_run(remote_out, resume=resume, overwrite=overwrite, main=main)
    run_dir = runner(
        name,
        store_path if is_url(store_path) else Path(store_path),
        None if out is None else Path(out),
        subjects,
        overrides or [],
        overwrite=overwrite,
        progress=progress,
        resume=resume,
    )
    if remote_out is None:
        return run_dir
    if main:
        upload_run(run_dir, remote_out)
    return RemotePath(remote_out)
