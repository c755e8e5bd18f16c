"""The model zoo's registry: one name -> (config class, factory), timm-style.

Each model family registers itself at import time with :func:`register_model`; users build a
model with ``create_model("ridge", n_folds=3)``. Keyword arguments are validated by the family's
pydantic config, so an unknown or mistyped setting is a :class:`UserInputError` naming the fix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from mindzoo.errors import UserInputError


@dataclass(frozen=True)
class ModelInfo:
    """What the zoo knows about one model family.

    ``count_parameters`` takes a built model and returns its number of trainable parameters;
    it is ``None`` for models that are not torch modules (e.g. ridge, whose size depends on data).
    ``train_fn`` is for families with their own training loop (not a store-to-image-feature
    decoder): ``train_fn(store_path, out, subjects, overrides, resume, progress) -> run dir``;
    `train` calls it instead of the decoder path.
    """

    name: str
    description: str
    config_cls: type[BaseModel]
    factory: Callable[[BaseModel], Any]
    count_parameters: Callable[[Any], int] | None = None
    train_fn: Callable[..., Any] | None = None


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    name: str,
    config_cls: type[BaseModel],
    description: str,
    factory: Callable[[BaseModel], Any],
    count_parameters: Callable[[Any], int] | None = None,
    train_fn: Callable[..., Any] | None = None,
) -> ModelInfo:
    """Add a model family to the zoo; ``factory(config)`` must return a new model."""
    if name in _REGISTRY:
        raise ValueError(f"Model '{name}' is already registered")
    info = ModelInfo(name, description, config_cls, factory, count_parameters, train_fn)
    _REGISTRY[name] = info
    return info


def list_models() -> list[ModelInfo]:
    """All registered model families, sorted by name."""
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def get_model_info(name: str) -> ModelInfo:
    """The registry entry for ``name``; an unknown name lists the available ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        available = ", ".join(sorted(_REGISTRY)) or "none"
        raise UserInputError(
            f"Unknown model '{name}'; choose one of: {available} (see `braindecode-cli models`)"
        ) from None


def create_model(name: str, **config: Any) -> Any:
    """Build model ``name`` from keyword settings validated by its config class."""
    info = get_model_info(name)
    return info.factory(make_config(name, **config))


def make_config(name: str, **config: Any) -> BaseModel:
    """Validate keyword settings for model ``name`` into its pydantic config."""
    info = get_model_info(name)
    try:
        return info.config_cls(**config)
    except ValidationError as err:
        raise UserInputError(_one_line(name, info.config_cls, err)) from None


def _one_line(name: str, config_cls: type[BaseModel], err: ValidationError) -> str:
    """Summarise a pydantic error as one line naming the setting and the valid keys."""
    first = err.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "<config>"
    valid = ", ".join(config_cls.model_fields)
    if first["type"] == "extra_forbidden":
        return f"Unknown setting '{key}' for model '{name}'; valid settings: {valid}"
    return f"Bad value for '{key}' of model '{name}': {first['msg']}; valid settings: {valid}"
