"""Find and check the BIDS files the fMRI pipeline reads: bold runs, sidecars, events, masks.

Only what the pipeline needs of BIDS is implemented here, without pybids (indexing a large
dataset with pybids costs more than preparing a small one):

- entities are parsed from file names (``sub-01_ses-01_task-x_run-01_bold.nii.gz``);
- runs are found under ``sub-*/func`` and ``sub-*/ses-*/func``, sessions optional;
- JSON sidecars follow the inheritance principle: every ``*_bold.json`` from the dataset root
  down to the run's folder whose entities are a subset of the run's applies, the more specific
  overriding the more general;
- an events file may be inherited the same way; the most specific one wins.

Every problem with the input raises :class:`~mindzoo.errors.UserInputError` with one line that
names the file and the fix.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import pandas as pd

from mindzoo.errors import UserInputError

BOLD_EXTENSIONS = (".nii.gz", ".nii")
# Entities that name a derivative's space or description but not the acquisition: a
# confounds file beside a preprocessed bold drops them (fMRIPrep's naming).
_DERIVATIVE_ENTITIES = ("space", "res", "den", "desc")
# Tolerance between the sidecar RepetitionTime and the header pixdim[4], in seconds: headers
# store float32, so 1.6 s reads back as 1.60000002.
_TR_TOLERANCE_S = 1e-3
# Tolerance between mask and bold affines, in mm: sform/qform round-trips differ by ~1e-6.
_AFFINE_TOLERANCE_MM = 1e-3


def parse_entities(filename: str) -> tuple[dict[str, str], str]:
    """Split a BIDS file name into its ``key-value`` entities and its suffix.

    ``"sub-01_ses-02_task-images_run-01_bold.nii.gz"`` gives
    ``({"sub": "01", "ses": "02", "task": "images", "run": "01"}, "bold")``.
    """
    stem = filename.split(".", 1)[0]
    parts = stem.split("_")
    suffix = "" if "-" in parts[-1] else parts[-1]
    entity_parts = parts if suffix == "" else parts[:-1]
    entities = {}
    for part in entity_parts:
        key, sep, value = part.partition("-")
        if sep:
            entities[key] = value
    return entities, suffix


def _strip_bold_extension(name: str) -> str | None:
    for ext in BOLD_EXTENSIONS:
        if name.endswith(ext):
            return name[: -len(ext)]
    return None


@dataclass(frozen=True)
class BoldRun:
    """One bold series and the BIDS files that describe it.

    ``metadata`` is the merged sidecar (inherited, the most specific file winning);
    ``metadata_sources`` names the JSON file each key came from; ``events_path`` is ``None``
    when no events file applies to the run.
    """

    bold_path: Path
    entities: dict[str, str]
    metadata: dict = field(repr=False)
    metadata_sources: dict[str, Path] = field(repr=False)
    events_path: Path | None

    @property
    def sidecar_paths(self) -> list[Path]:
        """Every JSON sidecar that contributed to ``metadata``."""
        return sorted(set(self.metadata_sources.values()))

    @property
    def subject(self) -> str:
        return self.entities["sub"]

    @property
    def session(self) -> str | None:
        return self.entities.get("ses")

    @property
    def task(self) -> str | None:
        return self.entities.get("task")

    @property
    def name(self) -> str:
        return self.bold_path.name

    def confounds_path(self) -> Path:
        """Where a ``desc-confounds_timeseries.tsv`` for this run lives (fMRIPrep naming)."""
        prefix = "_".join(
            f"{key}-{value}"
            for key, value in self.entities.items()
            if key not in _DERIVATIVE_ENTITIES
        )
        return self.bold_path.parent / f"{prefix}_desc-confounds_timeseries.tsv"


def find_bold_runs(root: Path) -> list[BoldRun]:
    """Every ``*_bold.nii[.gz]`` under ``root/sub-*/[ses-*/]func``, sorted by path."""
    if not root.is_dir():
        raise UserInputError(f"BIDS root {root} is not a directory; pass the dataset folder")
    candidates = [*root.glob("sub-*/func/*_bold.nii*"), *root.glob("sub-*/ses-*/func/*_bold.nii*")]
    listings: dict[Path, list[Path]] = {}
    runs = []
    for path in sorted(candidates):
        if _strip_bold_extension(path.name) is None:
            continue
        entities, _ = parse_entities(path.name)
        if "sub" not in entities:
            continue
        sidecars = inherited_files(root, path, entities, "bold", ".json", listings)
        events = inherited_files(root, path, entities, "events", ".tsv", listings)
        metadata, sources = _merge_sidecars(sidecars)
        runs.append(
            BoldRun(
                bold_path=path,
                entities=entities,
                metadata=metadata,
                metadata_sources=sources,
                events_path=events[-1] if events else None,
            )
        )
    if not runs:
        raise UserInputError(
            f"No bold runs (sub-*/[ses-*/]func/*_bold.nii[.gz]) under {root}; "
            "pass the root of a BIDS dataset"
        )
    return runs


def inherited_files(
    root: Path,
    target: Path,
    entities: dict[str, str],
    suffix: str,
    extension: str,
    listings: dict[Path, list[Path]] | None = None,
) -> list[Path]:
    """Files of ``suffix``+``extension`` that apply to ``target`` by BIDS inheritance.

    Searched from ``root`` down to ``target``'s folder; a file applies when its entities are a
    subset of ``entities``. Returned general first (shallower, then fewer entities).
    ``listings`` caches folder contents across calls (one listing per folder per dataset scan).
    """
    listings = {} if listings is None else listings
    folders = [root, *_folders_between(root, target.parent)]
    found = []
    for depth, folder in enumerate(folders):
        if folder not in listings:
            listings[folder] = sorted(p for p in folder.iterdir() if p.is_file())
        for path in listings[folder]:
            if not path.name.endswith(extension):
                continue
            candidate, candidate_suffix = parse_entities(path.name)
            if candidate_suffix != suffix:
                continue
            if all(entities.get(key) == value for key, value in candidate.items()):
                found.append((depth, len(candidate), path))
    return [path for _, _, path in sorted(found)]


def _folders_between(root: Path, folder: Path) -> list[Path]:
    relative = folder.relative_to(root)
    return [root.joinpath(*relative.parts[: i + 1]) for i in range(len(relative.parts))]


def _merge_sidecars(paths: list[Path]) -> tuple[dict, dict[str, Path]]:
    """Merged sidecar content (later paths override) and the file each key came from."""
    merged: dict = {}
    sources: dict[str, Path] = {}
    for path in paths:
        try:
            content = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise UserInputError(
                f"Sidecar {path} is not valid JSON ({err.msg} at line {err.lineno}); fix the file"
            ) from err
        if not isinstance(content, dict):
            raise UserInputError(f"Sidecar {path} must hold a JSON object; fix the file")
        merged.update(content)
        sources.update(dict.fromkeys(content, path))
    return merged, sources


def select_task(runs: list[BoldRun], task: str | None) -> str:
    """The task to prepare: ``task`` if present, else the only task in the dataset."""
    tasks = sorted({run.task for run in runs if run.task is not None})
    if task is None:
        if len(tasks) == 1:
            return tasks[0]
        if not tasks:
            raise UserInputError(
                f"No task entity in the bold file names (e.g. {runs[0].name}); "
                "name runs like sub-01_task-NAME_bold.nii.gz"
            )
        raise UserInputError(
            f"The dataset has several tasks ({', '.join(tasks)}); choose one with task=NAME"
        )
    if task not in tasks:
        raise UserInputError(
            f"Unknown task {task!r}; the dataset has: {', '.join(tasks) or 'no task entity'}"
        )
    return task


def select_subjects(runs: list[BoldRun], subjects: list[str] | None) -> list[str]:
    """Subject labels (without ``sub-``) to prepare: ``subjects`` or every one with runs."""
    available = sorted({run.subject for run in runs})
    if subjects is None:
        return available
    unknown = [label for label in subjects if label not in available]
    if unknown:
        raise UserInputError(
            f"Unknown subject(s) {', '.join('sub-' + s for s in unknown)}; "
            f"available: {', '.join('sub-' + s for s in available)}"
        )
    return list(dict.fromkeys(subjects))


def read_events(
    run: BoldRun, required: list[str], fix: str = "add them to the events file"
) -> pd.DataFrame:
    """The run's events table with numeric ``onset``/``duration`` (s) and ``n/a`` as missing.

    Every other column is read as text, so stimulus ids such as ``"0001"`` keep their zeros.
    ``fix`` ends the message when a ``required`` column is missing.
    """
    if run.events_path is None:
        expected = run.name.split("_bold.nii")[0] + "_events.tsv"
        raise UserInputError(
            f"No events file for {run.name} (expected {expected} beside it); add the events"
        )
    path = run.events_path
    events = pd.read_csv(path, sep="\t", dtype=str, na_values=["n/a", ""], keep_default_na=False)
    missing = [column for column in required if column not in events.columns]
    if missing:
        raise UserInputError(
            f"{path.name} lacks column(s) {', '.join(missing)} (has: "
            f"{', '.join(events.columns)}); {fix}"
        )
    for column in ("onset", "duration"):
        values = pd.to_numeric(events[column], errors="coerce")
        bad = values.isna() | ~values.map(math.isfinite)
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            raise UserInputError(
                f"{path.name} row {row + 1}: {column} {events[column].iloc[row]!r} is not a "
                "number of seconds; fix the events file"
            )
        events[column] = values.astype(float)
    return events


def check_bold_header(run: BoldRun, img: nib.Nifti1Image) -> float:
    """Check that ``img`` is a 4D series whose TR agrees with the sidecar; return TR in s."""
    if len(img.shape) != 4:
        raise UserInputError(
            f"Expected 4D NIfTI, got shape {tuple(img.shape)} from {run.name}; "
            "pass a 4D bold series"
        )
    if img.shape[3] < 2:
        raise UserInputError(
            f"{run.name} has {img.shape[3]} volume; pass a bold series with several volumes"
        )
    header_tr = _header_tr_seconds(img)
    sidecar_tr = run.metadata.get("RepetitionTime")
    if sidecar_tr is None:
        if header_tr is None:
            raise UserInputError(
                f"No RepetitionTime for {run.name} in its sidecar or header; "
                "add RepetitionTime (s) to the bold JSON sidecar"
            )
        return header_tr
    if not isinstance(sidecar_tr, (int, float)) or sidecar_tr <= 0:
        raise UserInputError(
            f"RepetitionTime {sidecar_tr!r} for {run.name} is not a positive number of seconds; "
            "fix the bold JSON sidecar"
        )
    if header_tr is not None and abs(header_tr - sidecar_tr) > _TR_TOLERANCE_S:
        sidecar = run.metadata_sources["RepetitionTime"].name
        raise UserInputError(
            f"TR mismatch for {run.name}: RepetitionTime {sidecar_tr} s in {sidecar} but "
            f"{header_tr:g} s in the NIfTI header (pixdim[4]); fix whichever is wrong"
        )
    return float(sidecar_tr)


def _header_tr_seconds(img: nib.Nifti1Image) -> float | None:
    """pixdim[4] in seconds, or ``None`` when the header leaves it unset (0)."""
    tr = float(img.header.get_zooms()[3])
    if tr <= 0:
        return None
    time_unit = img.header.get_xyzt_units()[1]
    return {"msec": tr / 1000.0, "usec": tr / 1e6}.get(time_unit, tr)


def check_same_grid(
    reference: nib.Nifti1Image,
    reference_name: str,
    other: nib.Nifti1Image,
    other_name: str,
    fix: str = "resample the mask to the bold grid",
) -> None:
    """Refuse a mask or run whose voxel grid (shape, affine) differs from the reference grid.

    Masks are refused rather than resampled: nearest-neighbour resampling of an ROI silently
    changes which voxels a decoder sees, so the user should do it knowingly.
    """
    if tuple(reference.shape[:3]) != tuple(other.shape[:3]):
        raise UserInputError(
            f"{other_name} has grid shape {tuple(other.shape[:3])} but {reference_name} has "
            f"{tuple(reference.shape[:3])}; {fix}"
        )
    offset = float(abs(reference.affine - other.affine).max())
    if offset > _AFFINE_TOLERANCE_MM:
        raise UserInputError(
            f"{other_name} has a different affine than {reference_name} (entries differ by up "
            f"to {offset:g}); {fix}"
        )


@dataclass(frozen=True)
class MaskFiles:
    """The derivative files that define a subject's voxels (any may be absent)."""

    brain_mask: Path | None
    dseg: Path | None
    dseg_labels: Path | None


def find_subject_masks(mask_root: Path, subject: str) -> MaskFiles:
    """The brain mask and ROI segmentation for ``sub-<subject>`` under ``mask_root``.

    Looks for ``*_desc-brain_mask.nii[.gz]`` and ``*_dseg.nii[.gz]`` (with a ``*_dseg.tsv``
    of ``index``/``name`` beside it) anywhere below ``mask_root/sub-<subject>``.
    """
    subject_dir = mask_root / f"sub-{subject}"
    if not subject_dir.is_dir():
        raise UserInputError(
            f"No mask folder {subject_dir}; add the brain mask/dseg there, set roi_mask to the "
            "folder that holds them, or roi_mask=null to compute an EPI mask"
        )
    brain = _one_nifti(subject_dir, "*_desc-brain_mask.nii*")
    dseg = _one_nifti(subject_dir, "*_dseg.nii*")
    if brain is None and dseg is None:
        raise UserInputError(
            f"No *_desc-brain_mask.nii[.gz] or *_dseg.nii[.gz] under {subject_dir}; add one or "
            "set roi_mask=null to compute an EPI mask"
        )
    labels = None
    if dseg is not None:
        tsv = dseg.parent / (dseg.name.split(".nii")[0] + ".tsv")
        labels = tsv if tsv.is_file() else None
    return MaskFiles(brain_mask=brain, dseg=dseg, dseg_labels=labels)


def _one_nifti(folder: Path, pattern: str) -> Path | None:
    matches = sorted(p for p in folder.rglob(pattern) if _strip_bold_extension(p.name) is not None)
    if len(matches) > 1:
        raise UserInputError(
            f"Several files match {pattern} under {folder} ({', '.join(p.name for p in matches)}); "
            "keep one per subject"
        )
    return matches[0] if matches else None


def read_dseg_labels(path: Path | None) -> dict[int, str]:
    """``index -> name`` from a dseg TSV; empty when there is none."""
    if path is None:
        return {}
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    if not {"index", "name"} <= set(table.columns):
        raise UserInputError(
            f"{path.name} needs columns index and name (has: {', '.join(table.columns)}); "
            "fix the segmentation table"
        )
    try:
        return {int(index): name for index, name in zip(table["index"], table["name"], strict=True)}
    except ValueError as err:
        raise UserInputError(
            f"{path.name}: column index must hold integers ({err}); fix the segmentation table"
        ) from err
