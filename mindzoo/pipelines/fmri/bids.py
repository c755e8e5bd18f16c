"""Find and check the BIDS files of the fMRI pipeline's bold runs: entities, runs, sidecars.

Only what the pipeline needs of BIDS is implemented here, without pybids (indexing a large
dataset with pybids costs more than preparing a small one):

- entities are parsed from file names (``sub-01_ses-02_task-x_run-01_bold.nii.gz``); a run
  label is an index, so ``run-1`` and ``run-01`` name the same run;
- raw runs are found under ``sub-*/func`` and ``sub-*/ses-*/func``, sessions and the run
  entity optional, ``.nii`` or ``.nii.gz``;
- fMRIPrep runs are found under its derivatives folder by fMRIPrep's names
  (``*_space-<space>[_res-<res>]_desc-preproc_bold.nii.gz`` since fMRIPrep 1.2, and the older
  ``*_bold_space-<space>_preproc.nii.gz``), with the brain mask and confounds TSV beside them;
  events and sidecars still come from the raw dataset;
- JSON sidecars follow the inheritance principle: every ``*_bold.json`` from the dataset root
  down to the run's folder whose entities are a subset of the run's applies, the more specific
  overriding the more general (dataset < subject < session < run); an fMRIPrep run's own
  sidecar overrides them all;
- an events file may be inherited the same way; the most specific one wins.

Reading an events table is in :mod:`mindzoo.pipelines.fmri.events`, the mask files in
:mod:`mindzoo.pipelines.fmri.masks`, choosing tasks, subjects and sessions in
:mod:`mindzoo.pipelines.fmri.runs`.

Every problem with the input raises :class:`~mindzoo.errors.UserInputError` with one line that
names the file and the fix.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib

from mindzoo.errors import UserInputError

BOLD_EXTENSIONS = (".nii.gz", ".nii")
# Entities that name a derivative's space or description but not the acquisition: a
# confounds file beside a preprocessed bold drops them (fMRIPrep's naming).
_DERIVATIVE_ENTITIES = ("space", "res", "den", "desc")
# Confounds names beside a run, newest first: fMRIPrep >= 20.2, then 1.2-20.1.
_CONFOUNDS_SUFFIXES = ("_desc-confounds_timeseries.tsv", "_desc-confounds_regressors.tsv")
# fMRIPrep < 1.2 names (BOLD5000's derivatives): <prefix>_bold_space-<space>_preproc.nii.gz.
_LEGACY_BOLD = "_bold_space-"
# Tolerance between the sidecar RepetitionTime and the header pixdim[4], in seconds: headers
# store float32, so 1.6 s reads back as 1.60000002.
_TR_TOLERANCE_S = 1e-3
# How many names an error message lists before "...".
_SHOWN_NAMES = 3


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


def entities_apply(candidate: dict[str, str], entities: dict[str, str]) -> bool:
    """Whether a file with ``candidate`` entities applies to a run with ``entities``.

    Every candidate entity must be present with the same value; run labels compare as
    numbers (``run-1`` is ``run-01``), as BIDS defines them as indices.
    """
    for key, value in candidate.items():
        other = entities.get(key)
        if other is None:
            return False
        if key == "run" and value.isdigit() and other.isdigit():
            if int(value) != int(other):
                return False
        elif value != other:
            return False
    return True


def list_names(names: list[str]) -> str:
    """``"a, b, c, ... (12 in all)"``: the first few names for a one-line message."""
    shown = ", ".join(names[:_SHOWN_NAMES])
    return shown if len(names) <= _SHOWN_NAMES else f"{shown}, ... ({len(names)} in all)"


def strip_bold_extension(name: str) -> str | None:
    for ext in BOLD_EXTENSIONS:
        if name.endswith(ext):
            return name[: -len(ext)]
    return None


@dataclass(frozen=True)
class BoldRun:
    """One bold series and the BIDS files that describe it.

    ``metadata`` is the merged sidecar (inherited, the most specific file winning);
    ``metadata_sources`` names the JSON file each key came from; ``events_path`` is ``None``
    when no events file applies to the run. ``brain_mask`` is the run's own mask (fMRIPrep's,
    on the bold grid) or ``None``; ``confounds_candidates`` are where a confounds TSV may sit,
    preferred name first.
    """

    bold_path: Path
    entities: dict[str, str]
    metadata: dict = field(repr=False)
    metadata_sources: dict[str, Path] = field(repr=False)
    events_path: Path | None
    brain_mask: Path | None = None
    confounds_candidates: tuple[Path, ...] = field(default=(), repr=False)

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
        """The confounds TSV of this run: the first candidate that exists, else the preferred."""
        for path in self.confounds_candidates:
            if os.path.lexists(path):
                return path
        return self.confounds_candidates[0]


def acquisition_entities(entities: dict[str, str]) -> dict[str, str]:
    """``entities`` without the derivative-only ones (space, res, den, desc), in order."""
    return {key: value for key, value in entities.items() if key not in _DERIVATIVE_ENTITIES}


def entity_prefix(entities: dict[str, str]) -> str:
    return "_".join(f"{key}-{value}" for key, value in acquisition_entities(entities).items())


def find_bold_runs(root: Path) -> list[BoldRun]:
    """Every raw ``*_bold.nii[.gz]`` under ``root/sub-*/[ses-*/]func``, sorted by path."""
    if not root.is_dir():
        raise UserInputError(f"BIDS root {root} is not a directory; pass the dataset folder")
    listings: dict[Path, list[Path]] = {}
    runs = []
    for path in _func_files(root):
        stem = strip_bold_extension(path.name)
        entities, suffix = parse_entities(path.name)
        if stem is None or suffix != "bold" or "sub" not in entities:
            continue
        folder = path.parent
        sidecars = inherited_files(root, folder, entities, "bold", ".json", listings)
        metadata, sources = _merge_sidecars(sidecars)
        prefix = entity_prefix(entities)
        runs.append(
            BoldRun(
                bold_path=path,
                entities=entities,
                metadata=metadata,
                metadata_sources=sources,
                events_path=_events_file(root, folder, entities, listings),
                confounds_candidates=tuple(folder / f"{prefix}{s}" for s in _CONFOUNDS_SUFFIXES),
            )
        )
    if not runs:
        raise UserInputError(
            f"No bold runs (sub-*/[ses-*/]func/*_bold.nii[.gz]) under {root}; "
            "pass the root of a BIDS dataset"
        )
    return runs


def _func_files(root: Path) -> list[Path]:
    """Entries of ``sub-*/func`` and ``sub-*/ses-*/func`` (annexed links included), sorted."""
    return sorted([*root.glob("sub-*/func/*"), *root.glob("sub-*/ses-*/func/*")])


def _events_file(
    root: Path, folder: Path, entities: dict[str, str], listings: dict[Path, list[Path]]
) -> Path | None:
    found = inherited_files(
        root, folder, acquisition_entities(entities), "events", ".tsv", listings
    )
    return found[-1] if found else None


def find_fmriprep_runs(derivatives: Path, raw_root: Path, space: str) -> list[BoldRun]:
    """fMRIPrep's preprocessed bold runs in ``space`` under ``derivatives``, sorted by path.

    ``space`` is a template or ``T1w``, optionally with a resolution as fMRIPrep writes it on
    its command line (``MNI152NLin2009cAsym:res-2``). Events and inherited sidecars come from
    ``raw_root`` (the matching ``sub-*/[ses-*/]func`` folder there).
    """
    if not derivatives.is_dir():
        raise UserInputError(
            f"fMRIPrep folder {derivatives} does not exist; run fMRIPrep on the dataset or set "
            "derivatives_dir to where its output is"
        )
    space_label, _, resolution = space.partition(":")
    resolution = resolution.removeprefix("res-")
    by_run: dict[str, list[tuple[Path, dict[str, str], bool]]] = {}
    spaces_seen: set[str] = set()
    for path in _func_files(derivatives):
        found = _fmriprep_bold_entities(path.name)
        if found is None:
            continue
        entities, legacy = found
        spaces_seen.add(
            entities["space"] + (f":res-{entities['res']}" if "res" in entities else "")
        )
        if entities["space"] != space_label or resolution and entities.get("res") != resolution:
            continue
        by_run.setdefault(entity_prefix(entities), []).append((path, entities, legacy))
    if not by_run:
        raise UserInputError(
            f"No fMRIPrep bold (*_space-{space_label}_desc-preproc_bold.nii[.gz]) under "
            f"{derivatives}; spaces found: {', '.join(sorted(spaces_seen)) or 'none'}; "
            "set space to one of them"
        )
    listings: dict[Path, list[Path]] = {}
    runs = []
    for prefix, matches in sorted(by_run.items(), key=lambda item: item[1][0][0]):
        if len(matches) > 1:
            raise UserInputError(
                f"Several fMRIPrep bold files for {prefix} in space {space_label} "
                f"({list_names([m[0].name for m in matches])}); name the resolution, e.g. "
                f"space={space_label}:res-2"
            )
        path, entities, legacy = matches[0]
        runs.append(_fmriprep_run(path, entities, legacy, prefix, derivatives, raw_root, listings))
    return runs


def _fmriprep_bold_entities(name: str) -> tuple[dict[str, str], bool] | None:
    """Entities of an fMRIPrep preprocessed-bold file name and whether it is the old naming."""
    if strip_bold_extension(name) is None:
        return None
    entities, suffix = parse_entities(name)
    if "sub" not in entities or "space" not in entities:
        return None
    if suffix == "bold" and entities.get("desc") == "preproc":
        return entities, False
    if suffix == "preproc" and _LEGACY_BOLD in name:
        return entities, True
    return None


def _fmriprep_run(
    path: Path,
    entities: dict[str, str],
    legacy: bool,
    prefix: str,
    derivatives: Path,
    raw_root: Path,
    listings: dict[Path, list[Path]],
) -> BoldRun:
    """A BoldRun for one fMRIPrep bold: raw events and sidecars, fMRIPrep mask and confounds."""
    raw_folder = raw_root / path.parent.relative_to(derivatives)
    run_entities = acquisition_entities(entities)
    sidecars = inherited_files(raw_root, raw_folder, run_entities, "bold", ".json", listings)
    own_sidecar = path.with_name(strip_bold_extension(path.name) + ".json")
    if own_sidecar.is_file():
        sidecars.append(own_sidecar)
    metadata, sources = _merge_sidecars(sidecars)
    if legacy:
        mask_names = [path.name.replace("_preproc.nii", "_brainmask.nii")]
        confounds = (path.parent / f"{prefix}_bold_confounds.tsv",)
    else:
        mask_name = path.name.replace("_desc-preproc_bold.nii", "_desc-brain_mask.nii")
        mask_names = [mask_name, mask_name.replace(".nii.gz", ".nii")]
        confounds = tuple(path.parent / f"{prefix}{s}" for s in _CONFOUNDS_SUFFIXES)
    masks = [path.parent / name for name in mask_names if os.path.lexists(path.parent / name)]
    return BoldRun(
        bold_path=path,
        entities=entities,
        metadata=metadata,
        metadata_sources=sources,
        events_path=_events_file(raw_root, raw_folder, entities, listings),
        brain_mask=masks[0] if masks else None,
        confounds_candidates=confounds,
    )


def inherited_files(
    root: Path,
    folder: Path,
    entities: dict[str, str],
    suffix: str,
    extension: str,
    listings: dict[Path, list[Path]] | None = None,
) -> list[Path]:
    """Files of ``suffix``+``extension`` that apply, by BIDS inheritance, to a file in ``folder``.

    Searched from ``root`` down to ``folder`` (missing folders are skipped); a file applies when
    its entities are a subset of ``entities``. Returned general first (shallower, then fewer
    entities). ``listings`` caches folder contents across calls (one listing per folder).
    """
    listings = {} if listings is None else listings
    folders = [root, *_folders_between(root, folder)]
    found = []
    for depth, current in enumerate(folders):
        if current not in listings:
            listings[current] = (
                sorted(p for p in current.iterdir() if p.is_file()) if current.is_dir() else []
            )
        for path in listings[current]:
            if not path.name.endswith(extension):
                continue
            candidate, candidate_suffix = parse_entities(path.name)
            if candidate_suffix == suffix and entities_apply(candidate, entities):
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


def require_content(path: Path) -> None:
    """Refuse a file whose content is absent: a dangling link (an annexed file not fetched)."""
    if os.path.lexists(path) and not path.exists():
        raise UserInputError(
            f"{path} is a link to content that is not on disk (an annexed file not fetched?); "
            f"run `datalad get {path}` or prepare through the catalog, which fetches it"
        )


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
