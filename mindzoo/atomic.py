"""Atomic writes: hidden temporaries that name their owner, reclaimed once the owner is gone.

Every writer builds its output under a hidden sibling and renames it into place, so readers see
the old output or the complete new one. A temporary is named
``.tmp-<name>-<pid>@<host>-<uuid8>`` (:func:`temp_name`): the process that owns it and a short
hash of the host it runs on. A process killed with ``kill -9`` cannot clean up, so the next writer
in the same directory calls :func:`reclaim_stale`, which removes

* a temporary of this host whose owner process is no longer running;
* a temporary of another host (a shared file system) in which nothing changed for a day;
* a temporary of the older, ownerless format ``.tmp-<name>-<uuid8>`` in which nothing changed
  for an hour;

and says so in one line on stderr (what, and how big). A temporary whose owner is alive (a
concurrent ``prepare`` or training) is never removed.

Files written here honour the umask (:func:`honour_umask`): ``safetensors`` writes through a
private temporary file (mode 0600), which would make shared runs unreadable to colleagues.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

TEMP_PREFIX = ".tmp-"
OLD_FORMAT_STALE_SECONDS = 3600.0
FOREIGN_STALE_SECONDS = 24 * 3600.0
_OWNED = re.compile(r"^\.tmp-(?P<name>.*)-(?P<pid>\d+)@(?P<host>[0-9a-f]{8})-[0-9a-f]{8}$")
_OLD_FORMAT = re.compile(r"^\.tmp-.+-[0-9a-f]{8}$")
# a full disk, a full quota, a read-only file system: the place written to, not the program
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
_OS_ERROR = re.compile(r"\(os error (\d+)\)")  # how Rust libraries (safetensors) report one


def disk_errno(exc: BaseException) -> int | None:
    """The errno (one of :data:`DISK_ERRNOS`) behind ``exc`` or the exceptions it was raised
    from: an ``OSError``, or a library error that wraps one (``... (os error 28)``)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        code = exc.errno if isinstance(exc, OSError) else None
        if code is None:
            found = _OS_ERROR.search(str(exc))
            code = int(found.group(1)) if found else None
        if code in DISK_ERRNOS:
            return code
        exc = exc.__cause__ or exc.__context__
    return None


def _naming(exc: BaseException, path: Path) -> BaseException:
    """``exc`` as an ``OSError`` naming ``path`` (what the user asked for, not a hidden
    temporary) when a full or read-only disk is behind it; else ``exc`` itself."""
    code = disk_errno(exc)
    if code is None:
        return exc
    named = getattr(exc, "filename", None)
    if isinstance(exc, OSError) and named is not None and TEMP_PREFIX not in str(named):
        return exc
    return OSError(code, os.strerror(code), str(path))


def sha256_file(path: Path, on_block: Callable[[int], object] | None = None) -> str:
    """sha256 (hex) of the file ``path``, read in 1 MiB blocks; ``on_block(n_bytes)`` after each
    block (a progress bar's update)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
            if on_block is not None:
                on_block(len(block))
    return digest.hexdigest()


def host_tag() -> str:
    """Eight hex digits naming this host (a hash of its name) in temporary names."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def temp_name(name: str) -> str:
    """A fresh hidden temporary name for output ``name``, owned by this process."""
    return f"{TEMP_PREFIX}{name}-{os.getpid()}@{host_tag()}-{uuid.uuid4().hex[:8]}"


def temp_sibling(path: Path) -> Path:
    """A fresh hidden temporary beside ``path`` (same directory, so a rename is atomic)."""
    path = Path(path)
    return path.with_name(temp_name(path.name))


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (one of another user counts as running)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _last_change(path: Path) -> float:
    """The newest modification time of ``path`` and everything under it."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for dirpath, dirnames, filenames in os.walk(path):
            for entry in [*dirnames, *filenames]:
                try:
                    newest = max(newest, os.lstat(os.path.join(dirpath, entry)).st_mtime)
                except OSError:
                    continue
    return newest


def is_stale(path: Path, now: float | None = None) -> bool:
    """Whether the temporary ``path`` is left over from a writer that cannot finish it."""
    now = time.time() if now is None else now
    owned = _OWNED.match(path.name)
    try:
        if owned is not None:
            if owned["host"] == host_tag():
                return not pid_alive(int(owned["pid"]))
            return now - _last_change(path) > FOREIGN_STALE_SECONDS
        if _OLD_FORMAT.match(path.name):
            return now - _last_change(path) > OLD_FORMAT_STALE_SECONDS
    except OSError:  # removed meanwhile
        return False
    return False


def tree_size(path: Path) -> int:
    """Bytes in the files of ``path`` (a file or a directory tree)."""
    if not path.is_dir() or path.is_symlink():
        return path.lstat().st_size
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
    return total


def format_bytes(size: int) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover


def reclaim_stale(
    directory: Path, remove: Callable[[Path], None] = shutil.rmtree
) -> list[tuple[Path, int]]:
    """Remove the stale temporaries (:func:`is_stale`) directly in ``directory`` (directories
    with ``remove``); returns what was removed with its size in bytes, and says so in one line
    on stderr."""
    directory = Path(directory)
    try:
        candidates = [p for p in directory.iterdir() if p.name.startswith(TEMP_PREFIX)]
    except OSError:  # no directory yet (or unreadable): nothing to reclaim
        return []
    now = time.time()
    removed: list[tuple[Path, int]] = []
    for path in sorted(candidates):
        if not is_stale(path, now):
            continue
        try:
            size = tree_size(path)
            if path.is_dir() and not path.is_symlink():
                remove(path)
            else:
                path.unlink()
        except OSError:
            continue  # another writer reclaimed it first, or it is not ours to remove
        removed.append((path, size))
    if removed:
        names = ", ".join(p.name for p, _ in removed)
        total = format_bytes(sum(size for _, size in removed))
        print(
            f"removed {len(removed)} stale temporar{'y' if len(removed) == 1 else 'ies'} "
            f"({total}) left in {directory} by interrupted writers: {names}",
            file=sys.stderr,
        )
    return removed


def current_umask() -> int:
    """This process's umask (read from /proc where possible: setting it is not thread safe)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def honour_umask(path: Path) -> None:
    """Give the file ``path`` the mode a plain ``open(path, "w")`` would (0644 under the usual
    umask 022), whatever mode the library that wrote it chose."""
    os.chmod(path, 0o666 & ~current_umask())


def missing_dirs(path: Path) -> list[Path]:
    """``path`` and the folders above it that do not exist yet, deepest first (what a
    ``mkdir(parents=True)`` of ``path`` would make)."""
    path = Path(path)
    return [p for p in (path, *path.parents) if not p.exists()]


def remove_empty(dirs: list[Path]) -> None:
    """Remove the folders ``dirs`` (deepest first) that a failed command made, stopping at the
    first one that is not empty (someone else wrote there meanwhile)."""
    for folder in sorted(dirs, key=lambda p: -len(p.parts)):
        try:
            folder.rmdir()
        except FileNotFoundError:
            continue
        except OSError:
            break


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a temporary beside it, then a rename)."""
    path = Path(path)
    reclaim_stale(path.parent)
    tmp = temp_sibling(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        named = _naming(exc, path)
        if named is exc:
            raise
        raise named from exc
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a fresh, empty hidden sibling of `target`; on success it replaces `target`.

    On an exception the sibling is removed and `target` is left as it was, so readers see
    either the old directory or the complete new one, never a half-written one (an old
    `target` is renamed aside before the new one takes its place, then removed). Stale
    temporaries of interrupted writers beside `target` are reclaimed first, and on an exception
    the folders above `target` this call made are removed again. A full or read-only disk
    (:func:`disk_errno`) is raised as an ``OSError`` naming `target`.
    """
    target = Path(target)
    tmp = temp_sibling(target)
    made = missing_dirs(target.parent)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        reclaim_stale(target.parent)
        tmp.mkdir()
        yield tmp
        old = temp_sibling(target) if target.exists() else None
        if old is not None:  # aside first: a kill loses the old one only between two renames
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        elif old is not None:
            old.unlink(missing_ok=True)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_empty(made)
        named = _naming(exc, target) if isinstance(exc, Exception) else exc
        if named is exc:
            raise
        raise named from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
