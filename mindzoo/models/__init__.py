"""The model zoo: a registry of model families, each with a pydantic config.

Build a model with ``create_model("ridge", n_folds=5)``; ``list_models()`` shows the zoo.
Importing this package registers every family. Torch decoders follow the interface of
:mod:`mindzoo.models.base` (``decoder_class(name)`` returns their class).
"""

from mindzoo.models.base import (
    AdaptationContext,
    AdaptationStrategy,
    DecoderConfig,
    FMRIDecoder,
    Stage,
    decoder_class,
)
from mindzoo.models.brain_it import BrainIT, BrainITConfig
from mindzoo.models.diffusion import train_diffusion
from mindzoo.models.du_in import DuINConfig
from mindzoo.models.eeg_baselines import BaselineConfig
from mindzoo.models.mindbridge import MindBridge, MindBridgeConfig
from mindzoo.models.mindeye_mlp import MindEyeMLP, MindEyeMLPConfig
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
    "AdaptationContext",
    "AdaptationStrategy",
    "BaselineConfig",
    "BrainIT",
    "BrainITConfig",
    "DecoderConfig",
    "DuINConfig",
    "FMRIDecoder",
    "MindBridge",
    "MindBridgeConfig",
    "MindEyeMLP",
    "MindEyeMLPConfig",
    "ModelInfo",
    "RidgeConfig",
    "RidgeDecoder",
    "Stage",
    "create_model",
    "decoder_class",
    "get_model_info",
    "list_models",
    "make_config",
    "register_model",
    "train_diffusion",
]
