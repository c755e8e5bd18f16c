"""Reads of a store version checked against its manifest: a damaged chunk is never used.

:class:`ChecksummedStore` wraps the Zarr store a :class:`~mindzoo.datasets.store.TensorStore`
reads through. The first time a process reads a file the manifest lists (a chunk, a
``zarr.json``), its sha256 is compared with the manifest's; a mismatch, or a listed file that is
gone (Zarr would silently fill a missing chunk with zeros), stops the command with one line that
names the file and ``verify``. Each file is hashed once per process (the bytes are in memory
then anyway), so the cost is one sha256 pass over what is read — the same order as decompressing
it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncGenerator, Iterable
from pathlib import Path
from typing import Any

from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype
from zarr.storage import WrapperStore

from mindzoo.atomic import sha256_file
from mindzoo.errors import DamagedFileError


def damaged_store(where: str, rel: str, what: str) -> DamagedFileError:
    """The one-line error for a damaged file ``rel`` of the store version at ``where``."""
    return DamagedFileError(
        f"{where}/{rel} {what}: the store is damaged; run `braindecode-cli verify {where}` to list "
        "every damaged file, then `prepare` again (or `verify --repair`)"
    )


PROGRESS_BYTES = 256 * 2**20  # hashing less than this shows no progress bar


def sha256_files(root: Path, rels: Iterable[str], desc: str = "hash") -> dict[str, str]:
    """{rel: sha256 hex} of the files ``root/rel``, with a progress bar (bytes) on stderr when
    there is more than :data:`PROGRESS_BYTES` to read."""
    from tqdm.auto import tqdm

    rels = list(rels)
    total = sum((root / rel).stat().st_size for rel in rels)
    hashes = {}
    with tqdm(
        total=total, desc=desc, unit="B", unit_scale=True, disable=total < PROGRESS_BYTES
    ) as bar:
        for rel in rels:
            hashes[rel] = sha256_file(root / rel, bar.update)
    return hashes


def parse_manifest(text: str, where: str) -> dict[str, Any]:
    """A version's manifest from its ``text``; a damaged one is refused in one line (the
    error's ``problem`` says what is wrong without the advice, for ``verify``'s report)."""
    try:
        manifest = json.loads(text)
    except ValueError as exc:
        manifest = exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("checksums", {}), dict):
        what = "is not valid JSON" if isinstance(manifest, Exception) else "is not a manifest"
        problem = f"manifest.json {what}" + (
            f" ({manifest})" if isinstance(manifest, Exception) else ""
        )
        raise DamagedFileError(
            f"{where}/{problem}: the store version is damaged; run "
            f"`braindecode-cli verify --repair {where}` to set it aside, then `prepare` again",
            problem,
        )
    return manifest


def _slice(buffer: Buffer, byte_range: ByteRequest | None) -> Buffer:
    """The part of a whole file's ``buffer`` that ``byte_range`` asks for."""
    if byte_range is None:
        return buffer
    size = len(buffer)
    if isinstance(byte_range, RangeByteRequest):
        return buffer[byte_range.start : byte_range.end]
    if isinstance(byte_range, OffsetByteRequest):
        return buffer[byte_range.offset : size]
    if isinstance(byte_range, SuffixByteRequest):
        return buffer[max(size - byte_range.suffix, 0) : size]
    raise TypeError(f"unknown byte range {byte_range!r}")


class ChecksummedStore(WrapperStore[Any]):
    """A read-only Zarr store whose listed files are checked against ``checksums`` on first read.

    ``checksums``: {path relative to the version root: sha256 hex} from the manifest;
    ``where``: the version's location for messages. Files not listed are read as they are.
    """

    def __init__(self, store: Any, checksums: dict[str, str], where: str) -> None:
        super().__init__(store)
        self._checksums = checksums
        self._where = where
        self._verified: set[str] = set()

    def _with_store(self, store: Any) -> ChecksummedStore:
        return type(self)(store, self._checksums, self._where)

    async def _checked(self, key: str, prototype: BufferPrototype) -> Buffer:
        """The whole file ``key``, hashed and compared with the manifest."""
        buffer = await self._store.get(key, prototype, None)
        if buffer is None:
            raise damaged_store(self._where, key, "is missing (it is in the manifest)")
        digest = await asyncio.to_thread(
            lambda: hashlib.sha256(buffer.as_numpy_array()).hexdigest()
        )
        if digest != self._checksums[key]:
            raise damaged_store(self._where, key, "does not match its checksum in manifest.json")
        self._verified.add(key)
        return buffer

    async def get(
        self,
        key: str,
        prototype: BufferPrototype | None = None,
        byte_range: ByteRequest | None = None,
    ) -> Buffer | None:
        prototype = prototype or default_buffer_prototype()
        if key not in self._checksums or key in self._verified:
            return await self._store.get(key, prototype, byte_range)
        return _slice(await self._checked(key, prototype), byte_range)

    async def get_partial_values(
        self,
        prototype: BufferPrototype,
        key_ranges: Any,
    ) -> list[Buffer | None]:
        return list(
            await asyncio.gather(*(self.get(key, prototype, rng) for key, rng in key_ranges))
        )

    async def _get_many(
        self, requests: Iterable[tuple[str, BufferPrototype, ByteRequest | None]]
    ) -> AsyncGenerator[tuple[str, Buffer | None], None]:
        for key, prototype, byte_range in requests:
            yield key, await self.get(key, prototype, byte_range)
