"""Reading a run directory's ``config.json`` (and other small JSON files) with one-line errors.

Every command that reads a run (``evaluate``, ``reconstruct``, ``adapt``, ``train --resume``)
goes through :func:`read_json_object` first, so a missing, empty, malformed or truncated file is
one :class:`~mindzoo.errors.UserInputError` naming the file instead of a ``JSONDecodeError``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mindzoo.errors import UserInputError

RUN_KEYS = ("model", "store")


def read_json_object(path: Path, what: str, fix: str) -> dict[str, Any]:
    """The JSON object in ``path`` (``what`` names it in messages, ``fix`` ends them)."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path} is missing; {fix}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserInputError(f"{path} cannot be read ({exc}); {fix}") from None
    try:
        content = json.loads(text)
    except json.JSONDecodeError as exc:
        detail = "it is empty" if not text.strip() else f"{exc.msg} at line {exc.lineno}"
        raise UserInputError(
            f"{path} is not valid JSON ({detail}): a damaged {what}; {fix}"
        ) from None
    if not isinstance(content, dict):
        raise UserInputError(
            f"{path} holds a JSON {type(content).__name__}, not an object: not a {what}; {fix}"
        )
    return content


def read_run_config(run_dir: Path, keys: tuple[str, ...] = RUN_KEYS) -> dict[str, Any]:
    """A run's ``config.json``, checked to be a JSON object with ``keys``."""
    path = Path(run_dir) / "config.json"
    fix = "pass a run directory written by `braindecode-cli train` (or train it again)"
    config = read_json_object(path, "run config", fix)
    missing = [key for key in keys if key not in config]
    if missing:
        raise UserInputError(
            f"{path} lacks {', '.join(repr(k) for k in missing)}: not a run config of "
            f"`braindecode-cli train`; {fix}"
        )
    return config


def check_adaptable(checkpoint: Path) -> None:
    """Refuse, before anything is loaded, a run ``adapt`` cannot adapt: an ephys (EEG/iEEG)
    or spike model, whose networks are per subject and read no voxels."""
    config = read_run_config(Path(checkpoint), keys=("model",))
    kind = config.get("kind")
    if kind in ("ephys-classifier", "ephys-pretrain", "spikes"):
        model, data = config["model"], "spikes" if kind == "spikes" else "EEG/iEEG"
        raise UserInputError(
            f"{checkpoint} is a run of {model} ({data}); `adapt` adapts fMRI decoders (brain-it, "
            f"mindeye-mlp, mindbridge) to a new subject's voxels. Train {model} on the new "
            f"subject instead: `braindecode-cli train {model} --store STORE --subjects SUB`"
        )


def check_image_decoder(run_dir: Path) -> dict[str, Any]:
    """The config of ``run_dir``, refused when the run predicts no image features (an ephys
    classifier, a spike model): ``reconstruct`` turns predicted image features into images."""
    config = read_run_config(Path(run_dir))
    kind = config.get("kind")
    if kind in ("ephys-classifier", "ephys-pretrain", "spikes") or config["model"] == "diffusion":
        data = "spikes" if kind == "spikes" else "EEG/iEEG"
        what = "the diffusion model" if config["model"] == "diffusion" else f"a {data} model"
        raise UserInputError(
            f"{run_dir} is a run of {config['model']} ({what}): it predicts no image features; "
            "`reconstruct` needs a run of an fMRI image-feature decoder (ridge, brain-it, "
            "mindeye-mlp, mindbridge)"
        )
    return config


def check_device(device: str) -> None:
    """Refuse a torch device this machine lacks (``--device cuda`` without a GPU) or a name
    torch does not know."""
    import torch

    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        raise UserInputError(
            f"--device {device!r} is not a torch device; use cpu, cuda or cuda:N"
        ) from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserInputError(
            f"--device {device}: no CUDA GPU is available on this machine "
            "(torch.cuda.is_available() is False); use --device cpu"
        )
    if kind == "mps" and not torch.backends.mps.is_available():
        raise UserInputError(f"--device {device}: MPS is not available here; use --device cpu")
