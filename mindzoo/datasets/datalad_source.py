"""DataLad source: clone a dataset into the store's cache and fetch only what a prepare reads.

A DataLad dataset (an OpenNeuro mirror such as ``https://github.com/OpenNeuroDatasets/ds001246``,
any git/DataLad URL, a RIA URL ``ria+https://host/store#~alias``, or a local DataLad/git-annex
dataset) is cloned once into ``STORE/raw/<name>-<hash12>``. A clone holds the whole file tree but
no annexed content, so choosing what to fetch is cheap:

- metadata, for every subject (:func:`metadata_files`): top-level files, sidecars, events and
  session tables; the fMRI pipeline reads them all to choose runs, sessions and splits;
- then exactly the files the pipeline will read for the chosen subjects, sessions and task
  (:func:`mindzoo.pipelines.fmri.input_files`: bold runs, masks, confounds, the stimulus
  images the chosen runs show), so another subject's bold never leaves the remote.

``git annex get`` skips content already present and resumes partial transfers, so a prepare
that was interrupted while fetching simply fetches the rest the next time. The clone's HEAD
commit identifies the data: it enters the config hash and the store manifest. A clone of a
local dataset follows that dataset's new commits; a clone of a remote URL stays at the commit
it was cloned at (``datalad update --how=merge`` in the clone, or removing it, moves it on).

Remote sources are checked before cloning: a host that cannot be reached fails within seconds
with a message naming the URL, instead of git waiting on the network.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import logging
import os
import shutil
import socket
import stat
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm.auto import tqdm

from mindzoo.atomic import reclaim_stale, temp_sibling
from mindzoo.errors import UserInputError
from mindzoo.extras import require

CACHE_DIR = "raw"
# How long the reachability check waits for a server's answer, in seconds.
_NETWORK_TIMEOUT_S = 5.0
# datalad's shortcut for datasets.datalad.org (`///openneuro/ds001246`).
_DATALAD_ORG = "https://datasets.datalad.org/"
# Environment for every git/git-annex process we start: never wait on a credential prompt,
# abort transfers that stall (< 1 kB/s for 60 s), and give ssh a connect timeout.
_GIT_ENVIRONMENT = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_HTTP_LOW_SPEED_LIMIT": "1000",
    "GIT_HTTP_LOW_SPEED_TIME": "60",
    "GIT_SSH_COMMAND": "ssh -o ConnectTimeout=10 -o BatchMode=yes",
}
# The cache clone records its own git-annex bookkeeping commits; a user without a git identity
# must still be able to prepare, so those commits get this one.
_CACHE_IDENTITY = {
    "GIT_AUTHOR_NAME": "mindzoo",
    "GIT_AUTHOR_EMAIL": "mindzoo@localhost",
    "GIT_COMMITTER_NAME": "mindzoo",
    "GIT_COMMITTER_EMAIL": "mindzoo@localhost",
}
# Files per `datalad get` call: one call per batch keeps the progress bar moving.
_FETCH_BATCH = 32
_METADATA_SUFFIXES = ("_bold.json", "_events.tsv", "_events.json")


@dataclass(frozen=True)
class DataladClone:
    """A dataset cloned into the cache: where from, where to, and at which commit."""

    location: str
    path: Path
    commit: str


def is_remote(location: str) -> bool:
    """Whether ``location`` is a URL (http, ssh, git, RIA, ``///``) rather than a local path."""
    if location.startswith("///") or "://" in location:
        return not location.startswith("file://")
    host, sep, _ = location.partition(":")
    # scp-like `user@host:path`; a Windows drive `C:\...` has a one-letter host
    return bool(sep) and "/" not in host and len(host) > 1


def is_dataset_directory(path: Path) -> bool:
    """Whether ``path`` is a git (DataLad/git-annex) repository that can be cloned."""
    return (path / ".git").exists()


def local_path(location: str) -> Path:
    """The local directory of a ``file://`` URL or plain path."""
    if location.startswith("file://"):
        return Path(urllib.parse.urlparse(location).path)
    return Path(location).expanduser()


def clone_dataset(location: str, store_dir: Path, name: str) -> DataladClone:
    """The cache clone of ``location`` under ``store_dir/raw``, cloned now if not there yet.

    A clone of a local dataset is first brought to that dataset's current commit.
    """
    remote = is_remote(location)
    if not remote:
        source = local_path(location).resolve()
        _check_local_dataset(source)
        location = str(source)
    target = store_dir / CACHE_DIR / f"{name}-{_location_key(location)}"
    with git_environment():
        if not (target / ".git").exists():
            if remote:
                check_reachable(location)
            _clone(location, target, hardlink=not remote)
        elif not remote:
            _follow_local(location, target)
        return DataladClone(location, target, _head_commit(target))


def _location_key(location: str) -> str:
    return hashlib.sha256(location.rstrip("/").encode()).hexdigest()[:12]


def _check_local_dataset(path: Path) -> None:
    if not path.is_dir():
        raise UserInputError(f"Source {path} does not exist; check --source")
    changed = _git(path, "status", "--porcelain", "--untracked-files=no").stdout.strip()
    if changed:
        first = changed.splitlines()[0][3:]
        raise UserInputError(
            f"DataLad dataset {path} has uncommitted changes (e.g. {first}) that a clone would "
            "not see; save them with `datalad save` first"
        )


def check_reachable(location: str) -> None:
    """Fail within seconds, naming ``location``, when its server does not answer.

    http(s) URLs (RIA and ``///`` ones too) get one HTTP request through the user's proxy
    settings: any answer, even 404, means the server is there. ``git://`` URLs get a TCP
    connection. ssh hosts may be aliases of the user's ssh configuration and are left to
    ssh's own connect timeout.
    """
    url = _DATALAD_ORG + location[3:] if location.startswith("///") else location
    url = url.removeprefix("ria+")
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme in ("http", "https"):
        probe, target = _http_answer, url.split("#", 1)[0]
    elif parsed.scheme == "git" and parsed.hostname:
        probe, target = _tcp_answer, f"{parsed.hostname}:{parsed.port or 9418}"
    else:
        return
    # Name resolution has no timeout of its own: run the probe in a thread we stop waiting for.
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        reason = pool.submit(probe, target).result(timeout=2 * _NETWORK_TIMEOUT_S)
    except concurrent.futures.TimeoutError:
        reason = f"no answer within {2 * _NETWORK_TIMEOUT_S:g} s"
    finally:
        pool.shutdown(wait=False)
    if reason is not None:
        raise UserInputError(
            f"Cannot reach {location} ({reason}); check the network, or pass a local copy of "
            "the dataset with --source /local/path"
        )


def _http_answer(url: str) -> str | None:
    """Why ``url``'s server gives no HTTP answer, or ``None`` when it answers."""
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=_NETWORK_TIMEOUT_S):
            return None
    except urllib.error.HTTPError:
        return None  # the server answered, if only with an error status
    except urllib.error.URLError as err:
        if isinstance(err.reason, socket.gaierror):
            return f"cannot resolve {urllib.parse.urlparse(url).hostname}: {err.reason.strerror}"
        return _reason(err.reason)
    except OSError as err:
        return _reason(err)


def _tcp_answer(address: str) -> str | None:
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=_NETWORK_TIMEOUT_S).close()
    except OSError as err:
        return _reason(err)
    return None


def _reason(error: object) -> str:
    if isinstance(error, TimeoutError):
        return f"no answer within {_NETWORK_TIMEOUT_S:g} s"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


@contextlib.contextmanager
def git_environment() -> Iterator[None]:
    """Environment for the git/git-annex processes DataLad starts (restored afterwards)."""
    settings = {key: value for key, value in _GIT_ENVIRONMENT.items() if key not in os.environ}
    if not _has_git_identity():
        settings.update({k: v for k, v in _CACHE_IDENTITY.items() if k not in os.environ})
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _has_git_identity() -> bool:
    return all(
        subprocess.run(["git", "config", key], capture_output=True).returncode == 0
        for key in ("user.name", "user.email")
    )


def _datalad() -> Any:
    """The datalad API, imported on first use (and with its INFO chatter silenced)."""
    api = require("datalad.api", "datalad")
    if shutil.which("git-annex") is None:
        raise UserInputError(
            "git-annex is not installed (DataLad sources need it); `pip install git-annex` "
            "(part of 'mindzoo[datalad]' on Linux x86_64) and put the Python environment's bin "
            "directory on PATH"
        )
    logging.getLogger("datalad").setLevel(logging.WARNING)
    return api


def _clone(location: str, target: Path, hardlink: bool) -> None:
    """Clone into a temporary sibling, then rename: a killed clone never looks complete.

    ``hardlink`` (a local source): fetched content is hard-linked from the source's annex when
    both are on one file system, so the cache costs neither a copy's time nor its disk space;
    git-annex's objects are read-only and the pipeline never writes, so they stay intact.
    """
    api = _datalad()
    IncompleteResultsError = require("datalad.support.exceptions", "datalad").IncompleteResultsError

    target.parent.mkdir(parents=True, exist_ok=True)
    reclaim_stale(
        target.parent, remove_tree
    )  # a killed clone's leftovers (never a live concurrent clone's)
    tmp = temp_sibling(target)
    try:
        api.clone(
            source=location,
            path=str(tmp),
            reckless="auto" if hardlink else None,
            result_renderer="disabled",
        )
        os.replace(tmp, target)
    except IncompleteResultsError as err:
        raise UserInputError(
            f"Cannot clone {location} ({_first_failure(err)}); check the URL or path, or pass "
            "a local copy with --source /local/path"
        ) from err
    finally:
        if tmp.exists():
            remove_tree(tmp)


def _follow_local(location: str, clone: Path) -> None:
    """Bring the clone of a local dataset to that dataset's current commit."""
    if _head_commit(Path(location)) == _head_commit(clone):
        return
    api = _datalad()
    IncompleteResultsError = require("datalad.support.exceptions", "datalad").IncompleteResultsError

    try:
        api.update(dataset=str(clone), how="merge", result_renderer="disabled")
    except IncompleteResultsError as err:
        raise UserInputError(
            f"Cannot update the cached clone {clone} from {location} ({_first_failure(err)}); "
            "remove the clone to start afresh"
        ) from err


def _first_failure(err: Exception) -> str:
    failed = getattr(err, "failed", None) or []
    return _result_message(failed[0]) if failed else " ".join(str(err).split())[:300]


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise UserInputError(
            f"`git {' '.join(args)}` failed in {repo}: {result.stderr.strip().splitlines()[-1]}"
            if result.stderr.strip()
            else f"`git {' '.join(args)}` failed in {repo}; is it a git repository?"
        )
    return result


def _head_commit(repo: Path) -> str:
    return _git(repo, "rev-parse", "HEAD").stdout.strip()


def list_files(clone: Path) -> list[str]:
    """Every file of the clone's tree (POSIX paths relative to its root), content or not."""
    listing = _git(clone, "ls-files", "-z").stdout
    return [path for path in listing.split("\0") if path]


# --- what a prepare reads ---------------------------------------------------------------------


def folders_in_settings(pipeline: dict[str, Any], files: list[str]) -> list[str]:
    """Settings values that name a folder of the dataset (``derivatives/fmriprep``)."""
    folders = set()
    for value in setting_values(pipeline):
        if not isinstance(value, str) or not value or value.startswith(("/", "..")):
            continue
        prefix = value.strip("/") + "/"
        if any(path.startswith(prefix) for path in files):
            folders.add(value.strip("/"))
    return sorted(folders)


def setting_values(node: Any) -> Iterator[Any]:
    """Every leaf value of a nested settings mapping."""
    if isinstance(node, dict):
        for value in node.values():
            yield from setting_values(value)
    elif isinstance(node, list):
        for value in node:
            yield from setting_values(value)
    else:
        yield node


def metadata_files(files: list[str], folders: list[str]) -> list[str]:
    """The small files the fMRI pipeline reads for every subject to choose runs and stimuli.

    Top-level files, ``stimuli/*.tsv|json``, every ``*_bold.json`` and ``*_events.tsv|json``
    and the files directly in ``sub-*``/``ses-*`` folders, and the JSON sidecars in
    ``folders`` (derivative folders the settings name). OpenNeuro keeps them in git, so
    fetching them usually transfers nothing.
    """
    chosen = []
    for path in files:
        parts = PurePosixPath(path).parts
        if parts[0].startswith("."):
            continue
        in_folder = any(path.startswith(folder + "/") for folder in folders)
        if (
            len(parts) == 1
            or (parts[0] == "stimuli" and len(parts) == 2 and path.endswith((".tsv", ".json")))
            or (parts[0].startswith("sub-") and path.endswith(_METADATA_SUFFIXES))
            or (parts[0].startswith("sub-") and parts[-2].startswith(("sub-", "ses-")))
            or (in_folder and path.endswith(".json"))
        ):
            chosen.append(path)
    return chosen


def relative_files(clone: Path, paths: Iterable[Path]) -> list[str]:
    """``paths`` inside the clone, relative to it (files elsewhere, e.g. a user's image
    folder, are not the dataset's to fetch)."""
    inside = []
    for path in paths:
        try:
            inside.append(Path(os.path.abspath(path)).relative_to(clone).as_posix())
        except ValueError:
            continue
    return inside


# --- fetching ---------------------------------------------------------------------------------


def fetch(clone: DataladClone, paths: Iterable[str], progress: bool = True) -> int:
    """Fetch the annexed content of ``paths`` (relative to the clone) that is not there yet.

    Returns how many files had to be fetched. Content that no remote can provide is a
    :class:`UserInputError` naming the file.
    """
    missing = [path for path in paths if not (clone.path / path).exists()]
    if not missing:
        return 0
    api = _datalad()
    batches = [missing[i : i + _FETCH_BATCH] for i in range(len(missing))[::_FETCH_BATCH]]
    with (
        git_environment(),
        tqdm(total=len(missing), desc="datalad get", unit="file", disable=not progress) as bar,
    ):
        for batch in batches:
            results = api.get(
                path=[str(clone.path / path) for path in batch],
                dataset=str(clone.path),
                on_failure="ignore",
                return_type="list",
                result_renderer="disabled",
            )
            failed = [r for r in results if r.get("status") in ("error", "impossible")]
            if failed:
                raise _fetch_error(clone, failed)
            bar.update(len(batch))
    absent = [path for path in missing if not (clone.path / path).exists()]
    if absent:
        raise UserInputError(
            f"Annexed content of {absent[0]} is still missing after fetching from "
            f"{clone.location}; check the dataset's remotes with `git annex whereis {absent[0]}`"
        )
    return len(missing)


def _fetch_error(clone: DataladClone, failed: list[dict[str, Any]]) -> UserInputError:
    path = Path(failed[0].get("path", "?"))
    shown = path.relative_to(clone.path) if path.is_relative_to(clone.path) else path
    more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
    return UserInputError(
        f"Annexed content of {shown}{more} could not be fetched from {clone.location} "
        f"({_result_message(failed[0])}); the dataset lacks it or its remote is unreachable: "
        "fix the dataset or pass a complete copy with --source"
    )


def _result_message(result: dict[str, Any]) -> str:
    message = result.get("error_message") or result.get("message") or result.get("status")
    if isinstance(message, tuple):
        message = message[0] % message[1:] if len(message) > 1 else message[0]
    return " ".join(str(message).split())[:200]


def remove_tree(path: Path) -> None:
    """``shutil.rmtree`` that also removes git-annex's read-only object folders."""
    if not path.exists():
        return
    for folder, _, _ in os.walk(path):
        os.chmod(folder, stat.S_IRWXU)
    shutil.rmtree(path)
