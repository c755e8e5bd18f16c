"""The dataset catalog: every entry validates, `datasets --info` shows it, and the OpenNeuro
entries' settings work on their datasets' real layouts.

The layouts below copy what the DataLad mirrors hold (file names, entities, events columns and
values of a few real rows, fMRIPrep names, where the images are); only the NIfTI content is
tiny and synthetic.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from factories.cli import cli
from PIL import Image

from mindzoo.config import config_hash, validate
from mindzoo.datasets.catalog import DatasetSpec, get_dataset, list_datasets
from mindzoo.datasets.store import TensorStore
from mindzoo.errors import UserInputError
from mindzoo.pipelines.prepare import prepare_dataset, resolve_settings

OPENNEURO = {
    "god": "ds001246",
    "bold5000": "ds001499",
    "things-fmri": "ds004192",
    "nod": "ds004496",
}


def test_every_entry_validates_and_keeps_its_settings() -> None:
    specs = list_datasets()
    assert {"synthetic-fmri", "bids-fmri", *OPENNEURO} <= set(specs)
    for spec in specs.values():
        settings = resolve_settings(spec, [])
        for key, value in spec.settings.get("pipeline", {}).items():
            assert settings["pipeline"][key] == value, (spec.name, key)
        assert settings["features"] == spec.settings["features"]
        for field in ("subjects", "size_per_subject", "splits", "stimuli", "prepare"):
            assert len(getattr(spec.info, field)) > 20, (spec.name, field)


def test_openneuro_entries_clone_their_mirrors() -> None:
    for name, accession in OPENNEURO.items():
        spec = get_dataset(name)
        assert spec.source == "datalad"
        assert spec.location == f"https://github.com/OpenNeuroDatasets/{accession}.git"
        assert accession in spec.description and spec.licence.startswith("CC0-1.0")


def test_a_datalad_entry_needs_a_location() -> None:
    entry = get_dataset("god").model_dump()
    with pytest.raises(UserInputError, match="needs a location"):
        validate(DatasetSpec, {**entry, "location": None}, "test entry")


def test_subjects_and_sessions_are_settings_in_the_hash() -> None:
    spec = get_dataset("bids-fmri")
    plain = resolve_settings(spec, [])
    limited = resolve_settings(spec, [], subjects=["01"], sessions=["02"])
    assert limited["pipeline"]["subjects"] == ["01"] and limited["pipeline"]["sessions"] == ["02"]
    assert plain["pipeline"]["subjects"] is None
    assert config_hash(plain) != config_hash(limited)


@pytest.mark.parametrize("name", sorted(list_datasets()))
def test_datasets_info_prints_the_entry(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("datasets", "--info", name) == 0
    text = " ".join(capsys.readouterr().out.split())
    spec = get_dataset(name)
    for field in ("source", "licence", "access", "size per subject", "splits", "prepare"):
        assert field in text
    assert spec.licence in text and spec.source in text
    assert " ".join(spec.info.size_per_subject.split())[:40] in text
    if spec.location:
        assert spec.location in text


def test_datasets_info_unknown_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("datasets", "--info", "no-such") == 2
    assert "Unknown dataset 'no-such'" in capsys.readouterr().err


# --- the entries on their datasets' layouts --------------------------------------------------

SHAPE = (12, 12, 8)


def _bold(path: Path, n_frames: int, tr: float, affine: np.ndarray, seed: int) -> None:
    """A bright box of noisy voxels in a dark field: enough for an EPI mask and a GLM."""
    rng = np.random.default_rng(seed)
    data = rng.uniform(0.0, 3.0, (*SHAPE, n_frames)).astype(np.float32)
    data[1:-1, 1:-1, 1:-1] += 100.0 + rng.normal(0.0, 1.0, (10, 10, 6, n_frames))
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm", "sec")
    image.header.set_zooms((2.0, 2.0, 2.0, tr))
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)


def _events(path: Path, rows: list[dict], columns: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=columns).to_csv(path, sep="\t", index=False, na_rep="n/a")


def _image(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((12, 10, 3), value, dtype=np.uint8)).save(path)


def _prepare(name: str, root: Path, out: Path, *sets: str) -> TensorStore:
    prepare_dataset(name, out, source=root, overrides=["features=[pixels]", *sets], progress=False)
    return TensorStore.open(out)


def _by_stimulus(store: TensorStore, subject: str) -> pd.DataFrame:
    trials = store.trials(subject)
    return trials.assign(stimulus=[store.stimulus_ids[i] for i in trials["stimulus_index"]])


THINGS_COLUMNS = (
    "onset duration trial_type category_nr exemplar_nr test_image_nr things_category_nr "
    "things_exemplar_nr response_time file_path"
).split()


def _things_row(onset: float, kind: str, path: str, numbers: tuple) -> dict:
    category, exemplar, test_nr, things_category, things_exemplar = numbers
    return dict(
        zip(
            THINGS_COLUMNS,
            [onset, 0.5, kind, category, exemplar, test_nr, things_category, things_exemplar]
            + [0.871 if kind == "catch" else None, path],
            strict=True,
        )
    )


def test_things_fmri_entry_on_its_layout(tmp_path: Path) -> None:
    """Raw bold, task things, trial_type exp/test/catch, images from the THINGS folder."""
    root, images = tmp_path / "ds004192", tmp_path / "object_images"
    runs = {
        ("things01", 1): [
            ("exp", "dog/dog_12s.jpg", (205, 12, None, 496.0, 12.0)),
            ("exp", "mango/mango_12s.jpg", (384, 12, None, 967.0, 12.0)),
            ("catch", "catch008.jpg", (721, 8, None, None, None)),
            ("test", "candelabra/candelabra_14s.jpg", (110, 13, 22.0, 253.0, 14.0)),
        ],
        ("things01", 2): [
            ("test", "candelabra/candelabra_14s.jpg", (110, 13, 22.0, 253.0, 14.0)),
            ("exp", "spatula/spatula_12s.jpg", (587, 12, None, 1509.0, 12.0)),
        ],
        ("things02", 1): [("exp", "hammer/hammer_12s.jpg", (300, 12, None, 700.0, 12.0))],
    }
    (root / "task-things_events.json").parent.mkdir(parents=True)
    (root / "task-things_events.json").write_text("{}")
    for (session, run), rows in runs.items():
        func = root / "sub-01" / f"ses-{session}" / "func"
        stem = f"sub-01_ses-{session}_task-things_run-{run:02d}"
        _bold(func / f"{stem}_bold.nii.gz", 30, 1.5, np.diag([2.0, 2.0, 2.0, 1.0]), run)
        (func / f"{stem}_bold.json").write_text('{"RepetitionTime": 1.5, "TaskName": "things"}')
        events = [_things_row(3.0 + 4.5 * i, *row) for i, row in enumerate(rows)]
        _events(func / f"{stem}_events.tsv", events, THINGS_COLUMNS)
        for number, (_, path, _) in enumerate(rows):
            if not path.startswith("catch"):
                _image(images / path, 20 * number + run)
    store = _prepare("things-fmri", root, tmp_path / "store", f"pipeline.stimuli_dir={images}")
    trials = _by_stimulus(store, "sub-01")
    # session things01 only (the entry's default), catch trials not modelled
    assert trials["stimulus"].tolist() == [
        "dog/dog_12s",
        "mango/mango_12s",
        "candelabra/candelabra_14s",
        "candelabra/candelabra_14s",
        "spatula/spatula_12s",
    ]
    assert trials["split"].tolist() == ["train", "train", "test", "test", "train"]
    assert trials["repetition"].tolist() == [0, 0, 0, 1, 0]
    assert trials["label"].tolist() == ["dog", "mango", "candelabra", "candelabra", "spatula"]
    assert store.images().shape == (4, 224, 224, 3)


NOD_COLUMNS = ["onset", "duration", "trial_type", "response", "response_time", "stim_file"]


def test_nod_entry_on_its_layout(tmp_path: Path) -> None:
    """fMRIPrep space-T1w input with NOD's unpadded run labels, images in stimuli/imagenet."""
    root = tmp_path / "ds004496"
    sessions = {
        "imagenet01": ["n03131574/n03131574_8247.JPEG", "n02117135/n02117135_7352.JPEG"],
        "imagenet04": ["n04147183/n04147183_19755.JPEG", "n02111500/n02111500_328.JPEG"],
    }
    for session, shown in sessions.items():
        raw = root / "sub-01" / f"ses-{session}" / "func"
        stem = f"sub-01_ses-{session}_task-imagenet_run-01"
        rows = [
            [0.0144 + 4.0 * i, 1.0, f"{521.0 - i}", -1.0, 1.29, f"imagenet/{name}"]
            for i, name in enumerate(shown)
        ]
        _events(
            raw / f"{stem}_events.tsv",
            [dict(zip(NOD_COLUMNS, r, strict=True)) for r in rows],
            NOD_COLUMNS,
        )
        (raw / f"{stem}_bold.json").write_text('{"RepetitionTime": 2.0}')
        prep = root / "derivatives" / "fmriprep" / "sub-01" / f"ses-{session}" / "func"
        unpadded = stem.replace("run-01", "run-1")
        _bold(prep / f"{unpadded}_space-T1w_desc-preproc_bold.nii.gz", 24, 2.0, np.eye(4), 1)
        (prep / f"{unpadded}_space-T1w_desc-preproc_bold.json").write_text(
            '{"RepetitionTime": 2.0, "SkullStripped": false}'
        )
        motion = np.random.default_rng(0).normal(0.0, 0.01, (24, 6))
        confounds = pd.DataFrame(
            motion, columns=["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]
        )
        confounds.to_csv(prep / f"{unpadded}_desc-confounds_timeseries.tsv", sep="\t", index=False)
        for number, name in enumerate(shown):
            _image(root / "stimuli" / "imagenet" / name, 50 * number)
    (root / "task-imagenet_bold.json").write_text('{"RepetitionTime": 2, "TaskName": "imagenet"}')
    store = _prepare("nod", root, tmp_path / "store")
    trials = _by_stimulus(store, "sub-01")
    assert trials["split"].tolist() == ["train", "train", "test", "test"]
    assert trials["label"].tolist() == ["n03131574", "n02117135", "n04147183", "n02111500"]
    assert trials["session"].tolist() == [1, 1, 2, 2]  # ranks of imagenet01, imagenet04
    assert store.images().shape == (4, 224, 224, 3)


BOLD5000_COLUMNS = (
    "onset duration Subj Sess Run Trial ImgName ImgType StimOn(s) StimOff(s) Response RT"
).split()


def test_bold5000_entry_on_its_layout(tmp_path: Path) -> None:
    """fMRIPrep's pre-1.2 names (space-T1w_preproc, brainmask, bold_confounds) and ImgType."""
    root, images = tmp_path / "ds001499", tmp_path / "Presented_Stimuli"
    sessions = {
        "01": [
            ("n01930112_19568.JPEG", "imagenet"),
            ("COCO_train2014_000000113449.jpg", "rep_coco"),
        ],
        "13": [
            ("COCO_train2014_000000113449.jpg", "coco"),
            ("COCO_train2014_000000420713.jpg", "coco"),
        ],
    }
    folders = {"imagenet": "ImageNet", "coco": "COCO"}
    for session, shown in sessions.items():
        raw = root / "sub-CSI1" / f"ses-{session}" / "func"
        stem = f"sub-CSI1_ses-{session}_task-5000scenes_run-01"
        rows = [
            [6.0 + 10.0 * i, 1.0, 1, int(session), 1, i + 1, name, kind, 6.0 + 10.0 * i]
            + [7.0 + 10.0 * i, 2, 3.6]
            for i, (name, kind) in enumerate(shown)
        ]
        events = [dict(zip(BOLD5000_COLUMNS, row, strict=True)) for row in rows]
        _events(raw / f"{stem}_events.tsv", events, BOLD5000_COLUMNS)
        (raw / f"{stem}_bold.json").write_text('{"RepetitionTime": 2}')
        prep = root / "derivatives" / "fmriprep" / "sub-CSI1" / f"ses-{session}" / "func"
        _bold(prep / f"{stem}_bold_space-T1w_preproc.nii.gz", 16, 2.0, np.eye(4), 2)
        mask = np.zeros(SHAPE, dtype=np.uint8)
        mask[1:-1, 1:-1, 1:-1] = 1
        nib.save(nib.Nifti1Image(mask, np.eye(4)), prep / f"{stem}_bold_space-T1w_brainmask.nii.gz")
        motion = np.random.default_rng(1).normal(0.0, 0.01, (16, 6))
        pd.DataFrame(motion, columns=["X", "Y", "Z", "RotX", "RotY", "RotZ"]).to_csv(
            prep / f"{stem}_bold_confounds.tsv", sep="\t", index=False
        )
        for number, (name, kind) in enumerate(shown):
            _image(images / folders[kind.removeprefix("rep_")] / name, 30 * number)
    (root / "task-5000scenes_bold.json").write_text(
        '{"TaskName": "5000scenes", "RepetitionTime": 2}'
    )
    store = _prepare("bold5000", root, tmp_path / "store", f"pipeline.stimuli_dir={images}")
    trials = _by_stimulus(store, "sub-CSI1")
    assert trials["split"].tolist() == ["train", "test", "test", "train"]
    assert trials["repetition"].tolist() == [0, 0, 1, 0]
