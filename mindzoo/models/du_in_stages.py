"""Du-IN's three stages as zoo entries: building a stage, and starting one from an earlier run.

``du-in-mae`` starts from a ``du-in-vqvae`` run (its frozen tokenizer, required); ``du-in-cls``
optionally from a ``du-in-mae`` or ``du-in-vqvae`` run (its encoder). The architecture is in
:mod:`mindzoo.models.du_in`.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from mindzoo.datasets.ephys_views import RecordingInfo
from mindzoo.errors import UserInputError
from mindzoo.models.du_in import (
    ENCODER_KEYS,
    DuINClassifier,
    DuINConfig,
    DuINEncoder,
    DuINMAE,
    DuINVQVAE,
)
from mindzoo.models.trainable import InitRun, StageInit

_SUBJECT_KEY = re.compile(r"^subject\.layers\.([^.]+)\.|\.stats\.([^.]+)\.")


def subject_of_key(key: str) -> str | None:
    """The subject an encoder state key belongs to (its spatial layer or its tokenizer
    normalisation statistics), None for the shared weights."""
    match = _SUBJECT_KEY.search(key)
    return None if match is None else match.group(1) or match.group(2)


def load_encoder(
    target: DuINEncoder, source_state: dict[str, torch.Tensor], where: str
) -> list[str]:
    """Copy an earlier stage's encoder weights (keys ``encoder.*``) into ``target``.

    Shared parts (tokenizer, transformer) must fit exactly; per-subject parts (spatial layer,
    tokenizer normalisation statistics) are copied for the subjects both have with the same
    channel count, the others keep their fresh weights. Returns the subjects copied.
    """
    prefix = "encoder."
    source = {k[len(prefix) :]: v for k, v in source_state.items() if k.startswith(prefix)}
    own = target.state_dict()
    shared = [k for k in own if subject_of_key(k) is None]
    bad = [k for k in shared if k not in source or source[k].shape != own[k].shape]
    if bad:
        raise UserInputError(
            f"The encoder in {where} does not fit this model ({bad[0]} missing or of another "
            "shape); train with the same store sampling rate and encoder settings"
        )
    update = {k: source[k] for k in shared}
    per_subject: dict[str, list[str]] = {}
    for key in own:
        subject = subject_of_key(key)
        if subject is not None:
            per_subject.setdefault(subject, []).append(key)
    copied = []
    for subject, keys in per_subject.items():
        if all(k in source and source[k].shape == own[k].shape for k in keys):
            update.update({k: source[k] for k in keys})
            copied.append(subject)
    target.load_state_dict({**own, **update})
    return sorted(copied)


def build_stage(
    config: DuINConfig,
    info: RecordingInfo,
    stage: str,
    teacher: dict[str, Any] | None = None,
) -> nn.Module:
    """The module of ``stage`` ("vqvae", "mae", "cls") for ``info``'s recordings (the registry's
    factory). A mae takes its tokenizer's settings and recordings, ``teacher = {"settings": model
    settings, "info": RecordingInfo.as_dict()}`` of the vqvae run it starts from (default: its own).
    """
    if stage == "vqvae":
        return DuINVQVAE(config, info)
    if stage == "mae":
        if teacher is None:
            return DuINMAE(config, info, config)
        return DuINMAE(
            config, info, DuINConfig(**teacher["settings"]), RecordingInfo(**teacher["info"])
        )
    if stage == "cls":
        return DuINClassifier(config, info)
    raise ValueError(f"unknown Du-IN stage {stage!r}")


# ---------------------------------------------------------------- stage chaining (--set init=RUN)
def _mae_prepare(model: dict[str, Any], init: InitRun) -> tuple[dict[str, Any], dict[str, Any]]:
    teacher = {
        "settings": init.config["settings"]["model"],
        "info": init.config["build"]["info"],
    }
    return model, {"teacher": teacher}


def _mae_apply(model: nn.Module, init: InitRun) -> None:
    try:
        model.teacher.load_state_dict(init.weights())
    except RuntimeError as err:
        raise UserInputError(
            f"Weights of {init.path} do not fit its own config ({str(err).splitlines()[0]})"
        ) from None


def _cls_prepare(model: dict[str, Any], init: InitRun) -> tuple[dict[str, Any], dict[str, Any]]:
    inherited = {k: init.config["settings"]["model"][k] for k in ENCODER_KEYS}
    return {**model, **inherited}, {}


def _cls_apply(model: nn.Module, init: InitRun) -> None:
    mismatch = model.info.channel_mismatch(RecordingInfo(**init.config["build"]["info"]))
    if mismatch:
        raise UserInputError(
            f"--set init={init.path} was pre-trained on other channels: {mismatch}; prepare the "
            "pre-training and the labeled store with the same pipeline.channels.* and simulator "
            "settings"
        )
    load_encoder(model.encoder, init.weights(), str(init.path))


MAE_INIT = StageInit(("du-in-vqvae",), True, _mae_prepare, _mae_apply)
CLS_INIT = StageInit(("du-in-mae", "du-in-vqvae"), False, _cls_prepare, _cls_apply)
