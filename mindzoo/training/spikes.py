"""`train` for spike models (Neuroformer and the spike baselines) on a spikes store.

One path for all: the model (:class:`~mindzoo.models.spike_base.SpikeModel`) is built for the
recordings (:class:`~mindzoo.datasets.spike_views.SpikeInfo`), optionally started from an earlier
run (``--set init=RUN``: Neuroformer's few-shot behaviour fine-tuning starts from a pre-trained
run), fitted in closed form on the training windows (:meth:`SpikeModel.fit`: rates, PSTHs, ridge,
behaviour standardisation) and, when it has trainable parameters, trained by the one
:class:`~mindzoo.training.trainer.Trainer` on :class:`~mindzoo.datasets.spike_views.SpikeWindows`
(validation loss every epoch, early stopping, checkpoints, ``--resume``).

A run directory (``braindecode-cli train NAME --store S --out RUN``)::

    config.json          model, kind "spikes", settings (model, data, trainer, init), store,
                         subjects, build (the SpikeInfo that rebuilds the model)
    model.safetensors    final (best-validation) weights, closed-form fits as buffers
    metrics.json         training facts (windows per split, loss history); written last
    checkpoints/step-N/  the newest checkpoint of a trained model (for --resume)

``braindecode-cli evaluate --run RUN`` then scores it on the test trials
(:mod:`mindzoo.evaluation.spikes`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from mindzoo.config import resolve_preset
from mindzoo.datasets.spike_views import SpikeDataConfig, SpikeWindows, spike_info
from mindzoo.datasets.store import TensorStore
from mindzoo.errors import UserInputError
from mindzoo.models import count_parameters, create_model, get_model_info
from mindzoo.training import checkpoint as ckpt
from mindzoo.training.ephys import init_spec, read_init_run
from mindzoo.training.rundir import describe_run, fit_in_run_dir, prepare_run_dir
from mindzoo.training.trainer import TrainerConfig, make_accelerator, seed_everything


class SpikeTrainSettings(BaseModel):
    """Settings of one spikes `train` call: the family's ``model`` config, ``data``
    (:class:`SpikeDataConfig`), ``trainer`` (:class:`TrainerConfig`) and the ``init`` run."""

    model_config = ConfigDict(extra="forbid")

    model: dict[str, Any] = {}
    data: dict[str, Any] = {}
    trainer: dict[str, Any] = {}
    init: str | None = None


def resolve_spike_settings(name: str, overrides: list[str]) -> SpikeTrainSettings:
    """Model preset (mindzoo/configs/models/NAME.yaml, or NAME-VARIANT.yaml with
    ``--set preset=VARIANT``) + defaults + ``--set``."""
    sections = {
        "model": get_model_info(name).config_cls,
        "data": SpikeDataConfig,
        "trainer": TrainerConfig,
    }
    return resolve_preset(name, overrides, sections, SpikeTrainSettings)


def train_spikes(
    name: str,
    store_path: Path | str,
    out: Path,
    subjects: list[str] | None = None,
    overrides: list[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    resume: bool = False,
) -> Path:
    """Train spike model ``name`` on the store's training trials; returns the run directory.

    Settings, store and init run are checked before ``out`` is created.
    """
    settings = resolve_spike_settings(name, overrides or [])
    init = read_init_run(name, settings.init)
    family = init_spec(name)
    if init is not None and family.prepare is not None:  # a fine-tune keeps the init's sizes
        model_settings, _ = family.prepare(dict(settings.model), init)
        settings = settings.model_copy(update={"model": model_settings})
    store = TensorStore.open(store_path)
    chosen = store.pick_subjects(subjects)
    data_config = SpikeDataConfig(**settings.data)
    info = spike_info(store, chosen, data_config)
    trainer_config = TrainerConfig(**settings.trainer)
    accelerator = make_accelerator(trainer_config)
    seed_everything(trainer_config.seed)
    model = create_model(name, settings.model, info=info)
    if init is None and model.init_required:
        raise UserInputError(f"{name}: {model.init_required}")
    if init is not None and family.apply is not None:
        family.apply(model, init)
    config = describe_run(
        name,
        settings,
        store,
        chosen,
        kind=model.kind,
        build={"info": info.as_dict()},
        init=str(init.path) if init else None,
    )
    out = Path(out)
    prepare_run_dir(out, resume, overwrite, config, is_main=accelerator.is_main_process)
    splits = {s: SpikeWindows(store, chosen, s, data_config, info) for s in ("train", "val")}
    model.fit(splits["train"])
    state = ckpt.TrainerState()
    if model.needs_training:
        state = fit_in_run_dir(
            out, config, model, splits, trainer_config, accelerator, resume, progress
        )
    elif accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        ckpt.write_json(out / "config.json", config)
    if accelerator.is_main_process:
        ckpt.save_weights(out / "model.safetensors", ckpt.weights(model))
        metrics = {
            "dataset": store.dataset,
            "model": name,
            "kind": model.kind,
            "parameters": count_parameters(model),
            "subjects": {
                s: {
                    "n_units": info.units[s],
                    **{f"n_{k}_windows": splits[k].sizes[i] for k in splits},
                }
                for i, s in enumerate(chosen)
            },
            "training": ckpt.training_summary(state) if model.needs_training else None,
        }
        ckpt.write_json(out / "metrics.json", metrics)
    accelerator.wait_for_everyone()
    return out
