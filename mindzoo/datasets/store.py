"""The tensor store: one Zarr v3 group per prepared dataset version.

Layout of a store directory (what `prepare --out DIR` writes and `--store DIR` reads)::

    DIR/CURRENT                      name of the version last prepared (plain text)
    DIR/versions/<hash12>/           one Zarr v3 group per (dataset spec, config) hash
        manifest.json                provenance, full config, config hash, per-file sha256
        zarr.json                    root group; attrs hold schema version, dataset, config hash
        stimuli/images               uint8 [n_stimuli, h, w, 3]; attrs: ids, labels, splits
        features/<space>/<kind>      cached targets per stimulus, e.g. efficientnet-lite0/global
        subjects/<sub>/signals       float32 [trial, voxel] (fMRI), chunked along trials
        subjects/<sub>/trials/<col>  one 1-D array per trial column; strings stored as int codes
                                     with their categories in the trials group attrs
        subjects/<sub>/<axis>/<name> per-axis metadata (fMRI: voxels/ijk, voxels/xyz, voxels/roi);
                                     attrs hold names, affine, volume shape, coordinate space

Rules (DESIGN.md): writes are atomic (built in a hidden sibling, renamed at the end); the same
config hash is a cache hit; a different config is a new version beside the old one; reads are
lazy (`signals()` returns a Zarr array, nothing is loaded until sliced); `verify_store` re-hashes
every file and checks the schema.

Every array names its dimensions (Zarr v3 ``dimension_names``: ``trial``/``voxel`` or
``trial``/``channel``/``time``, ``stimulus``/``y``/``x``/``rgb`` ...) so xarray can open a
group; stores written before that have none and read the same (the schema version is unchanged).
A store can live on object storage: `TensorStore.open`, `resolve_store` and `verify_store` take
an fsspec URL (``s3://bucket/store``) as well; :mod:`mindzoo.datasets.remote` publishes to one.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr

from mindzoo import __version__
from mindzoo.atomic import reclaim_stale, temp_name, write_text
from mindzoo.datasets import remote
from mindzoo.datasets.arrays import (
    _TRIAL_CHUNK,
    SPLITS,
    _dimension_names,
    _write_array,
    read_table,
    write_table,
)
from mindzoo.datasets.remote import CURRENT, MANIFEST, RemotePath, is_url
from mindzoo.datasets.spike_store import (
    SpikeRecording,
    SpikeSubject,
    spike_problems,
    write_spike_subject,
)
from mindzoo.datasets.verified import ChecksummedStore, parse_manifest, sha256_files
from mindzoo.errors import DamagedFileError, UserInputError

SCHEMA_VERSION = 1
FEATURE_CHUNK = _TRIAL_CHUNK  # rows per chunk of a features array


def _version_name(config_hash: str) -> str:
    return config_hash[:12]


def find_version(store_dir: Path, config_hash: str) -> Path | None:
    """Path of the complete version of `store_dir` built from `config_hash`, or None."""
    candidate = Path(store_dir) / "versions" / _version_name(config_hash)
    if (candidate / MANIFEST).is_file():
        try:  # a damaged manifest is no cache hit: `prepare` rebuilds the version
            manifest = parse_manifest((candidate / MANIFEST).read_text(), str(candidate))
        except UserInputError:
            return None
        if manifest.get("config_hash") == config_hash:
            return candidate
    return None


def finished_versions(store_dir: Path) -> list[Path]:
    """The versions of ``store_dir`` that have a manifest (finished and published)."""
    versions = Path(store_dir) / "versions"
    if not versions.is_dir():
        return []
    return sorted(p for p in versions.iterdir() if (p / MANIFEST).is_file())


def set_current(store_dir: Path, version_dir: Path) -> None:
    """Point `store_dir/CURRENT` at `version_dir` (atomic replace)."""
    write_text(Path(store_dir) / CURRENT, version_dir.name + "\n")


def resolve_store(path: Path | str | RemotePath) -> Path | RemotePath:
    """Turn a store directory (or a version directory inside it) into a version directory;
    a URL (``s3://bucket/store``) into the location of its current remote version."""
    if isinstance(path, RemotePath) or is_url(path):
        return remote.resolve_remote_store(str(path))
    path = Path(path)
    if (path / MANIFEST).is_file():
        return path
    current = path / CURRENT
    if current.is_file():
        version = path / "versions" / current.read_text().strip()
        if (version / MANIFEST).is_file():
            return version
    if not path.exists():
        raise UserInputError(
            f"No store at {path}; create one with `braindecode-cli prepare DATASET --out {path}`"
        )
    raise UserInputError(
        f"{path} is not a mindzoo store (no {MANIFEST} or {CURRENT}); pass the --out directory of "
        "`braindecode-cli prepare`"
    )


def _data_files(version_dir: Path) -> Iterator[Path]:
    for path in sorted(version_dir.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            yield path


class StoreWriter:
    """Builds one store version in a hidden temporary directory and publishes it atomically.

    Use as a context manager: on an exception the temporary directory is removed and nothing
    appears under `store_dir`; on success `commit()` hashes every file, writes the manifest and
    renames the directory to `versions/<hash12>`.
    """

    def __init__(self, store_dir: Path, config_hash: str) -> None:
        self.store_dir = Path(store_dir)
        self.config_hash = config_hash
        self._created_store_dir = not self.store_dir.exists()
        (self.store_dir / "versions").mkdir(parents=True, exist_ok=True)
        reclaim_stale(self.store_dir / "versions")  # versions a killed prepare left half-built
        self.tmp_dir = self.store_dir / "versions" / temp_name(_version_name(config_hash))
        self.root = zarr.open_group(str(self.tmp_dir), mode="w", zarr_format=3)
        self._committed: Path | None = None

    @classmethod
    def join(cls, tmp_dir: Path) -> StoreWriter:
        """A writer into the temporary version another :class:`StoreWriter` created (a job of a
        parallel prepare writes its own arrays there); it neither commits nor cleans up."""
        writer = cls.__new__(cls)
        writer.tmp_dir = Path(tmp_dir)
        writer.store_dir = writer.tmp_dir.parent.parent
        writer.config_hash = ""
        writer._created_store_dir = False
        writer.root = zarr.open_group(str(writer.tmp_dir), mode="r+", zarr_format=3)
        writer._committed = writer.tmp_dir  # never removes what it joined
        return writer

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._committed is None:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
            if self._created_store_dir and not finished_versions(self.store_dir):
                shutil.rmtree(self.store_dir, ignore_errors=True)

    def write_stimuli(
        self, images: np.ndarray | None, ids: list[str], labels: list[str], splits: list[str]
    ) -> None:
        """Stimulus table: images uint8 [n, h, w, 3] (or None) and per-stimulus id/label/split."""
        if not (len(ids) == len(labels) == len(splits)):
            raise ValueError("ids, labels and splits must have one entry per stimulus")
        group = self.root.require_group("stimuli")
        if images is not None:
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] != len(ids):
                raise ValueError(
                    f"images must be uint8 [n={len(ids)}, h, w, 3], got {images.shape}"
                )
            _write_array(group, "images", images, _TRIAL_CHUNK, ("stimulus", "y", "x", "rgb"))
        group.attrs.update({"ids": list(ids), "labels": list(labels), "splits": list(splits)})

    def write_features(self, space: str, features: dict[str, np.ndarray]) -> None:
        """Cached targets per stimulus for one feature space: {kind: array [n_stimuli, ...]}."""
        group = self.root.require_group(f"features/{space}")
        for kind, values in features.items():
            _write_array(group, kind, values, _TRIAL_CHUNK, ("stimulus",))

    def create_features(self, space: str, shapes: dict[str, tuple[tuple[int, ...], str]]) -> None:
        """Empty feature arrays ``{kind: (shape [n_stimuli, ...], dtype)}`` with the chunks and
        metadata :meth:`write_features` gives, for jobs to fill (:meth:`write_feature_rows`)."""
        group = self.root.require_group(f"features/{space}")
        for kind, (shape, dtype) in shapes.items():
            group.create_array(
                kind,
                shape=shape,
                dtype=dtype,
                chunks=(max(1, min(_TRIAL_CHUNK, shape[0])), *shape[1:]),
                dimension_names=_dimension_names(np.empty((0,) * len(shape)), ("stimulus",), kind),
            )

    def write_feature_rows(self, space: str, kind: str, start: int, values: np.ndarray) -> None:
        """Rows ``start:start + len(values)`` of a :meth:`create_features` array (a job's part:
        whole chunks of :data:`FEATURE_CHUNK` rows, so no two jobs write one chunk file)."""
        self.root[f"features/{space}/{kind}"][start : start + len(values)] = values

    def write_subject(
        self,
        subject: str,
        signals: np.ndarray,
        trials: pd.DataFrame,
        axis_name: str,
        axis_arrays: dict[str, np.ndarray],
        axis_attrs: dict[str, Any],
    ) -> None:
        """One subject: signals [trial, ...], its trial table and the metadata of axis 1.

        `trials` needs the columns stimulus_index, session, run, repetition, split; string
        columns are stored as int32 codes with their categories in attrs.
        """
        missing = {"stimulus_index", "session", "run", "repetition", "split"} - set(trials.columns)
        if missing:
            raise ValueError(f"trial table lacks columns {sorted(missing)}")
        if len(trials) != signals.shape[0]:
            raise ValueError(f"{len(trials)} trial rows for {signals.shape[0]} signal rows")
        bad = set(trials["split"]) - set(SPLITS)
        if bad:
            raise ValueError(f"unknown split values {sorted(bad)}; expected {SPLITS}")
        group = self.root.require_group(f"subjects/{subject}")
        axis = axis_name.removesuffix("s")  # voxels -> voxel, channels -> channel
        dims = ("trial", axis, "time") if signals.ndim == 3 else ("trial", axis)
        _write_array(group, "signals", signals, _TRIAL_CHUNK, dims)
        write_table(group.require_group("trials"), trials, "trial")
        axis_group = group.require_group(axis_name)
        for name, values in axis_arrays.items():
            _write_array(axis_group, name, values, dims=(axis,))
        axis_group.attrs.update(axis_attrs)
        group.attrs.update({"axis": axis_name, "n_trials": int(signals.shape[0])})

    def write_spikes(self, subject: str, data: SpikeSubject) -> None:
        """One subject/session in the spikes layout (:mod:`mindzoo.datasets.spike_store`)."""
        write_spike_subject(self.root, subject, data)

    def commit(self, manifest: dict[str, Any]) -> Path:
        """Hash every file, write manifest.json, rename into place and update CURRENT."""
        self.root.attrs.update(
            {
                "schema_version": SCHEMA_VERSION,
                "config_hash": self.config_hash,
                "dataset": manifest.get("dataset"),
            }
        )
        rels = [str(p.relative_to(self.tmp_dir)) for p in _data_files(self.tmp_dir)]
        checksums = sha256_files(self.tmp_dir, rels, desc="checksums")
        full = {
            "schema_version": SCHEMA_VERSION,
            "config_hash": self.config_hash,
            "package_version": __version__,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            **manifest,
            "checksums": checksums,
        }
        (self.tmp_dir / MANIFEST).write_text(
            json.dumps(full, indent=2, sort_keys=True, default=str)
        )
        final = self.store_dir / "versions" / _version_name(self.config_hash)
        if final.exists():  # an incomplete leftover without manifest; a complete one is a cache hit
            shutil.rmtree(final)
        os.replace(self.tmp_dir, final)
        set_current(self.store_dir, final)
        self._committed = final
        return final


def roi_labels(arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> np.ndarray | None:
    """ROI name of each voxel (str ``[V]``) from :meth:`TensorStore.axis` output (``roi``
    codes into the ``roi_names`` attribute), or None when the axis has no ROI labels."""
    if "roi" not in arrays or "roi_names" not in attrs:
        return None
    return np.asarray(attrs["roi_names"], dtype=str)[arrays["roi"]]


@dataclass
class TensorStore:
    """Read access to one store version. Nothing is loaded until asked for.

    ``path`` is the version directory, or for a store on object storage its
    :class:`~mindzoo.datasets.remote.RemotePath` (``str()`` gives the URL).
    """

    path: Path | RemotePath
    manifest: dict[str, Any] = field(repr=False)
    root: zarr.Group = field(repr=False)

    @classmethod
    def open(cls, path: Path | str | RemotePath) -> TensorStore:
        """Open a store directory (its CURRENT version) or a version directory, local or at an
        fsspec URL (``s3://bucket/store``; chunks are fetched when sliced)."""
        version = resolve_store(path)
        manifest = _read_manifest(version)
        if manifest.get("schema_version") != SCHEMA_VERSION:
            raise UserInputError(
                f"Store {version} has schema version {manifest.get('schema_version')}, this mindzoo "
                f"reads {SCHEMA_VERSION}; re-run `braindecode-cli prepare`"
            )
        if isinstance(version, RemotePath):
            inner = remote.fsspec_store(version)
        else:
            inner = zarr.storage.LocalStore(str(version), read_only=True)
        checked = ChecksummedStore(inner, manifest.get("checksums", {}), str(version))
        return cls(version, manifest, zarr.open_group(checked, mode="r", zarr_format=3))

    @property
    def dataset(self) -> str:
        return self.manifest["dataset"]

    @property
    def subjects(self) -> list[str]:
        return sorted(self.root["subjects"].group_keys())

    def _subject(self, subject: str) -> zarr.Group:
        if subject not in self.subjects:
            raise UserInputError(
                f"Subject {subject!r} is not in store {self.path}; available: {', '.join(self.subjects)}"
            )
        return self.root[f"subjects/{subject}"]

    def signals(self, subject: str) -> zarr.Array:
        """Lazy Zarr array of the subject's signals, [trial, voxel] for fMRI."""
        return self._subject(subject)["signals"]

    def spikes(self, subject: str) -> SpikeRecording:
        """Lazy spikes of one subject/session of a spikes store (windowed reads by time)."""
        group = self._subject(subject)
        if group.attrs.get("layout") != "spikes":
            raise UserInputError(
                f"Store {self.path} holds {self.manifest.get('modality')} signals, not spikes; "
                "prepare a spikes dataset (e.g. synthetic-spikes)"
            )
        return SpikeRecording(group, subject)

    def trials(self, subject: str) -> pd.DataFrame:
        """The subject's trial table; coded string columns are decoded back to strings."""
        return read_table(self._subject(subject)["trials"])

    def axis(self, subject: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Per-axis metadata of axis 1 (fMRI: voxels ijk/xyz/roi) and its attributes."""
        group = self._subject(subject)
        axis = group[group.attrs["axis"]]
        return {name: axis[name][...] for name in axis.array_keys()}, dict(axis.attrs)

    def pick_subjects(self, subjects: list[str] | None) -> list[str]:
        """``subjects`` as store names (``01`` -> ``sub-01``); all of the store's when empty.
        An unknown subject raises a one-line error that lists the store's subjects."""
        if not subjects:
            return self.subjects
        chosen = [s if s.startswith("sub-") else f"sub-{s}" for s in subjects]
        unknown = [s for s in chosen if s not in self.subjects]
        if unknown:
            raise UserInputError(
                f"Subject {unknown[0]} is not in store {self.path}; available: "
                f"{', '.join(self.subjects)}"
            )
        return chosen

    def voxel_rois(self, subject: str) -> np.ndarray | None:
        """ROI name of each of ``subject``'s voxels (str ``[V]``), or None without ROI labels."""
        return roi_labels(*self.axis(subject))

    @property
    def stimulus_ids(self) -> list[str]:
        return list(self.root["stimuli"].attrs["ids"])

    @property
    def stimulus_labels(self) -> list[str]:
        return list(self.root["stimuli"].attrs["labels"])

    @property
    def stimulus_splits(self) -> list[str]:
        return list(self.root["stimuli"].attrs["splits"])

    def images(self) -> zarr.Array:
        """Lazy uint8 [n_stimuli, h, w, 3] stimulus images."""
        if "images" not in self.root["stimuli"]:
            raise UserInputError(f"Store {self.path} holds no stimulus images")
        return self.root["stimuli/images"]

    def feature_spaces(self) -> dict[str, list[str]]:
        """{space: [kinds]} of the cached feature targets."""
        if "features" not in self.root:
            return {}
        group = self.root["features"]
        return {space: sorted(group[space].array_keys()) for space in sorted(group.group_keys())}

    def features(self, space: str, kind: str = "global") -> zarr.Array:
        """Lazy cached features [n_stimuli, ...] of one space and kind."""
        spaces = self.feature_spaces()
        if kind not in spaces.get(space, []):
            have = ", ".join(f"{s}/{k}" for s, ks in spaces.items() for k in ks) or "none"
            raise UserInputError(
                f"Feature space {space}/{kind} is not cached in store {self.path} (have: {have}); "
                f"re-run prepare with --set features=[...,{space}]"
            )
        return self.root[f"features/{space}/{kind}"]

    def split(
        self, subject: str, split: str, average_repeats: bool = False
    ) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
        """Signals of one split: (X [n, ...] float32, stimulus_index [n], trial rows).

        With `average_repeats` the repetitions of each stimulus are averaged (the MindEye test
        convention) and one row per stimulus comes back, ordered by stimulus index.
        """
        if split not in SPLITS:
            raise UserInputError(f"Unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        trials = self.trials(subject)
        rows = np.flatnonzero(trials["split"].to_numpy() == split)
        signals = self.signals(subject)
        data = (
            signals.get_orthogonal_selection((rows,))
            if len(rows)
            else np.empty((0, *signals.shape[1:]))
        )
        data = np.asarray(data, dtype=np.float32)
        table = trials.iloc[rows].reset_index(drop=True)
        stim = table["stimulus_index"].to_numpy()
        if not average_repeats:
            return data, stim, table
        unique, inverse = np.unique(stim, return_inverse=True)
        sums = np.zeros((len(unique), *data.shape[1:]), dtype=np.float64)
        np.add.at(sums, inverse, data)
        counts = np.bincount(inverse, minlength=len(unique)).reshape(-1, *([1] * (data.ndim - 1)))
        first = table.groupby(inverse, sort=True).head(1).reset_index(drop=True)
        return (sums / counts).astype(np.float32), unique, first

    def repeats(self, subject: str, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
        """Signals arranged [n_stimuli, n_reps, ...] for stimuli with the most common repeat count.

        Used for noise ceilings. Returns (array, stimulus_index [n_stimuli]).
        """
        data, stim, table = self.split(subject, split)
        unique, counts = np.unique(stim, return_counts=True)
        if not len(unique):
            raise UserInputError(f"No {split} trials for {subject} in store {self.path}")
        n_reps = int(np.bincount(counts).argmax())
        keep = unique[counts >= n_reps]
        if n_reps < 2:
            raise UserInputError(
                f"{subject} has no repeated {split} stimuli in {self.path}; a noise ceiling needs repeats"
            )
        order = table.assign(_row=np.arange(len(table))).sort_values(
            ["stimulus_index", "repetition"]
        )
        picked = [order.loc[order["stimulus_index"] == s, "_row"].to_numpy()[:n_reps] for s in keep]
        return data[np.stack(picked)], keep


@dataclass
class VerifyReport:
    """What `verify_store` found: `problems` is empty when the store is intact."""

    path: Path | RemotePath
    n_files: int
    n_bytes: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def _read_manifest(version: Path | RemotePath) -> dict[str, Any]:
    if isinstance(version, RemotePath):
        return remote.read_manifest(version) or {}
    return parse_manifest((version / MANIFEST).read_text(), str(version))


def _version_files(version: Path | RemotePath) -> dict[str, int]:
    """{relative path: size} of a version's data files (all but the manifest)."""
    if isinstance(version, RemotePath):
        return {rel: size for rel, size in remote.list_files(version).items() if rel != MANIFEST}
    return {str(p.relative_to(version)): p.stat().st_size for p in _data_files(version)}


def verify_store(path: Path | str | RemotePath) -> VerifyReport:
    """Re-hash every file of a store version (local, or remote at a URL) against its manifest
    and check the schema."""
    version = resolve_store(path)
    try:
        manifest = _read_manifest(version)
    except DamagedFileError as exc:  # a damaged manifest is what verify reports, not a refusal
        return VerifyReport(version, 0, 0, [exc.problem])
    expected: dict[str, str] = manifest.get("checksums", {})
    problems: list[str] = []
    n_bytes = 0
    seen = set()
    files = _version_files(version)
    known = {rel: size for rel, size in files.items() if rel in expected}
    if isinstance(version, RemotePath):  # read concurrently, in batches
        hashes = remote.sha256_files(version, known)
    else:
        hashes = sha256_files(version, known, desc=f"verify {version.name}")
    for rel, size in sorted(files.items()):
        seen.add(rel)
        n_bytes += size
        if rel not in expected:
            problems.append(f"unexpected file {rel} (not in manifest)")
        elif hashes[rel] != expected[rel]:
            problems.append(f"checksum mismatch in {rel}")
    problems += [f"missing file {rel}" for rel in sorted(set(expected) - seen)]
    if not problems:
        problems += _schema_problems(version)
    return VerifyReport(version, len(seen), n_bytes, problems)


def _schema_problems(version: Path | RemotePath) -> list[str]:
    store = TensorStore.open(version)
    problems = []
    n_stimuli = len(store.stimulus_ids)
    for space, kinds in store.feature_spaces().items():
        for kind in kinds:
            if store.features(space, kind).shape[0] != n_stimuli:
                problems.append(f"features/{space}/{kind} has the wrong number of stimuli")
    for subject in store.subjects:
        if store.manifest.get("modality") == "spikes":
            problems += spike_problems(store.root[f"subjects/{subject}"], subject, n_stimuli)
            continue
        signals = store.signals(subject)
        trials = store.trials(subject)
        if len(trials) != signals.shape[0]:
            problems.append(
                f"{subject}: {len(trials)} trial rows for {signals.shape[0]} signal rows"
            )
        if len(trials) and (
            trials["stimulus_index"].max() >= n_stimuli or trials["stimulus_index"].min() < 0
        ):
            problems.append(f"{subject}: stimulus_index outside the stimulus table")
        arrays, attrs = store.axis(subject)
        for name, values in arrays.items():
            if values.shape[0] != signals.shape[1]:
                problems.append(f"{subject}: axis array {name} does not match signals axis 1")
        if store.manifest.get("modality") in ("ieeg", "eeg"):
            problems += _ephys_problems(subject, signals.shape, arrays, attrs)
    return problems


def _ephys_problems(
    subject: str, shape: tuple[int, ...], arrays: dict[str, np.ndarray], attrs: dict[str, Any]
) -> list[str]:
    """The ephys schema: signals [trial, channel, time], channel names/types/regions, sfreq."""
    if len(shape) != 3:
        return [f"{subject}: ephys signals must be [trial, channel, time], got shape {shape}"]
    problems = []
    for key in ("names", "types"):
        if len(attrs.get(key, [])) != shape[1]:
            problems.append(f"{subject}: channels.{key} does not list {shape[1]} channels")
    if not isinstance(attrs.get("sfreq"), (int, float)) or attrs["sfreq"] <= 0:
        problems.append(f"{subject}: channels.sfreq is missing or not positive")
    if (
        "region" in arrays
        and len(arrays["region"])
        and (
            arrays["region"].min() < 0
            or arrays["region"].max() >= len(attrs.get("region_names", []))
        )
    ):
        problems.append(f"{subject}: channels.region codes outside region_names")
    return problems
