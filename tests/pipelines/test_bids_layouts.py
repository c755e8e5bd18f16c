"""Real dataset layouts through the fMRI pipeline, end to end.

- Generic Object Decoding (OpenNeuro ds001246) as its DataLad dataset lays it out: session
  labels ``perceptionTraining01``/``perceptionTest01``/``imageryTest01``, a second task
  (imagery) with other events columns, top-level ``task-*_bold.json`` only, perception events
  with the real columns (``onset duration trial_no event_type stimulus_id stimulus_name
  category_index image_index response_time``: rest blocks, 9 s stimulus blocks, one-back
  repeats), ImageNet images absent from the dataset and given as a folder of
  ``<synset>/<name>.JPEG``, and fMRIPrep outputs under fMRIPrep's names. As in the real data,
  each session's raw bold has its own grid. The settings are those of the catalog entry.
- fMRIPrep derivatives of the factory dataset, with unpadded run labels as NOD's have.
- A dataset without sessions, with two tasks, no run entity and sidecars/events inherited from
  the subject level, stored as ``.nii``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from factories.bids import (
    MOTION,
    simulate_bold,
    t1w_affine,
    tilted_affine,
    write_bids_fmri,
    write_bold_image,
    write_fmriprep,
    write_json,
)
from PIL import Image

from mindzoo.errors import UserInputError
from mindzoo.pipelines.fmri import FMRIPipelineConfig, input_files, prepare_bids_fmri

# The settings mindzoo/configs/datasets/god.yaml gives the pipeline (plus stimuli_dir from the
# user).
GOD_SETTINGS = {
    "input": "fmriprep",
    "space": "T1w",
    "task": "perception",
    "stimulus_column": "stimulus_name",
    "label_column": None,
    "label_regex": r"^(n\d+)_",
    "split_column": None,
    "session_splits": {"perceptionTraining*": "train", "perceptionTest*": "test"},
    "roi_mask": None,
    "confounds": list(MOTION),
    "image_size": 224,
}
GOD_TR = 3.0
GOD_BLOCK_S = 9.0
GOD_REST_S = (33.0, 6.0)  # the rest blocks that open and close every perception run
GOD_SHAPE = (10, 11, 8)
# (stimulus_name, stimulus_id, category_index, image_index), from GOD's stimulus tables
GOD_TRAINING = [
    ("n01518878_5958", "1518878.005958", 1, 5),
    ("n01518878_7346", "1518878.007346", 1, 6),
    ("n01639765_22407", "1639765.022407", 2, 9),
    ("n01639765_32862", "1639765.032862", 2, 10),
    ("n01645776_8522", "1645776.008522", 3, 19),
    ("n01645776_8879", "1645776.008879", 3, 20),
    ("n01664990_10648", "1664990.010648", 4, 25),
    ("n01664990_13731", "1664990.013731", 4, 26),
]
GOD_TEST = [
    ("n01443537_22563", "1443537.022563", 1, 1),
    ("n01621127_19020", "1621127.019020", 2, 2),
    ("n01677366_18182", "1677366.018182", 3, 3),
]
# session -> runs, each run the image indices shown in order (a repeat is the one-back target)
GOD_SESSIONS = {
    "perceptionTraining01": [[0, 1, 1, 2, 3], [4, 5, 6, 7, 7]],
    "perceptionTest01": [[0, 1, 2, 2], [2, 0, 0, 1]],
}


def _god_events(shown: list[tuple[str, str, int, int]], rng) -> pd.DataFrame:
    first_rest, last_rest = GOD_REST_S
    rows = [{"onset": 0, "duration": first_rest, "trial_no": 1, "event_type": "rest"}]
    for number, stimulus in enumerate(shown, start=2):
        name, stimulus_id, category, image = stimulus
        onset = first_rest + (number - 2) * GOD_BLOCK_S
        repeat = number > 2 and shown[number - 3] == stimulus
        rows.append(
            {
                "onset": onset,
                "duration": GOD_BLOCK_S,
                "trial_no": number,
                "event_type": "stimulus",
                "stimulus_id": stimulus_id,
                "stimulus_name": name,
                "category_index": category,
                "image_index": image,
                "response_time": round(onset + rng.uniform(0.5, 2.0), 6) if repeat else None,
            }
        )
    end = first_rest + len(shown) * GOD_BLOCK_S
    rows.append({"onset": end, "duration": last_rest, "trial_no": len(shown) + 2})
    rows[-1]["event_type"] = "rest"
    columns = ["onset", "duration", "trial_no", "event_type", "stimulus_id", "stimulus_name"]
    return pd.DataFrame(rows, columns=[*columns, "category_index", "image_index", "response_time"])


def write_god(root: Path, images: Path, subjects=("01", "02"), seed: int = 0) -> dict:
    """GOD's layout with tiny content; returns the true betas and trials per subject."""
    rng = np.random.default_rng(seed)
    write_json(
        root / "dataset_description.json",
        {"Name": "Generic Object Decoding (fMRI on ImageNet)", "BIDSVersion": "1.0.2"},
    )
    for task in ("perception", "imagery"):
        write_json(
            root / f"task-{task}_bold.json",
            {"RepetitionTime": GOD_TR, "EchoTime": 0.03, "FlipAngle": 80, "TaskName": task},
        )
    truth = {}
    for subject in subjects:
        brain = np.zeros(GOD_SHAPE, dtype=bool)
        brain[2:-2, 2:-2, 1:-1] = True
        baseline = np.where(brain, rng.uniform(80, 120, GOD_SHAPE), rng.uniform(0, 5, GOD_SHAPE))
        trials, betas = [], []
        for number, (session, runs) in enumerate(GOD_SESSIONS.items()):
            stimuli = GOD_TRAINING if session.startswith("perceptionTraining") else GOD_TEST
            # every session was scanned at another position: its own raw grid
            raw_affine = tilted_affine(3.0)
            raw_affine[:3, 3] += 4.0 * number
            for run, indices in enumerate(runs, start=1):
                shown = [stimuli[i] for i in indices]
                events = _god_events(shown, rng)
                onsets = events.dropna(subset=["stimulus_name"])["onset"].to_numpy(float)
                n_frames = int((onsets[-1] + GOD_BLOCK_S + GOD_REST_S[1]) / GOD_TR)
                true = rng.normal(0.0, 2.0, size=(len(shown), *GOD_SHAPE)).astype(np.float32)
                bold = simulate_bold(
                    baseline, true, onsets, GOD_BLOCK_S, n_frames, GOD_TR, 0.01, 0.05, rng
                )
                stem = f"sub-{subject}_ses-{session}_task-perception_run-{run:02d}"
                func = root / f"sub-{subject}" / f"ses-{session}" / "func"
                func.mkdir(parents=True, exist_ok=True)
                write_bold_image(func / f"{stem}_bold.nii.gz", bold, raw_affine, GOD_TR, "int16")
                events.to_csv(func / f"{stem}_events.tsv", sep="\t", index=False, na_rep="n/a")
                _write_god_fmriprep(root, subject, session, stem, bold, brain, rng)
                for (name, *_), onset, beta in zip(shown, onsets, true, strict=True):
                    trials.append({"session": session, "run": run, "onset": onset, "name": name})
                    betas.append(beta)
        _write_god_imagery(root, subject, rng)
        anat = root / f"sub-{subject}" / "ses-anatomy" / "anat"
        anat.mkdir(parents=True, exist_ok=True)
        nib.save(
            nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)),
            anat / f"sub-{subject}_ses-anatomy_T1w.nii.gz",
        )
        truth[subject] = {"trials": pd.DataFrame(trials), "betas": np.stack(betas), "brain": brain}
    for index, (name, *_) in enumerate(GOD_TRAINING + GOD_TEST):
        folder = images / name.split("_")[0]
        folder.mkdir(parents=True, exist_ok=True)
        size = (20, 14) if index % 2 else (12, 18)  # ImageNet images vary in size
        pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{name}.JPEG", format="JPEG")
    return truth


def _write_god_fmriprep(root, subject, session, stem, bold, brain, rng) -> None:
    """fMRIPrep's outputs for one run: every run of a subject on the one T1w grid."""
    folder = root / "derivatives" / "fmriprep" / f"sub-{subject}" / f"ses-{session}" / "func"
    folder.mkdir(parents=True, exist_ok=True)
    preproc = folder / f"{stem}_space-T1w_desc-preproc_bold.nii.gz"
    write_bold_image(preproc, bold, t1w_affine(), GOD_TR)
    write_json(
        folder / f"{stem}_space-T1w_desc-preproc_bold.json",
        {"RepetitionTime": GOD_TR, "SkullStripped": False, "TaskName": "perception"},
    )
    nib.save(
        nib.Nifti1Image(brain.astype(np.uint8), t1w_affine()),
        folder / f"{stem}_space-T1w_desc-brain_mask.nii.gz",
    )
    n = bold.shape[3]
    confounds = {name: 0.01 * rng.normal(size=n) for name in MOTION}
    confounds["framewise_displacement"] = np.r_[np.nan, rng.uniform(0, 0.2, n - 1)]
    pd.DataFrame(confounds).to_csv(
        folder / f"{stem}_desc-confounds_timeseries.tsv", sep="\t", index=False, na_rep="n/a"
    )


def _write_god_imagery(root: Path, subject: str, rng) -> None:
    """An imagery run: another task, with the imagery events columns and no stimulus_name."""
    stem = f"sub-{subject}_ses-imageryTest01_task-imagery_run-01"
    func = root / f"sub-{subject}" / "ses-imageryTest01" / "func"
    func.mkdir(parents=True, exist_ok=True)
    write_bold_image(func / f"{stem}_bold.nii.gz", rng.normal(size=(*GOD_SHAPE, 20)), np.eye(4), 3)
    pd.DataFrame(
        {
            "onset": [0, 33, 36, 51],
            "duration": [33, 3, 15, 3],
            "trial_no": [1, 2, 2, 2],
            "event_type": ["rest", "cue", "imagery", "evaluation"],
            "category_id": [None, "2690373", "2690373", "2690373"],
            "category_name": [None, "n02690373", "n02690373", "n02690373"],
            "category_index": [None, 16, 16, 16],
            "response_time": [None, 52.728104, 52.728104, 52.728104],
            "evaluation": [None, 5.0, 5.0, 5.0],
        }
    ).to_csv(func / f"{stem}_events.tsv", sep="\t", index=False, na_rep="n/a")


@pytest.fixture(scope="module")
def god(tmp_path_factory):
    base = tmp_path_factory.mktemp("god")
    root, images = base / "ds001246", base / "imagenet"
    truth = write_god(root, images)
    return root, images, truth


@pytest.fixture(scope="module")
def god_prepared(god):
    root, images, _ = god
    config = FMRIPipelineConfig(
        **{**GOD_SETTINGS, "stimuli_dir": str(images), "image_size": 8, "zscore": "none"}
    )
    return prepare_bids_fmri(root, config, progress=False)


def _expected_image(path: Path, size: int) -> np.ndarray:
    with Image.open(path) as image:
        image = image.convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    return np.asarray(square.resize((size, size), Image.Resampling.BICUBIC))


def test_god_trials_splits_and_repetitions(god, god_prepared):
    _, _, truth = god
    assert list(god_prepared.subjects) == ["sub-01", "sub-02"]
    for subject, expected in truth.items():
        trials = god_prepared.subjects[f"sub-{subject}"].trials
        # the imagery task and the rest blocks are not trials; sessions sort by label
        sessions = {"perceptionTest01": 1, "perceptionTraining01": 2}
        order = expected["trials"].assign(number=expected["trials"]["session"].map(sessions))
        order = order.sort_values(["number", "run", "onset"], kind="stable")
        assert trials["stimulus_id"].tolist() == order["name"].tolist()
        assert trials["session"].tolist() == order["number"].tolist()
        assert trials["run"].tolist() == order["run"].tolist()
        np.testing.assert_allclose(trials["onset"], order["onset"])
        assert trials["split"].tolist() == ["test" if n == 1 else "train" for n in order["number"]]
        assert trials["repetition"].tolist() == order.groupby("name").cumcount().tolist()
        assert trials["label"].tolist() == [name.split("_")[0] for name in order["name"]]
    names = sorted(name for name, *_ in GOD_TRAINING + GOD_TEST)
    assert god_prepared.stimulus_ids == names
    test_names = {name for name, *_ in GOD_TEST}
    assert god_prepared.stimulus_splits == ["test" if n in test_names else "train" for n in names]
    assert god_prepared.stimulus_labels == [name.split("_")[0] for name in names]


def test_god_betas_voxels_and_files(god, god_prepared):
    root, _, truth = god
    for subject, expected in truth.items():
        prepared = god_prepared.subjects[f"sub-{subject}"]
        chosen = np.zeros(prepared.volume_shape, dtype=bool)
        chosen[tuple(prepared.voxel_ijk.T)] = True
        np.testing.assert_array_equal(chosen, expected["brain"])  # fMRIPrep's brain mask
        np.testing.assert_allclose(prepared.affine, t1w_affine())
        assert prepared.space == "T1w"
        sessions = {"perceptionTest01": 1, "perceptionTraining01": 2}
        order = (
            expected["trials"]
            .assign(number=expected["trials"]["session"].map(sessions))
            .sort_values(["number", "run", "onset"], kind="stable")
            .index.to_numpy()
        )
        ijk = prepared.voxel_ijk
        true = expected["betas"][order][:, ijk[:, 0], ijk[:, 1], ijk[:, 2]]
        assert np.corrcoef(prepared.betas.ravel(), true.ravel())[0, 1] > 0.95
    names = {path.name for path in god_prepared.source_files}
    run = "sub-01_ses-perceptionTest01_task-perception_run-01"
    assert f"{run}_space-T1w_desc-preproc_bold.nii.gz" in names
    assert f"{run}_desc-confounds_timeseries.tsv" in names
    assert f"{run}_events.tsv" in names
    assert "task-perception_bold.json" in names
    assert f"{run}_bold.nii.gz" not in names  # the raw bold is not read
    assert not any("imagery" in name for name in names)


def test_god_images_come_from_the_user_folder(god, god_prepared):
    _, images, _ = god
    assert god_prepared.images.shape == (11, 8, 8, 3)
    for index, name in enumerate(god_prepared.stimulus_ids):
        path = images / name.split("_")[0] / f"{name}.JPEG"
        np.testing.assert_array_equal(god_prepared.images[index], _expected_image(path, 8))


def test_god_without_images(god):
    root, _, _ = god
    config = FMRIPipelineConfig(**{**GOD_SETTINGS, "subjects": ["02"]})
    with pytest.raises(UserInputError, match=r"11 of 11 stimulus images are missing") as caught:
        prepare_bids_fmri(root, config, progress=False)
    message = str(caught.value)
    assert "n01443537_22563, n01518878_5958, n01518878_7346, ..." in message
    assert str(root / "stimuli") in message and "stimuli_dir" in message
    prepared = prepare_bids_fmri(root, config, progress=False, with_images=False)
    assert prepared.images is None
    assert len(prepared.stimulus_ids) == 11
    assert list(prepared.subjects) == ["sub-02"]


def test_god_raw_bold_is_refused_across_sessions_but_one_session_works(god):
    root, images, truth = god
    raw = {**GOD_SETTINGS, "input": "raw", "confounds": [], "stimuli_dir": str(images)}
    with pytest.raises(UserInputError, match="one grid") as caught:
        prepare_bids_fmri(root, FMRIPipelineConfig(**raw), progress=False)
    assert "sub-01_ses-perceptionTraining01_task-perception_run-01_bold.nii.gz" in str(caught.value)
    one_session = {**raw, "sessions": ["perceptionTraining*"], "subjects": ["01"]}
    prepared = prepare_bids_fmri(
        root, FMRIPipelineConfig(**one_session, zscore="none"), progress=False, with_images=False
    )
    trials = prepared.subjects["sub-01"].trials
    assert set(trials["split"]) == {"train"}
    assert set(trials["session"]) == {2}  # numbered among all perception sessions
    assert len(trials) == 10
    assert len(prepared.stimulus_ids) == 8


def test_god_input_files_for_a_partial_get(god):
    root, images, _ = god
    config = FMRIPipelineConfig(
        **{**GOD_SETTINGS, "subjects": ["01"], "sessions": ["perceptionTest01"]},
        stimuli_dir=str(images),
    )
    files = input_files(root, config)
    prefix = root / "derivatives/fmriprep/sub-01/ses-perceptionTest01/func"
    raw = root / "sub-01/ses-perceptionTest01/func"
    expected = {root / "task-perception_bold.json"}
    for run in ("run-01", "run-02"):
        stem = f"sub-01_ses-perceptionTest01_task-perception_{run}"
        expected |= {
            prefix / f"{stem}_space-T1w_desc-preproc_bold.nii.gz",
            prefix / f"{stem}_space-T1w_desc-preproc_bold.json",
            prefix / f"{stem}_space-T1w_desc-brain_mask.nii.gz",
            prefix / f"{stem}_desc-confounds_timeseries.tsv",
            raw / f"{stem}_events.tsv",
        }
    expected |= {images / name.split("_")[0] / f"{name}.JPEG" for name, *_ in GOD_TEST}
    assert set(files) == expected
    assert len(files) == len(expected)


# --- fMRIPrep derivatives of the factory dataset ---------------------------------------------


def test_fmriprep_input_end_to_end(tmp_path):
    truth = write_bids_fmri(tmp_path, n_subjects=1, n_sessions=2, n_runs=2, n_train_per_run=5)
    written = write_fmriprep(tmp_path, pad_runs=False)
    assert written[0].name == "sub-01_ses-01_task-images_run-1_space-T1w_desc-preproc_bold.nii.gz"
    header = pd.read_csv(
        written[0].parent / "sub-01_ses-01_task-images_run-1_desc-confounds_timeseries.tsv",
        sep="\t",
        nrows=1,
    )
    assert np.isnan(header["framewise_displacement"][0])

    def prepare(**options):
        config = FMRIPipelineConfig(input="fmriprep", roi_mask=None, zscore="none", **options)
        return prepare_bids_fmri(tmp_path, config, progress=False)

    prepared = prepare(confounds=list(MOTION) + ["framewise_displacement", "csf"])
    subject = prepared.subjects["sub-01"]
    ijk = subject.voxel_ijk
    chosen = np.zeros(subject.volume_shape, dtype=bool)
    chosen[tuple(ijk.T)] = True
    brain = np.zeros(subject.volume_shape, dtype=bool)
    brain[1:-1, 1:-1, 1:-1] = True
    np.testing.assert_array_equal(chosen, brain)
    np.testing.assert_allclose(subject.affine, t1w_affine())
    assert subject.space == "T1w"
    true = truth.betas["01"][:, ijk[:, 0], ijk[:, 1], ijk[:, 2]]
    with_confounds = np.corrcoef(subject.betas.ravel(), true.ravel())[0, 1]
    # events of raw run-01 apply to fMRIPrep's run-1
    assert subject.trials["run"].tolist() == truth.trials["01"]["run"].tolist()
    assert subject.trials["stimulus_id"].tolist() == truth.trials["01"]["stim_id"].tolist()
    assert written[0] in prepared.source_files
    assert not any(path.name.endswith("_run-01_bold.nii.gz") for path in prepared.source_files)
    without = prepare().subjects["sub-01"]
    without_confounds = np.corrcoef(without.betas.ravel(), true.ravel())[0, 1]
    assert with_confounds > 0.95 > without_confounds


def test_fmriprep_bad_input(tmp_path):
    write_bids_fmri(tmp_path, n_subjects=1, n_sessions=1, n_runs=1, n_train_per_run=3)

    def prepare(**options):
        config = FMRIPipelineConfig(input="fmriprep", roi_mask=None, **options)
        return prepare_bids_fmri(tmp_path, config, progress=False)

    with pytest.raises(UserInputError, match=r"derivatives/fmriprep does not exist"):
        prepare()
    write_fmriprep(tmp_path)
    with pytest.raises(UserInputError, match=r"space-MNI152NLin2009cAsym.*spaces found: T1w"):
        prepare(space="MNI152NLin2009cAsym")
    confounds = next(tmp_path.rglob("*_desc-confounds_timeseries.tsv"))
    with pytest.raises(UserInputError, match="lacks confound column.*rot_q"):
        prepare(confounds=["rot_q"])
    confounds.unlink()
    with pytest.raises(UserInputError, match=confounds.name):
        prepare(confounds=["trans_x"])
    mask = next(tmp_path.rglob("*_space-T1w_desc-brain_mask.nii.gz"))
    nib.save(nib.Nifti1Image(np.ones((5, 5, 5), np.uint8), t1w_affine()), mask)
    with pytest.raises(UserInputError, match=rf"{mask.name} is on a different voxel grid.*shape"):
        prepare()


# --- no sessions, two tasks, no run entity, inheritance, .nii --------------------------------


def test_sessionless_two_tasks_no_run_entity_and_inheritance(tmp_path):
    truth = write_bids_fmri(
        tmp_path, n_subjects=1, n_sessions=1, n_runs=1, with_sessions=False, extension=".nii"
    )
    func = tmp_path / "sub-01" / "func"
    for path in list(func.iterdir()):  # one run per task: BIDS lets the run entity go
        path.rename(path.with_name(path.name.replace("_run-01", "")))
    for path in list(func.glob("*task-images*")):
        shutil.copy(path, func / path.name.replace("task-images", "task-words"))
    # sidecars: dataset level (wrong TR) < subject level (right TR); no run-level ones
    for path in func.glob("*_bold.json"):
        path.unlink()
    write_json(tmp_path / "task-words_bold.json", {"TaskName": "words", "RepetitionTime": 9.9})
    write_json(tmp_path / "sub-01" / "sub-01_task-words_bold.json", {"RepetitionTime": 1.5})
    # events of the words task inherited from the subject level
    (func / "sub-01_task-words_events.tsv").rename(tmp_path / "sub-01" / "sub-01_events.tsv")
    assert sorted(p.name for p in func.iterdir()) == [
        "sub-01_task-images_bold.nii",
        "sub-01_task-images_events.tsv",
        "sub-01_task-words_bold.nii",
    ]

    config = FMRIPipelineConfig(task=["images", "words"], zscore="none")
    prepared = prepare_bids_fmri(tmp_path, config, progress=False)
    subject = prepared.subjects["sub-01"]
    trials = subject.trials
    assert trials["session"].tolist() == [1] * 18
    assert trials["run"].tolist() == [1] * 9 + [2] * 9
    # the words run is a copy of the images run: same stimuli, same betas
    assert trials["stimulus_id"][:9].tolist() == truth.trials["01"]["stim_id"].tolist()
    assert trials["stimulus_id"][9:].tolist() == truth.trials["01"]["stim_id"].tolist()
    assert trials["repetition"].tolist() == [0] * 9 + [1] * 9
    np.testing.assert_allclose(subject.betas[:9], subject.betas[9:], atol=1e-5)
    ijk = subject.voxel_ijk
    true = truth.betas["01"][:, ijk[:, 0], ijk[:, 1], ijk[:, 2]]
    assert np.corrcoef(subject.betas[:9].ravel(), true.ravel())[0, 1] > 0.95
    sources = {path.relative_to(tmp_path).as_posix() for path in prepared.source_files}
    assert {"sub-01/sub-01_task-words_bold.json", "sub-01/sub-01_events.tsv"} <= sources

    # the nearest sidecar wins: without the subject-level one, the dataset level's TR is used
    (tmp_path / "sub-01" / "sub-01_task-words_bold.json").unlink()
    with pytest.raises(UserInputError, match=r"task-words_bold.json.*pixdim"):
        prepare_bids_fmri(tmp_path, config, progress=False)
    with pytest.raises(UserInputError, match="'faces'"):
        prepare_bids_fmri(tmp_path, FMRIPipelineConfig(task=["images", "faces"]), progress=False)
    with pytest.raises(UserInputError, match="no ses- entity"):
        prepare_bids_fmri(
            tmp_path, FMRIPipelineConfig(task="images", sessions=["01"]), progress=False
        )


def test_sidecar_levels_dataset_subject_session_run(tmp_path):
    write_bids_fmri(tmp_path, n_subjects=1, n_sessions=1, n_runs=1, n_train_per_run=3)
    from mindzoo.pipelines.fmri.bids import find_bold_runs

    levels = {
        "task-images_bold.json": {"A": "dataset", "B": "dataset", "C": "dataset", "D": "dataset"},
        "sub-01/sub-01_task-images_bold.json": {"B": "subject", "C": "subject", "D": "subject"},
        "sub-01/ses-01/sub-01_ses-01_task-images_bold.json": {"C": "session", "D": "session"},
        "sub-01/ses-01/func/sub-01_ses-01_task-images_run-01_bold.json": {"D": "run"},
    }
    for relative, content in levels.items():
        write_json(tmp_path / relative, {"RepetitionTime": 1.5, **content})
    (run,) = find_bold_runs(tmp_path)
    assert {key: run.metadata[key] for key in "ABCD"} == {
        "A": "dataset",
        "B": "subject",
        "C": "session",
        "D": "run",
    }
    assert (
        run.metadata_sources["C"] == tmp_path / "sub-01/ses-01/sub-01_ses-01_task-images_bold.json"
    )
    assert json.loads(run.metadata_sources["A"].read_text())["A"] == "dataset"


def test_older_fmriprep_names_and_resolutions(tmp_path):
    truth = write_bids_fmri(tmp_path, n_subjects=1, n_sessions=1, n_runs=2, n_train_per_run=5)
    write_fmriprep(tmp_path)
    func = tmp_path / "derivatives/fmriprep/sub-01/ses-01/func"
    legacy_motion = dict(zip(MOTION, ["X", "Y", "Z", "RotX", "RotY", "RotZ"], strict=True))
    for run in ("run-01", "run-02"):
        prefix = f"sub-01_ses-01_task-images_{run}"
        # fMRIPrep < 1.2 (BOLD5000's derivatives): space inside the bold name, no sidecar
        (func / f"{prefix}_space-T1w_desc-preproc_bold.nii.gz").rename(
            func / f"{prefix}_bold_space-T1w_preproc.nii.gz"
        )
        (func / f"{prefix}_space-T1w_desc-preproc_bold.json").unlink()
        (func / f"{prefix}_space-T1w_desc-brain_mask.nii.gz").rename(
            func / f"{prefix}_bold_space-T1w_brainmask.nii.gz"
        )
        confounds = pd.read_csv(func / f"{prefix}_desc-confounds_timeseries.tsv", sep="\t")
        (func / f"{prefix}_desc-confounds_timeseries.tsv").unlink()
        confounds.rename(columns=legacy_motion).to_csv(
            func / f"{prefix}_bold_confounds.tsv", sep="\t", index=False, na_rep="n/a"
        )
    config = FMRIPipelineConfig(input="fmriprep", roi_mask=None, zscore="none", confounds=["X"])
    subject = prepare_bids_fmri(tmp_path, config, progress=False).subjects["sub-01"]
    ijk = subject.voxel_ijk
    assert len(ijk) == 10 * 10 * 6  # the brainmask: the factory's box brain
    true = truth.betas["01"][:, ijk[:, 0], ijk[:, 1], ijk[:, 2]]
    assert np.corrcoef(subject.betas.ravel(), true.ravel())[0, 1] > 0.95


def test_fmriprep_confounds_regressors_name_and_resolution_choice(tmp_path):
    truth = write_bids_fmri(tmp_path, n_subjects=1, n_sessions=1, n_runs=1, n_train_per_run=5)
    write_fmriprep(tmp_path, space="MNI152NLin2009cAsym")
    func = tmp_path / "derivatives/fmriprep/sub-01/ses-01/func"
    prefix = "sub-01_ses-01_task-images_run-01"
    # fMRIPrep 1.2-20.1 named the confounds desc-confounds_regressors
    (func / f"{prefix}_desc-confounds_timeseries.tsv").rename(
        func / f"{prefix}_desc-confounds_regressors.tsv"
    )
    for path in list(func.glob("*_space-MNI152NLin2009cAsym_*")):
        for res in ("1", "2"):
            name = path.name.replace(
                "_space-MNI152NLin2009cAsym_", f"_space-MNI152NLin2009cAsym_res-{res}_"
            )
            shutil.copy(path, func / name)
        path.unlink()

    def prepare(space: str):
        config = FMRIPipelineConfig(
            input="fmriprep", space=space, roi_mask=None, zscore="none", confounds=["trans_x"]
        )
        return prepare_bids_fmri(tmp_path, config, progress=False)

    with pytest.raises(UserInputError, match=r"Several fMRIPrep bold files.*res-2"):
        prepare("MNI152NLin2009cAsym")
    prepared = prepare("MNI152NLin2009cAsym:res-2")
    subject = prepared.subjects["sub-01"]
    assert subject.space == "MNI152NLin2009cAsym"
    names = {path.name for path in prepared.source_files}
    assert f"{prefix}_space-MNI152NLin2009cAsym_res-2_desc-preproc_bold.nii.gz" in names
    assert f"{prefix}_desc-confounds_regressors.tsv" in names
    ijk = subject.voxel_ijk
    true = truth.betas["01"][:, ijk[:, 0], ijk[:, 1], ijk[:, 2]]
    assert np.corrcoef(subject.betas.ravel(), true.ravel())[0, 1] > 0.95
