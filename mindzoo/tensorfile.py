"""Tensor files that carry their own checksum: weights, predictions and checkpoints.

Every ``*.safetensors`` mindzoo writes stores, in the file's header metadata, the sha256 of its
content (:func:`content_hash`: each tensor's name, dtype, shape and bytes, in name order). Every
read re-computes it, so a flipped byte, a truncated file or a hand-edited header is caught by the
command that reads the file (exit 2, one line naming it), not only by ``verify``. The hash is over
the tensors, not the file bytes, so it does not depend on how safetensors lays out the file.

Files without the checksum (written by other tools, or by mindzoo before it wrote one) are read
unchecked. Nothing here ever unpickles: a file that is not safetensors is refused in one line.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mindzoo.atomic import honour_umask, reclaim_stale, temp_sibling
from mindzoo.errors import DamagedFileError

CHECKSUM_KEY = "mindzoo.sha256"


def _tensor_bytes(value: Any) -> tuple[str, tuple[int, ...], memoryview]:
    """(dtype name, shape, raw bytes) of a numpy array or a torch tensor, without a copy where
    it is contiguous already."""
    if isinstance(value, np.ndarray):
        array = value if value.flags.c_contiguous else np.ascontiguousarray(value)
        return str(array.dtype), tuple(value.shape), memoryview(array.reshape(-1)).cast("B")
    import torch

    tensor = value.detach().contiguous().cpu()
    raw = tensor.reshape(-1).view(torch.uint8).numpy()
    return str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape), memoryview(raw)


def content_hash(tensors: dict[str, Any]) -> str:
    """sha256 (hex) over each tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        dtype, shape, raw = _tensor_bytes(tensors[name])
        digest.update(f"{name}\0{dtype}\0{shape}\0{raw.nbytes}\0".encode())
        digest.update(raw)
    return digest.hexdigest()


def _save(save_file: Callable[..., None], tensors: dict[str, Any], path: Path) -> None:
    """``save_file`` (safetensors' numpy or torch writer) of ``tensors`` with their checksum to a
    temporary beside ``path``, given the umask's mode, then renamed into place."""
    path = Path(path)
    reclaim_stale(path.parent)
    tmp = temp_sibling(path)
    try:
        save_file(tensors, str(tmp), metadata={CHECKSUM_KEY: content_hash(tensors)})
        honour_umask(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_arrays(arrays: dict[str, np.ndarray], path: Path) -> None:
    """Write numpy ``arrays`` to ``path`` atomically, with their checksum, honouring the umask."""
    from safetensors.numpy import save_file

    # (np.ascontiguousarray makes a 0-d array 1-d, as the files always held them)
    _save(save_file, {k: np.ascontiguousarray(v) for k, v in arrays.items()}, path)


def save_state(state: dict[str, Any], path: Path) -> None:
    """Write a torch state dict to ``path`` atomically, with its checksum, honouring the umask."""
    from safetensors.torch import save_file

    _save(save_file, {k: v.detach().contiguous() for k, v in state.items()}, path)


def _damaged(path: Path, what: str) -> DamagedFileError:
    return DamagedFileError(
        f"{path} is damaged ({what}); re-create it with the command that wrote it (a run: train "
        "again; a checkpoint: resume from an earlier one or start afresh)"
    )


def _metadata(path: Path) -> dict[str, str]:
    """The header metadata of a safetensors file; a one-line refusal for anything else."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise DamagedFileError(f"{path} is missing; re-create it with the command that wrote it")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        head = path.read_bytes()[:2] if path.stat().st_size else b""
        kind = "a pickle, never loaded" if head[:1] == b"\x80" or head == b"PK" else "unreadable"
        raise _damaged(path, f"not a plain safetensors tensor file: {kind}; {exc}") from None


def _load(load_file: Callable[..., dict[str, Any]], path: Path, **options: Any) -> dict[str, Any]:
    """``load_file(path)`` (safetensors' numpy or torch reader), checked against the checksum
    the file carries; anything unreadable is a one-line :class:`DamagedFileError`."""
    from safetensors import SafetensorError

    path = Path(path)
    metadata = _metadata(path)
    try:
        tensors = load_file(str(path), **options)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise _damaged(path, str(exc)) from None
    expected = metadata.get(CHECKSUM_KEY)
    if expected is not None and content_hash(tensors) != expected:
        raise _damaged(path, "its tensors do not match the checksum written with them")
    return tensors


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """Numpy arrays of a safetensors file, checked against the checksum it carries."""
    from safetensors.numpy import load_file

    return _load(load_file, path)


def load_state(path: Path, device: str = "cpu") -> dict[str, Any]:
    """Torch tensors of a safetensors file (on ``device``), checked against their checksum."""
    from safetensors.torch import load_file

    return _load(load_file, path, device=device)
