"""The model zoo: one registry of model families (:mod:`mindzoo.models.registry`), each a module.

Build a model with ``create_model(name, config, **shapes)``; ``list_models()`` shows the zoo;
``load_model(run_dir)`` rebuilds a trained torch model. Families are imported on first use.
Torch families follow :class:`~mindzoo.models.trainable.TrainableModel` (fMRI decoders:
:class:`~mindzoo.models.base.FMRIDecoder`; ephys models: :class:`~mindzoo.models.trainable.EphysModel`).
"""

from mindzoo.models.loading import build_model, load_model, load_weights
from mindzoo.models.registry import (
    MODELS,
    ModelInfo,
    create_model,
    get_model_info,
    list_models,
    make_config,
)
from mindzoo.models.trainable import (
    EphysModel,
    InitRun,
    Stage,
    StageInit,
    TrainableModel,
    count_parameters,
)

__all__ = [
    "MODELS",
    "EphysModel",
    "InitRun",
    "ModelInfo",
    "Stage",
    "StageInit",
    "TrainableModel",
    "build_model",
    "count_parameters",
    "create_model",
    "get_model_info",
    "list_models",
    "load_model",
    "load_weights",
    "make_config",
]
