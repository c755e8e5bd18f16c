"""Stores and runs on object storage: any fsspec URL (``s3://bucket/path``, ``gs://``, ``memory://``).

Writing never happens in place. ``prepare`` builds a version in a local staging store and
:func:`publish_version` uploads it: every data file first, ``manifest.json`` (the commit marker)
after them, ``CURRENT`` last. A reader treats a version without manifest as absent, and one
object is written whole or not at all on S3, so a killed upload leaves nothing visible; the next
publish of that version removes the leftovers and uploads again. Runs go the same way
(:func:`upload_run`, ``metrics.json`` last) and come back with :func:`fetch_run` into a local
cache (``$MINDZOO_CACHE``, default ``~/.cache/mindzoo``).

Credentials and endpoints come from the usual places of the filesystem: for S3 the AWS
variables (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL`` ...) or ``~/.aws``, and fsspec's own
configuration (``FSSPEC_S3_ENDPOINT_URL`` ...). S3 needs ``pip install 'mindzoo[s3]'``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import zarr
from fsspec import AbstractFileSystem

from mindzoo.atomic import reclaim_stale, temp_sibling
from mindzoo.datasets.verified import parse_manifest
from mindzoo.errors import UserInputError

MANIFEST = "manifest.json"
CURRENT = "CURRENT"
RUN_MARKER = "metrics.json"  # a finished run's last file, locally and remotely
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_BATCH = 64  # files per upload call (s3fs sends the files of one call concurrently)
_BATCH_BYTES = 256 * 2**20  # bytes read at once when hashing remote files


def is_url(location: object) -> bool:
    """True for an fsspec URL such as ``s3://bucket/store`` (a local path is not one)."""
    return isinstance(location, str) and bool(_URL.match(location))


@dataclass(frozen=True)
class RemotePath:
    """A location on a remote filesystem that reads like a path in messages and run configs:
    ``str()`` is the URL, ``/`` joins, ``name``/``parent`` as for a path, ``resolve()`` is itself."""

    url: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", self.url.rstrip("/"))

    def __str__(self) -> str:
        return self.url

    def __truediv__(self, other: str) -> RemotePath:
        return RemotePath(f"{self.url}/{str(other).strip('/')}")

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def parent(self) -> RemotePath:
        return RemotePath(self.url.rsplit("/", 1)[0])

    def resolve(self) -> RemotePath:
        return self


def filesystem(url: str | RemotePath) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem of ``url`` and the path inside it; listings are re-read (other
    processes write the same bucket). A missing implementation is a one-line error."""
    url = str(url)
    try:
        fs, path = fsspec.url_to_fs(url)
    except ImportError as err:
        protocol = url.split("://", 1)[0]
        if protocol in ("s3", "s3a"):
            raise UserInputError(
                "s3fs is not installed; it is needed for stores and runs on S3: "
                "pip install 'mindzoo[s3]'"
            ) from None
        raise UserInputError(f"Cannot open {url}: {err}") from None
    except ValueError as err:  # an unknown protocol
        raise UserInputError(f"Cannot open {url}: {err}") from None
    fs.invalidate_cache()
    return fs, path.rstrip("/")


def read_text(url: str | RemotePath) -> str | None:
    """The text of one remote file, or None when there is none."""
    fs, path = filesystem(url)
    try:
        return fs.cat_file(path).decode()
    except FileNotFoundError:
        return None
    except PermissionError as err:
        raise UserInputError(
            f"Access to {url} denied ({err}); check the credentials (for S3: the AWS_* "
            "variables or ~/.aws)"
        ) from None


def write_text(url: str | RemotePath, text: str) -> None:
    """Write one remote file whole (one PUT on S3: readers see the old or the new text)."""
    fs, path = filesystem(url)
    fs.pipe_file(path, text.encode())


def read_manifest(version: RemotePath) -> dict[str, Any] | None:
    """The manifest of a remote version, or None when the version is absent or unfinished."""
    text = read_text(version / MANIFEST)
    return None if text is None else parse_manifest(text, str(version))


def resolve_remote_store(url: str | RemotePath) -> RemotePath:
    """A remote store (its CURRENT version) or version URL -> the version's location."""
    root = RemotePath(str(url))
    if read_text(root / MANIFEST) is not None:
        return root
    current = read_text(root / CURRENT)
    if current is not None:
        version = root / "versions" / current.strip()
        if read_text(version / MANIFEST) is not None:
            return version
    raise UserInputError(
        f"No store at {root}; create one with `braindecode-cli prepare DATASET --out {root}`"
    )


def find_remote_version(url: str | RemotePath, config_hash: str) -> RemotePath | None:
    """The complete remote version built from ``config_hash``, or None."""
    version = RemotePath(str(url)) / "versions" / config_hash[:12]
    manifest = read_manifest(version)
    if manifest is not None and manifest.get("config_hash") == config_hash:
        return version
    return None


def list_files(root: str | RemotePath) -> dict[str, int]:
    """{relative path: size} of every file under a remote directory."""
    fs, path = filesystem(root)
    found = fs.find(path, detail=True)
    return {name[len(path) + 1 :]: int(info.get("size") or 0) for name, info in found.items()}


def sha256_files(root: str | RemotePath, sizes: dict[str, int]) -> dict[str, str]:
    """{relative path: sha256} of files under ``root`` ({relative path: size}, as from
    :func:`list_files`): small files are read concurrently in batches of up to 256 MB, a
    larger one alone in blocks."""
    fs, path = filesystem(root)
    hashes: dict[str, str] = {}
    batch: list[str] = []
    batch_bytes = 0

    def flush() -> None:
        nonlocal batch_bytes
        if batch:
            contents = fs.cat([f"{path}/{rel}" for rel in batch], on_error="raise")
            for rel in batch:
                hashes[rel] = hashlib.sha256(contents[f"{path}/{rel}"]).hexdigest()
        batch.clear()
        batch_bytes = 0

    for rel, size in sorted(sizes.items()):
        if size > _BATCH_BYTES:
            digest = hashlib.sha256()
            with fs.open(f"{path}/{rel}", "rb") as handle:
                for block in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(block)
            hashes[rel] = digest.hexdigest()
            continue
        if batch_bytes + size > _BATCH_BYTES or len(batch) >= 4 * _BATCH:
            flush()
        batch.append(rel)
        batch_bytes += size
    flush()
    return hashes


def fsspec_store(version: RemotePath) -> zarr.storage.FsspecStore:
    """The read-only Zarr store of a remote version; chunks are fetched when sliced."""
    store = zarr.storage.FsspecStore.from_url(version.url, read_only=True)
    store.fs.invalidate_cache()
    return store


def _put(fs: AbstractFileSystem, local: list[Path], remote: list[str]) -> None:
    """Upload ``local[i]`` to ``remote[i]``, a batch at a time."""
    for start in range(0, len(local), _BATCH):
        fs.put([str(p) for p in local[start : start + _BATCH]], remote[start : start + _BATCH])


def _upload_tree(local_dir: Path, url: str | RemotePath, last: str) -> int:
    """Replace the remote directory ``url`` by ``local_dir``: leftovers removed, every file but
    ``last`` uploaded, then ``last`` (the marker readers look for). Returns the file count."""
    fs, path = filesystem(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)
    files = sorted(p for p in Path(local_dir).rglob("*") if p.is_file())
    marker = Path(local_dir) / last
    if marker not in files:
        raise ValueError(f"{local_dir} has no {last}; only a finished directory is uploaded")
    data = [p for p in files if p != marker]
    _put(fs, data, [f"{path}/{p.relative_to(local_dir).as_posix()}" for p in data])
    _put(fs, [marker], [f"{path}/{last}"])
    return len(files)


@dataclass
class Published:
    """Where :func:`publish_version` put a version and whether it uploaded anything."""

    version: RemotePath
    uploaded: bool
    n_files: int


def publish_version(local_version_dir: Path, url: str) -> Published:
    """Upload a finished local store version to the remote store ``url`` and point its CURRENT
    at it. The same config hash already published remotely is a cache hit: nothing is uploaded,
    only CURRENT moves."""
    local_version_dir = Path(local_version_dir)
    manifest = json.loads((local_version_dir / MANIFEST).read_text())
    root = RemotePath(url)
    version = find_remote_version(root, manifest["config_hash"])
    uploaded, n_files = version is None, 0
    if version is None:
        version = root / "versions" / local_version_dir.name
        n_files = _upload_tree(local_version_dir, version, MANIFEST)
    write_text(root / CURRENT, version.name + "\n")
    return Published(version, uploaded, n_files)


def cache_dir(kind: str, url: str) -> Path:
    """Local directory for ``url`` under ``$MINDZOO_CACHE/<kind>`` (default
    ``~/.cache/mindzoo``): staging stores, staged and fetched runs."""
    base = (
        os.environ.get("MINDZOO_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "mindzoo"
    )
    url = str(url).rstrip("/")
    name = re.sub(r"[^A-Za-z0-9._-]", "_", url.rsplit("/", 1)[-1])[:40]
    return Path(base) / kind / f"{name}-{hashlib.sha256(url.encode()).hexdigest()[:16]}"


def staging_store(url: str) -> Path:
    """The local store that ``prepare --out URL`` builds in before publishing to ``url``."""
    return cache_dir("stores", url)


def stage_run(url: str, resume: bool = False, overwrite: bool = False, main: bool = True) -> Path:
    """The local directory a run for ``url`` trains in before :func:`upload_run`. A finished
    remote run is refused unless ``overwrite``; without ``resume`` the main process (of a
    data-parallel run) empties a leftover staging directory, so the run starts afresh."""
    if not overwrite and read_text(RemotePath(url) / RUN_MARKER) is not None:
        if resume:
            raise UserInputError(
                f"Run {url} is already finished; evaluate it or train into a new --out"
            )
        raise UserInputError(f"Run {url} exists; choose another --out")
    local = cache_dir("runs", url)
    if main and not resume and local.exists():
        shutil.rmtree(local)
    return local


def upload_run(local_run_dir: Path, url: str) -> RemotePath:
    """Upload a finished run directory to ``url`` (``metrics.json`` last: a run without it is
    unfinished to :func:`fetch_run`); returns the remote location."""
    _upload_tree(Path(local_run_dir), url, RUN_MARKER)
    return RemotePath(url)


def upload_dir(local_dir: Path, url: str, last: str = RUN_MARKER) -> RemotePath:
    """Upload a directory (e.g. a run's ``eval/``) to ``url``, file ``last`` last."""
    _upload_tree(Path(local_dir), url, last)
    return RemotePath(url)


def fetch_run(url: str) -> Path:
    """Download the finished run at ``url`` into the local cache and return that directory.
    Idempotent: a cached copy with the same ``metrics.json`` is used as it is."""
    marker = read_text(RemotePath(url) / RUN_MARKER)
    if marker is None:
        raise UserInputError(
            f"No finished run at {url} (no {RUN_MARKER}); pass the --out of `braindecode-cli train`"
        )
    local = cache_dir("runs", url)
    if (local / RUN_MARKER).is_file() and (local / RUN_MARKER).read_text() == marker:
        return local
    fs, path = filesystem(url)
    files = sorted(fs.find(path))
    local.parent.mkdir(parents=True, exist_ok=True)
    reclaim_stale(local.parent)
    tmp = temp_sibling(local)
    try:
        targets = [tmp / name[len(path) + 1 :] for name in files]
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
        fs.get(files, [str(t) for t in targets])
        if local.exists():
            shutil.rmtree(local)
        os.replace(tmp, local)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return local
