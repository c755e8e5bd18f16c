"""The model zoo's registry: one table ``NAME -> ModelInfo``, imported lazily (timm-style).

A family is one module plus one entry in :data:`MODELS`. The entry names the module and, in it,
the config class and the factory; nothing is imported until a family is used, so listing the
zoo or training one family never imports the others.

:func:`create_model` is the only constructor of a model::

    create_model("ridge", {"n_folds": 3})                       # estimators: config only
    create_model("brain-it", cfg, n_voxels={...}, target_shapes={...})   # fMRI decoders
    create_model("du-in-cls", cfg, info=recording_info)         # ephys models
    create_model("mindeye-mlp")                                 # the family's reference size

Settings are validated by the family's pydantic config, so an unknown or mistyped setting is a
:class:`UserInputError` naming the fix. ``kind`` says how ``train`` runs a family (the training
layer keeps one runner per kind); it is data, not a dispatch in this layer.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from mindzoo.errors import UserInputError


@dataclass(frozen=True)
class ModelInfo:
    """What the zoo knows about one model family, without importing it.

    ``module`` holds the family; in it, ``config`` names its pydantic config class and
    ``factory`` a callable ``factory(config, **options, **shapes) -> model``. ``options`` are
    fixed keyword arguments of this entry (e.g. the Du-IN stage). ``reference`` names a mapping
    of shape arguments (an attribute, or ``module:attribute``) that ``create_model(name)`` builds for, so
    ``braindecode-cli models`` can count parameters; ``None`` for data-sized models (ridge).
    ``init`` names the family's :class:`~mindzoo.models.trainable.StageInit` when a run of it can
    start from an earlier run (``--set init=RUN``). ``kind``: ``decoder`` (torch fMRI decoder),
    ``estimator`` (per-subject numpy model), ``ephys`` (torch ephys model), ``diffusion``
    (image generator of the embedded reconstruction backend).
    """

    name: str
    description: str
    kind: str
    module: str
    config: str
    factory: str
    options: Mapping[str, Any] = field(default_factory=dict)
    reference: str | None = None
    init: str | None = None

    def attribute(self, name: str) -> Any:
        """``name`` from the family's module, or ``"module:name"`` from another (imported on
        first use)."""
        module, _, attribute = name.rpartition(":")
        return getattr(importlib.import_module(module or self.module), attribute)

    @property
    def config_cls(self) -> type[BaseModel]:
        return self.attribute(self.config)

    def reference_shapes(self) -> dict[str, Any] | None:
        """The shape arguments of the family's reference model, or None (data-sized)."""
        return None if self.reference is None else dict(self.attribute(self.reference))


def _decoder(name: str, module: str, family: str, description: str) -> ModelInfo:
    return ModelInfo(
        name, description, "decoder", f"mindzoo.models.{module}", f"{family}Config", family,
        {}, "mindzoo.models.base:REFERENCE_SHAPES",
    )  # fmt: skip


def _duin(name: str, stage: str, description: str, init: str | None = None) -> ModelInfo:
    return ModelInfo(
        name, description, "ephys", "mindzoo.models.du_in_stages", "mindzoo.models.du_in:DuINConfig",
        "build_stage", {"stage": stage}, "mindzoo.models.du_in:REFERENCE_SHAPES", init,
    )  # fmt: skip


def _femba(name: str, stage: str, description: str, init: str | None = None) -> ModelInfo:
    return ModelInfo(
        name, description, "ephys", "mindzoo.models.femba", "FEMBAConfig", "build_femba",
        {"stage": stage}, "REFERENCE_SHAPES", init,
    )  # fmt: skip


def _baseline(name: str, description: str) -> ModelInfo:
    return ModelInfo(
        name, f"{description}; ephys classification", "ephys", "mindzoo.models.eeg_baselines",
        "BaselineConfig", "PerSubjectBaseline", {"family": name}, "mindzoo.models.du_in:REFERENCE_SHAPES",
    )  # fmt: skip


def _spike_baseline(name: str, cls: str, description: str) -> ModelInfo:
    return ModelInfo(
        name, f"Spike baseline: {description}", "spikes", "mindzoo.models.spike_baselines",
        f"{cls}Config", cls, {}, "REFERENCE_SHAPES",
    )  # fmt: skip


# The zoo. A new family: one module in mindzoo/models/ and one entry here.
MODELS: dict[str, ModelInfo] = {
    info.name: info
    for info in (
        ModelInfo(
            "ridge",
            "Per-subject ridge regression voxels -> features, penalty chosen by grouped CV",
            "estimator",
            "mindzoo.models.ridge",
            "RidgeConfig",
            "RidgeDecoder",
        ),
        _decoder(
            "mindeye-mlp",
            "mindeye_mlp",
            "MindEyeMLP",
            "Per-subject linear layer + shared residual MLP (MindEye2 backbone), MSE + SoftCLIP",
        ),
        _decoder(
            "brain-it",
            "brain_it",
            "BrainIT",
            "Brain-IT: voxel embeddings, shared GMM functional clusters, cluster-token "
            "transformer with per-location query tokens; MSE + SoftCLIP",
        ),
        _decoder(
            "mindbridge",
            "mindbridge",
            "MindBridge",
            "MindBridge: voxel max-pooling, per-subject embedder/builder, shared translator, "
            "cycle loss",
        ),
        _duin(
            "du-in-vqvae", "vqvae", "Du-IN stage 1: sEEG tokenizer, VQ-VAE with a cosine codebook"
        ),
        _duin(
            "du-in-mae",
            "mae",
            "Du-IN stage 2: masked prediction of the stage-1 codes (init=VQVAE run)",
            "MAE_INIT",
        ),
        _duin(
            "du-in-cls",
            "cls",
            "Du-IN stage 3: word classification (optional init=MAE run)",
            "CLS_INIT",
        ),
        _femba(
            "femba-pretrain",
            "pretrain",
            "FEMBA: bidirectional-Mamba EEG encoder, masked reconstruction pre-training (60% of "
            "2x16 patches, Smooth-L1 on the masked samples)",
        ),
        _femba(
            "femba",
            "cls",
            "FEMBA classifier: encoder (optional init=femba-pretrain run) + Linear-GELU-Mamba-"
            "mean-Linear head",
            "INIT",
        ),
        _baseline("eegnet", "EEGNetv4 (braindecode), one network per subject"),
        _baseline("shallow-fbcsp", "ShallowFBCSPNet (braindecode), one network per subject"),
        _baseline("eeg-conformer", "EEGConformer (braindecode), one network per subject"),
        ModelInfo(
            "neuroformer",
            "Neuroformer: spike tokens (unit id + time offset), cross-attention to past spikes, "
            "stimulus frames and behaviour, causal self-attention; id/dt heads, contrastive",
            "spikes",
            "mindzoo.models.neuroformer",
            "NeuroformerConfig",
            "Neuroformer",
            {},
            "REFERENCE_SHAPES",
            "INIT",
        ),  # fmt: skip
        _spike_baseline("spike-homogeneous", "Homogeneous", "constant rate per unit"),
        _spike_baseline("spike-psth", "PSTH", "trial-averaged rate per unit, condition and bin"),
        _spike_baseline(
            "spike-glm", "PoissonGLM", "Poisson GLM: stimulus frames + spike-history coupling"
        ),
        _spike_baseline("spike-ridge", "SpikeRidge", "ridge regression binned counts -> behaviour"),
        ModelInfo(
            "diffusion",
            "Embedded conditional pixel diffusion (UNet, classifier-free guidance) for "
            "`reconstruct --backend embedded`; trains on the store's training images",
            "diffusion",
            "mindzoo.models.diffusion",
            "EmbeddedConfig",
            "EmbeddedDiffusion",
            {},
            "REFERENCE_SHAPES",
        ),
    )
}


def list_models() -> list[ModelInfo]:
    """All model families, sorted by name."""
    return [MODELS[name] for name in sorted(MODELS)]


def get_model_info(name: str) -> ModelInfo:
    """The registry entry for ``name``; an unknown name lists the available ones."""
    try:
        return MODELS[name]
    except KeyError:
        raise UserInputError(
            f"Unknown model '{name}'; choose one of: {', '.join(sorted(MODELS))} "
            "(see `braindecode-cli models`)"
        ) from None


def create_model(
    name: str, config: BaseModel | Mapping[str, Any] | None = None, **shapes: Any
) -> Any:
    """Build model ``name`` from its config (a config object, a mapping of settings validated by
    the family's config class, or None for the defaults) and the data's shapes.

    Without shapes, a family with a reference size is built for it (one NSD-sized subject for
    fMRI decoders, one Du-IN subject for ephys models).
    """
    info = get_model_info(name)
    if not isinstance(config, BaseModel):
        config = make_config(name, **(config or {}))
    if not shapes:
        shapes = info.reference_shapes() or {}
    return info.attribute(info.factory)(config, **info.options, **shapes)


def make_config(name: str, **config: Any) -> BaseModel:
    """Validate keyword settings for model ``name`` into its pydantic config."""
    info = get_model_info(name)
    config_cls = info.config_cls
    try:
        return config_cls(**config)
    except ValidationError as err:
        raise UserInputError(_one_line(name, config_cls, err)) from None


def _one_line(name: str, config_cls: type[BaseModel], err: ValidationError) -> str:
    """Summarise a pydantic error as one line naming the setting and the valid keys."""
    first = err.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "<config>"
    valid = ", ".join(config_cls.model_fields)
    if first["type"] == "extra_forbidden":
        return f"Unknown setting '{key}' for model '{name}'; valid settings: {valid}"
    return f"Bad value for '{key}' of model '{name}': {first['msg']}; valid settings: {valid}"
