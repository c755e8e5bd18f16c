"""YAML presets and `--set key=value` overrides, validated by pydantic models.

A preset is a YAML mapping. Users change it on the command line with dotted keys
(`--set pipeline.glm=lss --set simulator.n_subjects=5`); values are parsed as YAML, so
`--set features=[pixels]` gives a list. A key that does not exist is an error that lists the
keys that do: typos must never be silently ignored.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from mindzoo.errors import UserInputError


def configs_dir() -> Path:
    """Directory holding the shipped YAML presets (``mindzoo/configs/``, package data)."""
    return Path(__file__).resolve().parent / "configs"


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping; a parse error or a non-mapping is a UserInputError naming the file."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0]
        raise UserInputError(f"Cannot parse YAML in {path}: {first}; fix the file syntax") from exc
    if not isinstance(data, dict):
        raise UserInputError(f"Expected a YAML mapping in {path}, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` into (["a","b","c"], parsed value)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UserInputError(f"Bad --set {text!r}: expected KEY=VALUE, e.g. --set pipeline.glm=lss")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise UserInputError(f"Bad --set {text!r}: value is not valid YAML") from exc
    return key.strip().split("."), value


def apply_overrides(config: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `config` with each `key=value` override applied.

    Only existing keys may be set; a missing key raises UserInputError listing valid keys.
    Keys whose current value is `None` are accepted (optional settings).
    """
    result = copy.deepcopy(config)
    for text in overrides:
        path, value = parse_override(text)
        node: Any = result
        for depth, part in enumerate(path):
            if not isinstance(node, dict) or part not in node:
                where = ".".join(path[:depth]) or "the top level"
                valid = ", ".join(sorted(node)) if isinstance(node, dict) else "(not a mapping)"
                raise UserInputError(
                    f"Unknown --set key {'.'.join(path)!r}: {part!r} is not a key of {where}; "
                    f"valid keys: {valid}"
                )
            if depth == len(path) - 1:
                node[part] = value
            else:
                node = node[part]
    return result


def validate(model: type[BaseModel], data: dict[str, Any], where: str) -> BaseModel:
    """Validate `data` with a pydantic model; errors become one line naming `where` and the field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise UserInputError(f"Invalid setting {loc!r} in {where}: {err['msg']}") from exc


def config_hash(payload: Any) -> str:
    """Stable sha256 of a JSON-serialisable payload (sorted keys): the cache key of a store."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def resolve_preset(
    name: str,
    overrides: list[str],
    sections: dict[str, type[BaseModel]],
    schema: type[BaseModel],
) -> BaseModel:
    """The one settings resolver of models: preset YAML -> ``preset=VARIANT`` -> ``--set`` -> pydantic.

    The preset is ``mindzoo/configs/models/NAME.yaml`` (none is fine: the defaults), or
    ``NAME-VARIANT.yaml`` when the overrides hold ``preset=VARIANT`` (e.g. ``preset=paper``: a
    family's published configuration). Each section (``model:``, ``trainer:`` ...) is filled
    with its class's defaults, so every setting can be overridden by ``--set section.key=value``;
    then the sections and the whole (``schema``, whose fields all have defaults) are validated.
    """
    variants = [o.partition("=")[2].strip() for o in overrides if o.partition("=")[0] == "preset"]
    overrides = [o for o in overrides if o.partition("=")[0] != "preset"]
    stem = f"{name}-{variants[-1]}" if variants else name
    preset_path = configs_dir() / "models" / f"{stem}.yaml"
    if variants and not preset_path.is_file():
        have = sorted(p.stem for p in preset_path.parent.glob(f"{name}-*.yaml"))
        raise UserInputError(
            f"No preset {preset_path}; presets of {name}: {', '.join(have) or 'none'}"
        )
    preset = load_yaml(preset_path) if preset_path.is_file() else {}
    preset.pop("name", None)
    settings = {**schema().model_dump(mode="json"), **preset}
    for key, cls in sections.items():
        where = f"{preset_path} ({key}:)"
        settings[key] = validate(cls, preset.get(key, {}), where).model_dump(mode="json")
    settings = apply_overrides(settings, overrides)
    for key, cls in sections.items():
        validate(cls, settings[key], f"model {name} ({key}.*)")
    return validate(schema, settings, f"model {name}")
