"""The stimulus catalogue: an id, label, split and image for every stimulus the trials name.

Stimulus images are found below ``stimuli/`` (or ``stimuli_dir``) by the name the events give:
a relative path, a file name, or a name without extension (``stimuli/stimuli.tsv`` may map ids
to files). Labels and splits come from the events, else from ``stimuli.tsv`` (splits from the
session label with ``session_splits``); without any split, test = the stimuli that every subject
of the dataset saw, train = the others.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from mindzoo.errors import UserInputError
from mindzoo.pipelines.fmri.bids import BoldRun, list_names, require_content
from mindzoo.pipelines.fmri.config import SPLITS, FMRIPipelineConfig, split_name, under_root
from mindzoo.pipelines.fmri.events import run_trials
from mindzoo.pipelines.fmri.runs import RunPlan
from mindzoo.pipelines.fmri.sources import SourceFiles

STIMULI_DIR = "stimuli"
STIMULI_TABLE = "stimuli.tsv"
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


@dataclass
class StimulusCatalog:
    """Stimuli in ``stimulus_index`` order and how each trial's key maps to an index."""

    ids: list[str]
    labels: list[str]
    splits: list[str]
    image_paths: list[Path] | None
    index_of_key: dict[str, int]


def read_stimuli_table(
    root: Path, config: FMRIPipelineConfig, sources: SourceFiles
) -> pd.DataFrame | None:
    """``stimuli/stimuli.tsv`` indexed by the stimulus column, or ``None`` when it can't map."""
    path = root / STIMULI_DIR / STIMULI_TABLE
    if not path.is_file():
        return None
    table = pd.read_csv(path, sep="\t", dtype=str, na_values=["n/a", ""], keep_default_na=False)
    sources.add(path)
    if config.stimulus_column not in table.columns:
        return None
    if table[config.stimulus_column].duplicated().any():
        duplicate = table.loc[table[config.stimulus_column].duplicated(), config.stimulus_column]
        raise UserInputError(
            f"{path.name} lists {config.stimulus_column}={duplicate.iloc[0]!r} twice; "
            "keep one row per stimulus"
        )
    return table.set_index(config.stimulus_column, drop=False)


def _is_image_file(key: str) -> bool:
    return Path(key).suffix.lower() in IMAGE_EXTENSIONS


def build_catalog(
    root: Path,
    plans: dict[str, list[RunPlan]],
    task_runs: list[BoldRun],
    table: pd.DataFrame | None,
    config: FMRIPipelineConfig,
    sources: SourceFiles,
    with_images: bool,
) -> StimulusCatalog:
    """Stimulus ids, labels, splits and image files for every stimulus the trials name."""
    trials = pd.concat([p.trials for ps in plans.values() for p in ps], ignore_index=True)
    first_rows = trials.drop_duplicates("stimulus_key").set_index("stimulus_key")
    keys = list(first_rows.index)
    ids = {key: _stimulus_id(key, table) for key in keys}
    labels = _per_stimulus(trials, "label", config.label_column, table)
    # The default column may be absent (labels stay empty); a column the user named may not.
    # (Not model_fields_set: catalog settings arrive with every default written out.)
    named = config.label_column != FMRIPipelineConfig.model_fields["label_column"].default
    if labels.isna().all() and config.label_column and named:
        raise UserInputError(
            f"label_column {config.label_column!r} is in no events file nor {STIMULI_TABLE}; "
            "name an existing column or set label_column=null"
        )
    if config.label_regex is not None:
        labels = _labels_from_names(labels, config.label_regex)
    if config.session_splits is None:  # a session plan that contradicts itself stays an error
        trials = _strongest_split_per_stimulus(trials, config)
    splits = _per_stimulus(trials, "split", config.split_column, table)
    if splits.isna().all():
        splits = _infer_splits(task_runs, config, sources).reindex(keys)
    splits = _checked_splits(splits, config)

    order = sorted(keys, key=lambda key: ids[key])
    duplicates = pd.Series([ids[key] for key in order]).duplicated()
    if duplicates.any():
        raise UserInputError(
            f"Two stimuli share the id {ids[order[int(duplicates.idxmax())]]!r}; "
            "give every stimulus file a distinct name"
        )
    image_paths = None
    if with_images:
        image_paths = _find_images(root, order, first_rows["events_file"], table, config)
    return StimulusCatalog(
        ids=[ids[key] for key in order],
        labels=[_text(labels.get(key)) for key in order],
        splits=[str(splits[key]) for key in order],
        image_paths=image_paths,
        index_of_key={key: index for index, key in enumerate(order)},
    )


def _text(value: object) -> str:
    return "" if value is None or pd.isna(value) else str(value)


def _stimulus_id(key: str, table: pd.DataFrame | None) -> str:
    """``stim_id`` from ``stimuli.tsv`` when listed; else the file name without extension."""
    if table is not None and "stim_id" in table.columns and key in table.index:
        stim_id = table.at[key, "stim_id"]
        if not pd.isna(stim_id):
            return str(stim_id)
    return str(Path(key).with_suffix("")) if _is_image_file(key) else key


def _labels_from_names(labels: pd.Series, pattern: str) -> pd.Series:
    """Missing labels filled with ``pattern``'s group matched in the stimulus name (the index)."""
    compiled = re.compile(pattern)
    filled = labels.copy()
    for key in labels.index[labels.isna()]:
        match = compiled.search(key)
        if match is None:
            raise UserInputError(
                f"label_regex {pattern!r} does not match stimulus {key!r}; fix the pattern or "
                "set label_regex=null"
            )
        filled[key] = match.group(1)
    return filled


def stimuli_folder(root: Path, config: FMRIPipelineConfig) -> Path:
    return under_root(root, config.stimuli_dir or STIMULI_DIR)


def image_name(key: str, table: pd.DataFrame | None) -> str:
    """What to look for: ``stimuli.tsv``'s ``stim_file`` for an id it lists, else the key."""
    if _is_image_file(key) or table is None or "stim_file" not in table.columns:
        return key
    if key in table.index and not pd.isna(table.at[key, "stim_file"]):
        return str(table.at[key, "stim_file"])
    return key


def _find_images(
    root: Path,
    keys: list[str],
    events_files: pd.Series,
    table: pd.DataFrame | None,
    config: FMRIPipelineConfig,
) -> list[Path]:
    """The image file of each stimulus; all missing ones are reported in one line."""
    folder = stimuli_folder(root, config)
    finder = ImageFinder(folder)
    paths, missing = [], []
    for key in keys:
        path = finder.find(image_name(key, table))
        if path is None:
            missing.append(key)
        else:
            paths.append(path)
    if missing:
        fix = (
            "pass stimuli_dir=FOLDER with the images"
            if config.stimuli_dir is None
            else "put them there or fix stimuli_dir"
        )
        raise UserInputError(
            f"{len(missing)} of {len(keys)} stimulus images are missing ({list_names(missing)}, "
            f"first named in {events_files[missing[0]]}); looked below {folder} by relative path, "
            f"file name or name without extension; {fix}, or prepare without image features "
            "(features=[])"
        )
    return paths


class ImageFinder:
    """Image files below ``folder``, found by relative path, file name or name without
    extension (so ``n01518878_5958`` finds ``n01518878/n01518878_5958.JPEG``).

    The folder is walked once, on the first name that is not a relative path below it. Links
    whose content is absent (annexed files not fetched) are listed too.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._by_name: dict[str, list[Path]] | None = None

    def find(self, name: str) -> Path | None:
        direct = self.folder / name
        if _is_image_file(name) and os.path.lexists(direct):
            return direct
        matches = self._index().get(Path(name).name if _is_image_file(name) else name, [])
        if len(matches) > 1:
            raise UserInputError(
                f"Several images below {self.folder} match stimulus {name!r} "
                f"({list_names([str(p.relative_to(self.folder)) for p in matches])}); keep one "
                "or name stimuli by their relative path"
            )
        return matches[0] if matches else None

    def _index(self) -> dict[str, list[Path]]:
        """File name -> paths, and name without extension -> paths."""
        if self._by_name is None:
            self._by_name = {}
            for dirpath, dirnames, filenames in os.walk(self.folder):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for filename in sorted(filenames):
                    if _is_image_file(filename):
                        path = Path(dirpath) / filename
                        self._by_name.setdefault(filename, []).append(path)
                        self._by_name.setdefault(Path(filename).stem, []).append(path)
        return self._by_name


def _per_stimulus(
    trials: pd.DataFrame, trial_column: str, table_column: str | None, table: pd.DataFrame | None
) -> pd.Series:
    """One value per stimulus key from the events (checked consistent), else ``stimuli.tsv``."""
    known = trials.dropna(subset=[trial_column]).drop_duplicates(["stimulus_key", trial_column])
    conflicts = known["stimulus_key"].duplicated(keep=False)
    if conflicts.any():
        clash = known[conflicts]
        key = clash["stimulus_key"].iloc[0]
        values = clash.loc[clash["stimulus_key"] == key, trial_column].tolist()
        raise UserInputError(
            f"Stimulus {key!r} has several {table_column or trial_column} values "
            f"({', '.join(values)}) in the events (e.g. {clash['events_file'].iloc[0]}); "
            "give each stimulus one value"
        )
    values = known.set_index("stimulus_key")[trial_column]
    keys = trials["stimulus_key"].unique()
    values = values.reindex(keys)
    if table is not None and table_column is not None and table_column in table.columns:
        values = values.fillna(table[table_column].reindex(keys))
    return values


def _strongest_split_per_stimulus(trials: pd.DataFrame, config: FMRIPipelineConfig) -> pd.DataFrame:
    """Trials with each stimulus' split reduced to one value: test wins over val over train.

    Values are first mapped by ``split_values``. BOLD5000 marks one presentation of a repeated
    image ``coco`` and the others ``rep_coco``: the image is a test image. Unknown values rank
    first so that ``_checked_splits`` reports them.
    """
    if "split" not in trials.columns:
        return trials
    mapped = trials["split"].map(
        lambda value: value if pd.isna(value) else split_name(config.split_values.get(value, value))
    )
    rank = mapped.map({"test": 1, "val": 2, "train": 3}).fillna(0).where(mapped.notna(), 4)
    strongest = (
        trials.assign(split=mapped, _rank=rank).groupby("stimulus_key")["_rank"].transform("min")
    )
    return trials.assign(split=mapped.where(rank == strongest))


def _infer_splits(
    runs: list[BoldRun], config: FMRIPipelineConfig, sources: SourceFiles
) -> pd.Series:
    """Test = stimuli that every subject of the dataset saw (as NSD's shared images)."""
    seen_by: dict[str, set[str]] = {}
    for run in runs:
        for key in run_trials(run, config, sources)["stimulus_key"]:
            seen_by.setdefault(key, set()).add(run.subject)
    n_subjects = len({run.subject for run in runs})
    splits = pd.Series(
        {key: "test" if len(who) == n_subjects else "train" for key, who in seen_by.items()}
    )
    if (splits == "test").all():
        raise UserInputError(
            f"No split column ({config.split_column!r}) and every stimulus is seen by all "
            f"{n_subjects} subject(s), so no training set can be inferred; set split_column "
            "to an events column with train/test, or session_splits"
        )
    return splits


def _checked_splits(splits: pd.Series, config: FMRIPipelineConfig) -> pd.Series:
    """Split names mapped by ``split_values`` and normalised to train/val/test; missing or
    unknown ones are refused."""
    missing = splits.isna()
    if missing.any():
        raise UserInputError(
            f"Stimulus {splits.index[missing][0]!r} has no {config.split_column!r} value in any "
            "events file; fill the split column for every trial"
        )
    normalised = splits.map(lambda value: split_name(config.split_values.get(value, value)))
    unknown = ~normalised.isin(SPLITS)
    if unknown.any():
        raise UserInputError(
            f"Unknown split {splits[unknown].iloc[0]!r} in column {config.split_column!r}; "
            f"use one of {', '.join(SPLITS)} or map it with split_values"
        )
    return normalised


def load_images(paths: list[Path], image_size: int | None) -> np.ndarray:
    """uint8 ``[n, h, w, 3]``; with ``image_size``, centre-cropped to square and resized."""
    images = []
    for path in paths:
        require_content(path)
        try:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise UserInputError(
                f"Stimulus image {path} cannot be read ({exc}); replace it with a valid image"
            ) from None
        if image_size is not None:
            image = _square_resize(image, image_size)
        elif images and image.size != (images[0].shape[1], images[0].shape[0]):
            raise UserInputError(
                f"Stimulus {path.name} is {image.size[0]}x{image.size[1]} pixels but "
                f"{paths[0].name} is {images[0].shape[1]}x{images[0].shape[0]}; "
                "set image_size to resize them all"
            )
        images.append(np.asarray(image, dtype=np.uint8))
    return np.stack(images)


def _square_resize(image: Image.Image, size: int) -> Image.Image:
    side = min(image.size)
    left = (image.width - side) // 2
    top = (image.height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    return square.resize((size, size), Image.Resampling.BICUBIC)
