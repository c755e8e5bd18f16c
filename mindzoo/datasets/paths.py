"""Where a command may write: never into a store's versions, over a store, or into its source.

:func:`check_output` is called by ``prepare`` (in :func:`mindzoo.pipelines.prepare.
prepare_dataset`), ``evaluate`` and ``reconstruct`` before they write anything; it raises a
one-line :class:`~mindzoo.errors.UserInputError` (exit 2) naming the path.
"""

from __future__ import annotations

import os
from pathlib import Path

from mindzoo.datasets.remote import CURRENT, MANIFEST
from mindzoo.errors import UserInputError

VERSION_MARKERS = (MANIFEST, "zarr.json")


def _is_version(directory: Path) -> bool:
    return all((directory / name).is_file() for name in VERSION_MARKERS)


def _is_store(directory: Path) -> bool:
    return (directory / CURRENT).is_file() or _is_version(directory)


def protected_by(path: Path) -> Path | None:
    """The store version or ``versions/`` directory that ``path`` is (or lies inside), if any:
    a directory with ``manifest.json`` + ``zarr.json``, or ``versions/`` of a store with
    ``CURRENT``."""
    path = Path(path).expanduser().resolve()
    for directory in (path, *path.parents):
        if _is_version(directory):
            return directory
        if directory.name == "versions" and (directory.parent / CURRENT).is_file():
            return directory
    return None


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output(
    out: Path,
    option: str = "--out",
    *,
    store_ok: bool = True,
    source: Path | None = None,
) -> None:
    """Refuse an output directory ``out`` (given as ``option``) that must not be written.

    Always refused: ``out`` equal to or inside a store version or a store's ``versions/``.
    With ``store_ok=False`` (``evaluate``, ``reconstruct``) also a store directory itself, whose
    ``metrics.json`` would be overwritten. With ``source`` (``prepare``): ``out`` equal to or
    inside the source, and a source inside ``out``'s versions.
    """
    given = Path(out)
    resolved = given.expanduser().resolve()
    check_writable(given, option)
    blocker = protected_by(resolved)
    if blocker is not None:
        what = "version" if _is_version(blocker) else "versions directory"
        raise UserInputError(
            f"{option} {given} is inside the store {what} {blocker}; nothing may be written "
            "there: choose a directory outside the store"
        )
    if not store_ok and resolved.is_dir() and _is_store(resolved):
        raise UserInputError(
            f"{option} {given} is a store directory (its metrics.json would be overwritten); "
            "choose a directory outside the store"
        )
    if source is None:
        return
    raw = Path(source).expanduser().resolve()
    if _inside(resolved, raw):
        raise UserInputError(
            f"{option} {given} is inside --source {source}; the store must not be written into "
            "the data it is prepared from: choose a directory outside the source"
        )
    if _inside(raw, resolved / "versions"):
        raise UserInputError(
            f"--source {source} is inside the versions of {option} {given}; pass the raw data "
            "directory, not a prepared store"
        )


def check_writable(out: Path, option: str = "--out") -> None:
    """Refuse an output directory that cannot be made: ``out`` is a file, lies below a file, or
    its nearest existing directory is not writable (permissions, a read-only file system)."""
    given = Path(out)
    path = given.expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise UserInputError(
            f"{option} {given} is a file, not a directory; choose a directory for {option}"
        )
    existing = next(p for p in (path, *path.parents) if p.exists() or p == p.parent)
    if not existing.is_dir():
        raise UserInputError(
            f"{option} {given} lies below {existing}, which is a file, not a directory; "
            f"choose a directory for {option}"
        )
    read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
    if read_only or not os.access(existing, os.W_OK | os.X_OK):
        why = "on a read-only file system" if read_only else "not writable by this user"
        raise UserInputError(
            f"{option} {given} cannot be written: {existing} is {why}; choose a writable {option}"
        )
