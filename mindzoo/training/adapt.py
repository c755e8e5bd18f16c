"""`adapt`: a pre-trained decoder + a few trials of a NEW subject -> a run directory for that subject.

What :func:`adapt_model` does:

1. Rebuilds the pre-trained decoder from a run directory of ``train`` (or one of its
   ``checkpoints/step-*``) and asks it for its family's
   :class:`~mindzoo.models.base.AdaptationStrategy`.
2. Takes the new subject's adaptation trials: the FIRST ``n_trials`` trials of its training split
   in acquisition order (session, run, onset), or the first ``fraction`` of them, like
   MindEye2's fine-tuning on the first session(s) of a new subject. By default all of them
   train for a fixed schedule (no model selection at all); with ``data.val_fraction > 0`` a
   validation set (early stopping, best-epoch choice) is carved from THESE trials only, by
   stimulus (``data.split_seed``). The subject's test trials are read only to write its test
   predictions after training, never for training or model selection.
3. ``strategy.prepare(model, context)`` adds the subject and freezes what must not change; the
   :class:`~mindzoo.training.trainer.Trainer` trains the rest over ``strategy.stages(model)``.
   When the strategy ``mixes_source_data`` the pre-training subjects' training trials (from the
   same store, minus the new subject's validation stimuli) are mixed into the training set;
   batches stay subject-homogeneous, validation stays the new subject's.
4. Writes a run directory that ``evaluate`` reads, built in a hidden sibling and renamed at the
   end (nothing half-written)::

       config.json              the pre-trained run's config with the new subject added to
                                ``build`` (so ``load_model`` rebuilds the adapted model),
                                ``subjects: [new subject]``, this store, and ``adaptation``
       model.safetensors        all weights of the adapted model (pre-trained subjects included)
       predictions.safetensors  ``<subject>/test_pred`` etc. for the new subject only
       metrics.json             trials used (n_trials, train/val counts), trained parameters,
                                loss history

The target scaler of the pre-trained model is kept (adaptation does not refit the feature
statistics). Adaptation trains with the checkpoint's settings, updated by
:data:`ADAPT_DEFAULTS`, then by the caller's ``--set trainer.*`` / ``data.*`` overrides.
Adapting is not resumable: it is short; re-run it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mindzoo.atomic import atomic_directory
from mindzoo.config import apply_overrides, validate
from mindzoo.datasets.store import TensorStore, roi_labels
from mindzoo.datasets.views import (
    DataConfig,
    FMRIDataset,
    _Rows,
    _SubjectPart,
    _val_stimuli,
    _with_targets,
    parse_target,
)
from mindzoo.errors import UserInputError
from mindzoo.models import count_parameters, load_model
from mindzoo.models.base import AdaptationContext, FMRIDecoder
from mindzoo.tensorfile import save_arrays
from mindzoo.training import checkpoint as ckpt
from mindzoo.training.decoders import TrainSettings, decoder_targets, predict
from mindzoo.training.trainer import (
    Trainer,
    TrainerConfig,
    make_accelerator,
    seed_everything,
)

# What adaptation changes in the checkpoint's settings (before --set). Few trials make short
# epochs, so more of them. No validation carve by default: a fixed schedule on ALL the chosen
# trials beat early stopping on a few held-back trials on synthetic-fmri (5-25 % of a held-out
# subject's trials, two held-out subjects; docs/decisions.md). `--set data.val_fraction=0.1`
# carves one (from the chosen trials only) and turns early stopping (`patience`) back on.
ADAPT_DEFAULTS: dict[str, dict[str, Any]] = {
    "trainer": {"epochs": 100, "patience": 15},
    "data": {"val_fraction": 0.0},
}
# Only optimisation and validation may change: the architecture and targets are the checkpoint's.
_OVERRIDABLE = ("trainer.", "data.val_fraction", "data.split_seed", "data.cache_mb")


def adaptation_trials(
    store: TensorStore,
    subject: str,
    n_trials: int | None = None,
    fraction: float | None = None,
) -> tuple[np.ndarray, int]:
    """Store rows of the subject's first ``n_trials`` (or ``fraction``) training trials.

    Trials are ordered by acquisition (session, run, onset); returns ``(rows, n_available)``.
    A fraction is rounded to the nearest trial count, at least 2 (one to train, one to validate).
    """
    if (n_trials is None) == (fraction is None):
        raise UserInputError("Pass exactly one of --n-trials N or --fraction F")
    table = store.trials(subject)
    train = table[table["split"] == "train"]
    ordered = train.sort_values(["session", "run", "onset"], kind="stable").index.to_numpy()
    available = len(ordered)
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise UserInputError(f"--fraction {fraction} is outside (0, 1]; e.g. --fraction 0.1")
        n_trials = max(2, int(round(fraction * available)))
    if n_trials < 2:
        raise UserInputError(f"--n-trials {n_trials} is too few: at least 2 are needed")
    if n_trials > available:
        raise UserInputError(
            f"--n-trials {n_trials} is more than the {available} training trials of {subject} "
            f"in store {store.path}; use --n-trials {available} or less"
        )
    rows = np.asarray(table.index.get_indexer(ordered[:n_trials]), dtype=np.int64)
    return rows, available


def adaptation_splits(
    store: TensorStore,
    subject: str,
    rows: np.ndarray,
    targets: dict[str, str],
    data: DataConfig,
    source_subjects: list[str] | None = None,
) -> dict[str, FMRIDataset]:
    """Datasets for adapting to ``subject`` from its trials at ``rows``.

    ``subject_train`` holds the subject's chosen trials that are not validation; ``val`` is
    a seeded ``data.val_fraction`` of the chosen trials' stimuli (may be empty); ``train`` the rest,
    plus every training trial of ``source_subjects`` whose stimulus is not a validation stimulus;
    ``test`` the subject's repeat-averaged test betas (for predictions only).
    """
    features = {name: store.features(*parse_target(spec)) for name, spec in targets.items()}
    cache = data.cache_mb * 2**20
    stim_of = store.trials(subject)["stimulus_index"].to_numpy()
    held = _val_stimuli([stim_of[rows]], data.val_fraction, data.split_seed)
    in_val = np.isin(stim_of[rows], held)
    train_rows, val_rows = rows[~in_val], rows[in_val]
    if not len(train_rows):
        raise UserInputError(
            f"All {len(rows)} adaptation trials went to validation; pass more trials or "
            "--set data.val_fraction=0"
        )
    signals = store.signals(subject)
    own = _SubjectPart(subject, _Rows(signals, train_rows, cache), stim_of[train_rows])
    train_parts = [own]
    for source in source_subjects or []:
        table = store.trials(source)
        stim = table["stimulus_index"].to_numpy()
        keep = np.flatnonzero((table["split"].to_numpy() == "train") & ~np.isin(stim, held))
        train_parts.append(
            _SubjectPart(source, _Rows(store.signals(source), keep, cache), stim[keep])
        )
    val_part = _SubjectPart(subject, _Rows(signals, val_rows, cache), stim_of[val_rows])
    voxels, stim_test, _ = store.split(subject, "test", average_repeats=True)
    test_part = _SubjectPart(subject, _Rows(voxels, np.arange(len(stim_test)), cache), stim_test)
    return {
        "subject_train": _with_targets([own], features, cache),
        "train": _with_targets(train_parts, features, cache),
        "val": _with_targets([val_part], features, cache),
        "test": _with_targets([test_part], features, cache),
    }


def _adapt_settings(
    run_config: dict[str, Any],
    overrides: list[str],
    strategy_defaults: dict[str, Any] | None = None,
) -> TrainSettings:
    """The checkpoint's settings, adaptation trainer defaults, then the caller's overrides."""
    for item in overrides:
        if not item.startswith(_OVERRIDABLE):
            raise UserInputError(
                f"--set {item}: adapt only changes trainer.* and data.val_fraction/split_seed/"
                "cache_mb; the architecture and targets are those of the checkpoint"
            )
    settings = json.loads(json.dumps(run_config["settings"]))
    for section, defaults in ADAPT_DEFAULTS.items():
        settings[section] = {**settings.get(section, {}), **defaults}
    settings["trainer"].update(strategy_defaults or {})
    settings = apply_overrides(settings, overrides)
    validate(TrainerConfig, settings["trainer"], "adapt (trainer.*)")
    validate(DataConfig, settings["data"], "adapt (data.*)")
    return validate(TrainSettings, settings, "adapt")


def _check_subject(store: TensorStore, subject: str, model: FMRIDecoder, source: Path) -> str:
    subject = subject if subject.startswith("sub-") else f"sub-{subject}"
    if subject not in store.subjects:
        raise UserInputError(
            f"Subject {subject} is not in store {store.path}; available: {', '.join(store.subjects)}"
        )
    if subject in model.n_voxels:
        raise UserInputError(
            f"adapt is for a new subject; {subject} was in the pre-training of {source} "
            f"({', '.join(model.subjects)}): evaluate that run, or pre-train without {subject} "
            "(train --subjects)"
        )
    return subject


def _source_subjects(store: TensorStore, model: FMRIDecoder, new: str) -> list[str]:
    """Pre-training subjects present in ``store`` with their voxel counts (for mixing)."""
    missing = [
        s
        for s in model.subjects
        if s != new and (s not in store.subjects or store.signals(s).shape[1] != model.n_voxels[s])
    ]
    if missing:
        raise UserInputError(
            f"This strategy mixes in the pre-training subjects' data, but {missing[0]} is not in "
            f"store {store.path} with the voxels it was trained on; adapt from the pre-training store"
        )
    return [s for s in model.subjects if s != new]


def adapt_model(
    checkpoint: Path,
    store_path: Path | str,
    subject: str,
    out: Path,
    n_trials: int | None = None,
    fraction: float | None = None,
    overrides: list[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Adapt the decoder in ``checkpoint`` to new ``subject`` of ``store_path``; returns ``out``.

    Exactly one of ``n_trials`` (first N training trials) and ``fraction`` (first F of them) is
    given. ``overrides`` are ``KEY=VALUE`` settings (``trainer.*``, ``data.val_fraction`` ...).
    """
    checkpoint, out = Path(checkpoint), Path(out)
    model = load_model(checkpoint)
    run_config = json.loads((checkpoint / "config.json").read_text())
    strategy = model.adaptation_strategy()
    settings = _adapt_settings(run_config, overrides or [], strategy.trainer_defaults)
    store = TensorStore.open(store_path)
    subject = _check_subject(store, subject, model, checkpoint)
    rows, available = adaptation_trials(store, subject, n_trials, fraction)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserInputError(f"Run directory {out} exists and is not empty; choose another --out")
    sources = _source_subjects(store, model, subject) if strategy.mixes_source_data else []
    targets, evaluated = decoder_targets(settings)
    data = DataConfig(**settings.data)
    splits = adaptation_splits(store, subject, rows, targets, data, sources)
    trainer_config = TrainerConfig(**settings.trainer)
    accelerator = make_accelerator(trainer_config)
    seed_everything(trainer_config.seed)  # the new subject's modules start the same every time
    voxel_meta, voxel_attrs = store.axis(subject)
    context = AdaptationContext(
        subject,
        store.signals(subject).shape[1],
        splits["subject_train"],
        voxel_meta,
        roi_labels(voxel_meta, voxel_attrs),
    )
    model.train()
    strategy.prepare(model, context)
    trained = count_parameters(model)
    state = Trainer(trainer_config, accelerator).fit(
        model,
        splits["train"],
        splits["val"],
        checkpoint_dir=None,
        stages=strategy.stages(model),
        progress=progress,
    )
    config = {
        **run_config,
        "settings": settings.model_dump(mode="json"),
        "store": str(store.path.resolve()),
        "store_config_hash": store.manifest["config_hash"],
        "dataset": store.dataset,
        "subjects": [subject],
        "build": model.build_spec(),
        "adaptation": {
            "checkpoint": str(checkpoint.resolve()),
            "pretrained_subjects": [s for s in model.subjects if s != subject],
            "strategy": strategy.name,
            "mixed_source_subjects": sources,
            "trial_selection": "first trials of the training split by (session, run, onset)",
            "n_trials": int(len(rows)),
            "fraction": fraction,
        },
    }
    facts = {
        "n_trials": int(len(rows)),
        "n_available_train_trials": available,
        "n_train_trials": len(splits["subject_train"]),
        "n_val_trials": len(splits["val"]),
        "n_source_trials": int(sum(splits["train"].sizes[1:])),
        "trained_parameters": trained,
    }
    _write_run(out, model, splits["test"], evaluated, state, config, facts, overwrite)
    return out


def _write_run(
    out: Path,
    model: FMRIDecoder,
    test: FMRIDataset,
    evaluated: str,
    state: ckpt.TrainerState,
    config: dict[str, Any],
    facts: dict[str, Any],
    overwrite: bool,
) -> None:
    """Build the run in a hidden sibling directory and rename it into place."""
    subject = config["subjects"][0]
    outputs = predict(model, test)[subject]
    stim = test.stimuli(subject)
    predictions = {
        f"{subject}/test_pred": outputs[evaluated].reshape(len(stim), -1),
        f"{subject}/test_stimulus_index": stim.astype(np.int64),
        **{f"{subject}/outputs/{k}": v.astype(np.float32) for k, v in outputs.items()},
    }
    metrics = {
        "dataset": config["dataset"],
        "model": config["model"],
        "adaptation": {**config["adaptation"], **facts},
        "subjects": {
            subject: {
                "n_train_trials": facts["n_train_trials"],
                "n_val_trials": facts["n_val_trials"],
                "n_test_stimuli": int(len(stim)),
                "n_voxels": model.n_voxels[subject],
            }
        },
        "training": ckpt.training_summary(state),
    }
    with atomic_directory(out) as tmp:  # `adapt_model` refused a non-empty `out` unless overwrite
        ckpt.save_weights(tmp / "model.safetensors", ckpt.weights(model))
        save_arrays(predictions, tmp / "predictions.safetensors")
        ckpt.write_json(tmp / "config.json", config)
        ckpt.write_json(tmp / "metrics.json", metrics)
