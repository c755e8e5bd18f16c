"""Rebuilding a trained torch model from a run (or checkpoint) directory, for any family.

A run's ``config.json`` holds the model name, its settings (``settings.model``) and ``build``:
the shape arguments :func:`~mindzoo.models.registry.create_model` needs (fMRI decoders: their
``build_spec()``, voxels per subject and target shapes; ephys models: the recordings' facts and
the stage extras). Weights come from ``model.safetensors``; nothing is unpickled.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from mindzoo.datasets.ephys_views import RecordingInfo
from mindzoo.datasets.spike_views import SpikeInfo
from mindzoo.errors import UserInputError
from mindzoo.models.registry import create_model, get_model_info
from mindzoo.tensorfile import load_state


def _decoder_shapes(build: dict[str, Any]) -> dict[str, Any]:
    spec = dict(build)  # FamilyClass(config, **build_spec()) rebuilds it (base.py)
    spec["target_shapes"] = {k: tuple(v) for k, v in spec["target_shapes"].items()}
    return spec


def _ephys_shapes(build: dict[str, Any]) -> dict[str, Any]:
    return {"info": RecordingInfo(**build["info"]), **build["extras"]}


def _spike_shapes(build: dict[str, Any]) -> dict[str, Any]:
    return {"info": SpikeInfo.from_dict(build["info"])}


# How each kind of torch model keeps its shape arguments in config.json's "build".
_SHAPES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "decoder": _decoder_shapes,
    "ephys": _ephys_shapes,
    "spikes": _spike_shapes,
}


def build_model(run_config: dict[str, Any]) -> nn.Module:
    """A freshly initialised model of the architecture a run's ``config.json`` describes."""
    name = run_config["model"]
    shapes = _SHAPES.get(get_model_info(name).kind)
    if shapes is None:
        raise UserInputError(f"Model '{name}' is not a torch model; it has no torch checkpoint")
    return create_model(name, run_config["settings"]["model"], **shapes(run_config["build"]))


def load_weights(path: Path, model: nn.Module) -> None:
    """Load safetensors weights into ``model``; a mismatch names the file and the keys."""
    state = load_state(path)
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise UserInputError(
            f"Weights in {path} do not fit the model (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}, wrong shape {wrong[:3]}); the checkpoint belongs to another config"
        )
    model.load_state_dict(state)


def load_model(path: Path) -> nn.Module:
    """Rebuild a trained model from a run or checkpoint directory, in eval mode."""
    path = Path(path)
    config_path, weights_path = path / "config.json", path / "model.safetensors"
    for needed in (config_path, weights_path):
        if not needed.is_file():
            raise UserInputError(
                f"{needed} is missing; pass a run directory of `braindecode-cli train` or one of "
                "its checkpoints/step-* directories"
            )
    model = build_model(json.loads(config_path.read_text()))
    load_weights(weights_path, model)
    return model.eval()
