"""The model zoo: a registry of model families, each with a pydantic config.

Build a model with ``create_model("ridge", n_folds=5)``; ``list_models()`` shows the zoo.
Importing this package registers every family.
"""

from mindzoo.models.registry import (
    ModelInfo,
    create_model,
    get_model_info,
    list_models,
    make_config,
    register_model,
)
from mindzoo.models.ridge import RidgeConfig, RidgeDecoder

__all__ = [
    "ModelInfo",
    "RidgeConfig",
    "RidgeDecoder",
    "create_model",
    "get_model_info",
    "list_models",
    "make_config",
    "register_model",
]
