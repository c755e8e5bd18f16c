"""The dataset catalog: one YAML entry per dataset in `configs/datasets/`.

An entry says where the data comes from (`source`), which pipeline prepares it and the default
settings a user may change with `--set`. `resolve_settings` merges the pydantic defaults of the
pipeline (and simulator) with the entry and the overrides, so every valid key exists up front and
a mistyped key is caught.
"""

from __future__ import annotations

from functools import cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

from mindzoo.config import apply_overrides, configs_dir, load_yaml, validate
from mindzoo.errors import UserInputError
from mindzoo.features import FEATURE_SPACES


class DatasetSpec(BaseModel):
    """A catalog entry (configs/datasets/NAME.yaml)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str
    modality: Literal["fmri", "ieeg", "eeg", "spikes"]
    source: Literal["synthetic", "local"]
    licence: str
    access: str
    location: str | None = None
    settings: dict[str, Any] = {}


class FMRIDatasetSettings(BaseModel):
    """What `prepare` of an fMRI dataset runs with; the config hash is taken over this."""

    model_config = ConfigDict(extra="forbid")

    features: list[str]
    pipeline: dict[str, Any]
    simulator: dict[str, Any] | None = None

    @field_validator("features")
    @classmethod
    def _known_spaces(cls, spaces: list[str]) -> list[str]:
        unknown = [s for s in spaces if s not in FEATURE_SPACES]
        if unknown:
            raise ValueError(
                f"unknown feature space {unknown[0]!r}; choose from {sorted(FEATURE_SPACES)}"
            )
        return spaces


@cache
def list_datasets() -> dict[str, DatasetSpec]:
    """All catalog entries by name."""
    specs = {}
    for path in sorted((configs_dir() / "datasets").glob("*.yaml")):
        spec = validate(DatasetSpec, load_yaml(path), str(path))
        specs[spec.name] = spec
    return specs


def get_dataset(name: str) -> DatasetSpec:
    """The catalog entry `name`; an unknown name lists the known ones."""
    specs = list_datasets()
    if name not in specs:
        raise UserInputError(
            f"Unknown dataset {name!r}; known datasets: {', '.join(specs)} "
            "(see `braindecode-cli datasets`)"
        )
    return specs[name]


def default_settings(spec: DatasetSpec) -> dict[str, Any]:
    """The entry's settings with every pipeline/simulator default filled in."""
    from mindzoo.pipelines.fmri import FMRIPipelineConfig

    settings = dict(spec.settings)
    pipeline = FMRIPipelineConfig(**settings.get("pipeline", {})).model_dump(mode="json")
    resolved: dict[str, Any] = {
        "features": list(settings.get("features", [])),
        "pipeline": pipeline,
    }
    if spec.source == "synthetic":
        from mindzoo.datasets.synthetic_fmri import SyntheticFMRIConfig

        resolved["simulator"] = SyntheticFMRIConfig(**settings.get("simulator", {})).model_dump(
            mode="json"
        )
    return resolved


def resolve_settings(
    spec: DatasetSpec, overrides: list[str], seed: int | None = None
) -> dict[str, Any]:
    """Defaults + entry + `--set` overrides (+ `--seed` for simulators), validated."""
    settings = apply_overrides(default_settings(spec), overrides)
    if seed is not None and settings.get("simulator") is not None:
        settings["simulator"]["seed"] = seed
    validate(FMRIDatasetSettings, settings, f"dataset {spec.name}")
    from mindzoo.pipelines.fmri import FMRIPipelineConfig

    settings["pipeline"] = validate(
        FMRIPipelineConfig, settings["pipeline"], f"dataset {spec.name} (pipeline.*)"
    ).model_dump(mode="json")
    if settings.get("simulator") is not None:
        from mindzoo.datasets.synthetic_fmri import SyntheticFMRIConfig

        settings["simulator"] = validate(
            SyntheticFMRIConfig, settings["simulator"], f"dataset {spec.name} (simulator.*)"
        ).model_dump(mode="json")
    return settings
