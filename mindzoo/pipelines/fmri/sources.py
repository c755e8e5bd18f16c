"""Provenance: the ordered set of input files a preparation read (its ``source_files``)."""

from __future__ import annotations

from pathlib import Path


class SourceFiles:
    """Ordered set of the input files read, for provenance."""

    def __init__(self) -> None:
        self._paths: dict[Path, None] = {}

    def add(self, *paths: Path | None) -> None:
        self._paths.update(dict.fromkeys(p for p in paths if p is not None))

    def paths(self) -> list[Path]:
        return list(self._paths)
