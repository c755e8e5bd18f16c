"""The BIDS fMRI pipeline: GLM maths, recovery of known betas, trial bookkeeping, bad input."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from factories.bids import ROI_NAMES, bold_path, write_bids_fmri
from nilearn.glm.first_level import compute_regressor
from nilearn.glm.first_level.design_matrix import create_cosine_drift
from PIL import Image

from mindzoo.errors import UserInputError
from mindzoo.pipelines.fmri import (
    FMRIPipelineConfig,
    fit_single_trial_betas,
    prepare_bids_fmri,
    trial_regressors,
)


def _prepare(root: Path, **options) -> object:
    return prepare_bids_fmri(root, FMRIPipelineConfig(**options), progress=False)


def _true_betas(truth, subject: str, prepared) -> np.ndarray:
    """True betas of ``subject`` at the prepared voxels, ``[trial, voxel]``."""
    ijk = prepared.voxel_ijk
    return truth.betas[subject][:, ijk[:, 0], ijk[:, 1], ijk[:, 2]]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("bids")
    return root, write_bids_fmri(root)


@pytest.fixture(scope="module")
def lsa_raw(dataset):
    return _prepare(dataset[0], zscore="none")


# --- GLM maths -------------------------------------------------------------------------------


@pytest.mark.parametrize("hrf_model", ["glover", "spm"])
def test_trial_regressors_match_nilearn(hrf_model):
    tr, n_frames = 1.7, 90
    onsets = np.array([-3.0, 0.0, 10.37, 55.5, 140.2])
    durations = np.array([2.0, 0.0, 3.3, 10.0, 1.0])
    ours = trial_regressors(onsets, durations, n_frames, tr, hrf_model)
    frame_times = np.arange(n_frames) * tr
    for trial, (onset, duration) in enumerate(zip(onsets, durations, strict=True)):
        condition = np.array([[onset], [duration], [1.0]])
        theirs = compute_regressor(condition, hrf_model, frame_times)[0][:, 0]
        assert np.abs(ours[:, trial] - theirs).max() < 0.02 * np.abs(theirs).max()
        assert np.corrcoef(ours[:, trial], theirs)[0, 1] > 0.999


def test_lsa_and_lss_match_explicit_least_squares():
    rng = np.random.default_rng(3)
    n_frames, n_trials, n_voxels = 120, 10, 7
    design = trial_regressors(
        np.arange(n_trials) * 10.0 + 5.0 + rng.uniform(-2, 2, n_trials),
        np.full(n_trials, 2.0),
        n_frames,
        tr=1.5,
    )
    nuisance = create_cosine_drift(0.01, np.arange(n_frames) * 1.5)
    bold = rng.normal(size=(n_frames, n_voxels)).astype(np.float32) + 50.0

    lsa = fit_single_trial_betas(bold, design, nuisance, "lsa")
    full = np.linalg.lstsq(np.hstack([design, nuisance]), bold.astype(float), rcond=None)[0]
    np.testing.assert_allclose(lsa, full[:n_trials], atol=2e-3)

    lss = fit_single_trial_betas(bold, design, nuisance, "lss")
    for trial in range(n_trials):
        others = np.delete(design, trial, axis=1).sum(axis=1)
        model = np.column_stack([design[:, trial], others, nuisance])
        expected = np.linalg.lstsq(model, bold.astype(float), rcond=None)[0][0]
        np.testing.assert_allclose(lss[trial], expected, atol=2e-3)
    assert not np.allclose(lss, lsa, atol=1e-2)  # the two estimators really differ here


def test_lsa_refuses_trials_at_the_same_onset():
    design = trial_regressors(np.array([5.0, 5.0, 20.0]), np.full(3, 2.0), 40, tr=2.0)
    nuisance = np.ones((40, 1))
    with pytest.raises(np.linalg.LinAlgError):
        fit_single_trial_betas(np.zeros((40, 2), np.float32), design, nuisance, "lsa")


# --- recovery of the true betas ----------------------------------------------------------------


def test_lsa_recovers_true_betas(dataset, lsa_raw):
    _, truth = dataset
    for label in ("01", "02"):
        prepared = lsa_raw.subjects[f"sub-{label}"]
        true = _true_betas(truth, label, prepared)
        assert prepared.betas.dtype == np.float32
        assert prepared.betas.shape == true.shape
        assert np.corrcoef(prepared.betas.ravel(), true.ravel())[0, 1] > 0.95
        # and in scale: the design's unit boxcar plateau is 1, as in the simulator
        assert np.median(prepared.betas / np.where(true == 0, np.nan, true)) == pytest.approx(
            1.0, abs=0.1
        )


def test_lss_recovers_true_betas(dataset):
    root, truth = dataset
    prepared = _prepare(root, glm="lss", zscore="none").subjects["sub-01"]
    true = _true_betas(truth, "01", prepared)
    assert np.corrcoef(prepared.betas.ravel(), true.ravel())[0, 1] > 0.9


def test_trials_are_chronological_with_repetitions_splits_and_labels(dataset, lsa_raw):
    _, truth = dataset
    for label in ("01", "02"):
        trials = lsa_raw.subjects[f"sub-{label}"].trials
        expected = truth.trials[label]
        assert list(trials.columns) == [
            "stimulus_index",
            "stimulus_id",
            "session",
            "run",
            "repetition",
            "split",
            "label",
            "onset",
        ]
        # the response rows without a stimulus are not trials
        assert len(trials) == len(expected)
        assert trials["stimulus_id"].tolist() == expected["stim_id"].tolist()
        assert trials["session"].tolist() == expected["session"].tolist()
        assert trials["run"].tolist() == expected["run"].tolist()
        assert trials["repetition"].tolist() == expected["repetition"].tolist()
        assert trials["split"].tolist() == expected["split"].tolist()
        assert trials["label"].tolist() == expected["category"].tolist()
        np.testing.assert_allclose(trials["onset"], expected["onset"], atol=1e-3)
        ids = np.array(lsa_raw.stimulus_ids)
        assert (ids[trials["stimulus_index"]] == trials["stimulus_id"]).all()
    # 3 test images in each of 2 sessions x 2 runs
    assert truth.trials["01"].query("split == 'test'")["repetition"].max() == 3


def test_stimulus_table_and_images(dataset, lsa_raw):
    root, truth = dataset
    table = pd.read_csv(root / "stimuli" / "stimuli.tsv", sep="\t")
    assert lsa_raw.stimulus_ids == sorted(table["stim_id"])
    by_id = table.set_index("stim_id")
    assert lsa_raw.stimulus_labels == by_id.loc[lsa_raw.stimulus_ids, "category"].tolist()
    assert lsa_raw.stimulus_splits == by_id.loc[lsa_raw.stimulus_ids, "split"].tolist()
    assert lsa_raw.images.dtype == np.uint8 and lsa_raw.images.shape == (len(table), 8, 8, 3)
    fifth = np.asarray(
        Image.open(root / "stimuli" / by_id.at[lsa_raw.stimulus_ids[4], "stim_file"])
    )
    np.testing.assert_array_equal(lsa_raw.images[4], fifth)
    assert root / "stimuli" / "stimuli.tsv" in lsa_raw.source_files
    assert bold_path(root, "02", 2, 2) in lsa_raw.source_files


def test_stimulus_ids_as_stimulus_column_find_images_through_the_table(dataset, lsa_raw):
    root, _ = dataset
    by_id = _prepare(root, stimulus_column="stim_id", subjects=["01"], zscore="none")
    shown = lsa_raw.subjects["sub-01"].trials["stimulus_index"].unique()
    assert by_id.stimulus_ids == [lsa_raw.stimulus_ids[i] for i in sorted(shown)]
    np.testing.assert_array_equal(by_id.images, lsa_raw.images[sorted(shown)])


def test_session_zscore_uses_training_trials(dataset, lsa_raw):
    root, _ = dataset
    scored = _prepare(root, zscore="session").subjects["sub-01"]
    trials = scored.trials
    for session in (1, 2):
        train = ((trials["session"] == session) & (trials["split"] == "train")).to_numpy()
        np.testing.assert_allclose(scored.betas[train].mean(axis=0), 0.0, atol=1e-4)
        np.testing.assert_allclose(scored.betas[train].std(axis=0), 1.0, atol=1e-4)
        # the same affine map as the raw betas, with training-trial stats only
        raw = lsa_raw.subjects["sub-01"].betas
        rows = (trials["session"] == session).to_numpy()
        mean, std = raw[train].mean(axis=0), raw[train].std(axis=0)
        np.testing.assert_allclose(scored.betas[rows], (raw[rows] - mean) / std, atol=1e-4)


def test_voxels_coordinates_and_roi_labels(dataset, lsa_raw):
    _, truth = dataset
    for label in ("01", "02"):
        prepared = lsa_raw.subjects[f"sub-{label}"]
        ijk = prepared.voxel_ijk
        assert ijk.dtype == np.int32
        chosen = np.zeros(prepared.volume_shape, dtype=bool)
        chosen[tuple(ijk.T)] = True
        np.testing.assert_array_equal(chosen, truth.signal_roi[label])
        homogeneous = np.column_stack([ijk, np.ones(len(ijk))])
        expected_xyz = (truth.affine @ homogeneous.T).T[:, :3]
        np.testing.assert_allclose(prepared.voxel_xyz, expected_xyz, atol=1e-4)
        codes = truth.dseg[label][tuple(ijk.T)]
        assert prepared.roi_labels.tolist() == [ROI_NAMES[c] for c in codes]
        assert prepared.space == "native"
        np.testing.assert_allclose(prepared.affine, truth.affine, atol=1e-5)
    voxel_counts = {s: p.betas.shape[1] for s, p in lsa_raw.subjects.items()}
    assert voxel_counts == {s: int(truth.signal_roi[s[4:]].sum()) for s in voxel_counts}


def test_subject_selection(dataset):
    root, _ = dataset
    prepared = _prepare(root, subjects=["sub-02"], zscore="none")
    assert list(prepared.subjects) == ["sub-02"]
    # stimuli are those sub-02 saw: the shared test images and its own training images
    assert len(prepared.stimulus_ids) == prepared.subjects["sub-02"].trials["stimulus_id"].nunique()


# --- layouts ---------------------------------------------------------------------------------


def test_no_sessions_uncompressed_int16_layout(tmp_path):
    truth = write_bids_fmri(
        tmp_path, n_subjects=2, n_sessions=1, with_sessions=False, extension=".nii", dtype="int16"
    )
    assert not list(tmp_path.glob("sub-01/ses-*"))
    image = nib.load(bold_path(tmp_path, "01", None, 1))
    assert image.get_data_dtype() == np.int16 and image.dataobj.slope != 1.0
    prepared = _prepare(tmp_path, zscore="none").subjects["sub-01"]
    assert set(prepared.trials["session"]) == {1}
    assert prepared.trials["run"].tolist() == truth.trials["01"]["run"].tolist()
    true = _true_betas(truth, "01", prepared)
    assert np.corrcoef(prepared.betas.ravel(), true.ravel())[0, 1] > 0.95


def test_split_inferred_from_stimuli_every_subject_saw(dataset, lsa_raw):
    root, _ = dataset
    inferred = _prepare(root, split_column=None, zscore="none")
    assert inferred.stimulus_splits == lsa_raw.stimulus_splits
    assert inferred.stimulus_splits.count("test") == 3


def test_sidecar_inheritance(tmp_path):
    write_bids_fmri(tmp_path, n_subjects=1, n_sessions=1, n_runs=1)
    top = tmp_path / "task-images_bold.json"
    run_json = bold_path(tmp_path, "01", 1, 1).parent / "sub-01_ses-01_task-images_run-01_bold.json"
    # the per-run sidecar overrides a wrong top-level TR
    top.write_text(json.dumps({"TaskName": "images", "RepetitionTime": 9.9}))
    assert _prepare(tmp_path).subjects["sub-01"].betas.shape[0] == 9
    # without a per-run sidecar the top-level one applies, and its TR is checked
    run_json.unlink()
    with pytest.raises(UserInputError, match="task-images_bold.json"):
        _prepare(tmp_path)
    top.write_text(json.dumps({"TaskName": "images", "RepetitionTime": 1.5}))
    assert _prepare(tmp_path).subjects["sub-01"].betas.shape[0] == 9


def test_task_choice(tmp_path):
    write_bids_fmri(tmp_path, n_subjects=1, n_sessions=1, n_runs=1)
    func = bold_path(tmp_path, "01", 1, 1).parent
    for path in list(func.glob("*task-images*")):
        shutil.copy(path, func / path.name.replace("task-images", "task-words"))
    with pytest.raises(UserInputError, match="images, words"):
        _prepare(tmp_path)
    with pytest.raises(UserInputError, match="'faces'"):
        _prepare(tmp_path, task="faces")
    prepared = _prepare(tmp_path, task="words", trial_types=["image"])
    assert prepared.subjects["sub-01"].betas.shape[0] == 9


def test_epi_mask_without_roi_derivatives(dataset):
    root, truth = dataset
    prepared = _prepare(root, roi_mask=None, subjects=["01"], zscore="none").subjects["sub-01"]
    assert set(prepared.roi_labels) == {"brain"}
    assert prepared.betas.shape[1] > 0
    true = _true_betas(truth, "01", prepared)
    assert np.corrcoef(prepared.betas.ravel(), true.ravel())[0, 1] > 0.95


def test_confounds_are_regressed_out(tmp_path):
    truth = write_bids_fmri(tmp_path, n_subjects=1, n_sessions=1, n_runs=2)
    rng = np.random.default_rng(5)
    for run in (1, 2):
        path = bold_path(tmp_path, "01", 1, run)
        image = nib.load(path)
        data = image.get_fdata(dtype=np.float32)
        motion = rng.normal(size=data.shape[3]).cumsum()
        data += 5.0 * motion[None, None, None, :] * rng.normal(size=data.shape[:3])[..., None]
        nib.save(nib.Nifti1Image(data, image.affine, image.header), path)
        pd.DataFrame({"trans_x": motion, "other": rng.normal(size=len(motion))}).to_csv(
            path.parent / f"sub-01_ses-01_task-images_run-{run:02d}_desc-confounds_timeseries.tsv",
            sep="\t",
            index=False,
        )

    def recovery(**options) -> float:
        prepared = _prepare(tmp_path, zscore="none", **options).subjects["sub-01"]
        true = _true_betas(truth, "01", prepared)
        return np.corrcoef(prepared.betas.ravel(), true.ravel())[0, 1]

    assert recovery(confounds=["trans_x"]) > 0.95
    assert recovery() < 0.9
    with pytest.raises(UserInputError, match="rot_z"):
        _prepare(tmp_path, confounds=["rot_z"])


def test_image_size_resizes_stimuli(dataset):
    root, _ = dataset
    prepared = _prepare(root, subjects=["01"], image_size=4, zscore="none")
    assert prepared.images.shape[1:] == (4, 4, 3)


def test_config_rejects_unknown_keys_and_values():
    with pytest.raises(ValueError, match="bold_column"):
        FMRIPipelineConfig(bold_column="x")
    with pytest.raises(ValueError, match="hrf_model"):
        FMRIPipelineConfig(hrf_model="fir")


# --- bad input -------------------------------------------------------------------------------

RUN = "sub-01_ses-01_task-images_run-01"


def _func(root: Path) -> Path:
    return root / "sub-01" / "ses-01" / "func"


def _edit_events(root: Path, edit) -> None:
    path = _func(root) / f"{RUN}_events.tsv"
    edit(pd.read_csv(path, sep="\t")).to_csv(path, sep="\t", index=False, na_rep="n/a")


def _make_3d(root: Path) -> None:
    path = bold_path(root)
    image = nib.load(path)
    nib.save(image.slicer[..., 0], path)


def _put_nan(root: Path) -> None:
    path = bold_path(root)
    image = nib.load(path)
    data = image.get_fdata(dtype=np.float32)
    data[5, 5, 3, 10] = np.nan
    nib.save(nib.Nifti1Image(data, image.affine, image.header), path)


def _tr_mismatch(root: Path) -> None:
    (_func(root) / f"{RUN}_bold.json").write_text(json.dumps({"RepetitionTime": 2.0}))


def _mask_shape(root: Path) -> None:
    path = root / "derivatives/masks/sub-01/func/sub-01_space-native_dseg.nii.gz"
    image = nib.load(path)
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj)[:10], image.affine), path)


def _mask_affine(root: Path) -> None:
    path = root / "derivatives/masks/sub-01/func/sub-01_space-native_desc-brain_mask.nii.gz"
    image = nib.load(path)
    shifted = image.affine.copy()
    shifted[0, 3] += 2.0
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), shifted), path)


def _missing_stimulus(root: Path) -> None:
    events = pd.read_csv(_func(root) / f"{RUN}_events.tsv", sep="\t")
    (root / "stimuli" / events["stim_file"].dropna().iloc[-1]).unlink()


BAD_INPUTS = {
    "3d-bold": (_make_3d, {}, f"{RUN}_bold.nii.gz"),
    "events-missing": (lambda r: (_func(r) / f"{RUN}_events.tsv").unlink(), {}, f"{RUN}_events"),
    "no-onset": (lambda r: _edit_events(r, lambda e: e.drop(columns="onset")), {}, "onset"),
    "no-duration": (
        lambda r: _edit_events(r, lambda e: e.drop(columns="duration")),
        {},
        "duration",
    ),
    "no-stimulus-column": (lambda r: None, {"stimulus_column": "picture"}, f"{RUN}_events.tsv"),
    "bad-onset": (lambda r: _edit_events(r, lambda e: e.assign(onset="soon")), {}, "soon"),
    "onset-after-end": (
        lambda r: _edit_events(r, lambda e: e.assign(onset=e.onset + 900)),
        {},
        f"{RUN}_bold.nii.gz",
    ),
    "tr-mismatch": (_tr_mismatch, {}, f"{RUN}_bold.json"),
    "nan": (_put_nan, {}, f"{RUN}_bold.nii.gz"),
    "unknown-subject": (lambda r: None, {"subjects": ["07"]}, "sub-07"),
    "mask-shape": (_mask_shape, {}, "sub-01_space-native_dseg.nii.gz"),
    "mask-affine": (_mask_affine, {}, "sub-01_space-native_desc-brain_mask.nii.gz"),
    "missing-stimulus": (_missing_stimulus, {}, f"{RUN}_events.tsv"),
    "unknown-trial-type": (lambda r: None, {"trial_types": ["face"]}, "sub-01"),
    "mask-folder-missing": (lambda r: None, {"roi_mask": "derivatives/nothing"}, "nothing"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_one_line_naming_the_file(tmp_path, case):
    write_bids_fmri(tmp_path, n_subjects=1, n_sessions=1, n_runs=2, n_train_per_run=3, seed=1)
    corrupt, options, named = BAD_INPUTS[case]
    corrupt(tmp_path)
    with pytest.raises(UserInputError) as caught:
        _prepare(tmp_path, **options)
    message = str(caught.value)
    assert named in message
    assert "\n" not in message
    assert ";" in message  # the part after it says how to fix the input


def test_missing_stimulus_message_names_the_image(tmp_path):
    write_bids_fmri(tmp_path, n_subjects=1, n_sessions=1, n_runs=1, n_train_per_run=3)
    events = pd.read_csv(_func(tmp_path) / f"{RUN}_events.tsv", sep="\t")
    name = events["stim_file"].dropna().iloc[0]
    (tmp_path / "stimuli" / name).unlink()
    with pytest.raises(UserInputError, match=name):
        _prepare(tmp_path)


def test_mask_mismatch_says_to_resample(tmp_path):
    write_bids_fmri(tmp_path, n_subjects=1, n_sessions=1, n_runs=1, n_train_per_run=3)
    _mask_affine(tmp_path)
    with pytest.raises(UserInputError, match="resample the mask to the bold grid"):
        _prepare(tmp_path)


# --- masks on another grid ---------------------------------------------------------------------

MASK = "derivatives/masks/sub-01/func/sub-01_space-native_desc-brain_mask.nii.gz"


def _upsampled_mask(root: Path, factor: int = 3, shift_mm: float = 0.0) -> np.ndarray:
    """Rewrite the brain mask on a grid ``factor`` times finer (same space); return it."""
    path = root / MASK
    image = nib.load(path)
    fine = np.asanyarray(image.dataobj)
    for axis in range(3):
        fine = np.repeat(fine, factor, axis=axis)
    # fine voxel f has its centre at coarse voxel (f - 1) / factor: coarse centres hit f = 3i+1
    scale = np.diag([1 / factor, 1 / factor, 1 / factor, 1.0])
    scale[:3, 3] = -(factor - 1) / (2 * factor)
    affine = image.affine @ scale
    affine[:3, 3] += shift_mm
    nib.save(nib.Nifti1Image(fine, affine), path)
    return np.asanyarray(image.dataobj)


def test_mask_on_a_finer_grid_is_resampled_only_when_asked(tmp_path):
    write_bids_fmri(tmp_path, n_subjects=1, n_sessions=1, n_runs=1, n_train_per_run=3)
    native = _prepare(tmp_path, zscore="none").subjects["sub-01"]
    _upsampled_mask(tmp_path, shift_mm=0.2)
    with pytest.raises(UserInputError) as caught:
        _prepare(tmp_path)
    message = str(caught.value)
    assert "voxel size 0.833x0.833x1 vs 2.5x2.5x3 mm" in message
    assert "mask_resample=nearest" in message and "\n" not in message
    resampled = _prepare(tmp_path, zscore="none", mask_resample="nearest").subjects["sub-01"]
    np.testing.assert_array_equal(resampled.voxel_ijk, native.voxel_ijk)
    np.testing.assert_array_equal(resampled.betas, native.betas)
    assert resampled.roi_labels.tolist() == native.roi_labels.tolist()


def test_mask_in_another_space_is_refused_even_with_resampling(tmp_path):
    write_bids_fmri(tmp_path, n_subjects=1, n_sessions=1, n_runs=1, n_train_per_run=3)
    _upsampled_mask(tmp_path, shift_mm=60.0)
    with pytest.raises(UserInputError, match=r"keeps 0% of its volume.*same space"):
        _prepare(tmp_path, mask_resample="nearest")


# --- sessions, splits, labels, stimuli ------------------------------------------------------------


def test_session_limit_keeps_session_numbers(dataset, lsa_raw):
    root, _ = dataset
    second = _prepare(root, sessions=["ses-02"], zscore="none")
    for subject, prepared in second.subjects.items():
        trials = prepared.trials
        full = lsa_raw.subjects[subject]
        rows = (full.trials["session"] == 2).to_numpy()
        assert set(trials["session"]) == {2}
        assert trials["stimulus_id"].tolist() == full.trials["stimulus_id"][rows].tolist()
        np.testing.assert_allclose(prepared.betas, full.betas[rows], atol=1e-5)
    both = _prepare(root, sessions=["0*"], subjects=["01"], zscore="none").subjects["sub-01"]
    np.testing.assert_array_equal(both.betas, lsa_raw.subjects["sub-01"].betas)


def test_split_values_and_session_splits(tmp_path):
    write_bids_fmri(tmp_path, n_subjects=1, n_sessions=2, n_runs=1, n_train_per_run=3)
    for path in tmp_path.glob("sub-01/ses-*/func/*_events.tsv"):
        events = pd.read_csv(path, sep="\t")
        events["phase"] = events["split"].map({"train": "exp", "test": "holdout"})
        events.to_csv(path, sep="\t", index=False, na_rep="n/a")
    mapped = _prepare(
        tmp_path, split_column="phase", split_values={"exp": "train", "holdout": "test"}
    )
    reference = _prepare(tmp_path)
    assert mapped.stimulus_splits == reference.stimulus_splits
    with pytest.raises(UserInputError, match=r"Unknown split 'exp'.*split_values"):
        _prepare(tmp_path, split_column="phase")
    # the shared test images are shown in both sessions: a split per session contradicts them
    with pytest.raises(UserInputError, match=r"'stim-0000\d.png' has several split values"):
        _prepare(tmp_path, session_splits={"01": "train", "02": "test"})
    with pytest.raises(UserInputError, match="ses-02.*matches no session_splits pattern"):
        _prepare(tmp_path, session_splits={"01": "train"})
    # an exact label beats a pattern, whatever the order; two patterns that disagree are refused
    only_second = {"sessions": ["02"], "split_column": None}
    for splits in ({"0*": "train", "02": "test"}, {"02": "test", "0*": "train"}):
        prepared = _prepare(tmp_path, session_splits=splits, **only_second)
        assert set(prepared.stimulus_splits) == {"test"}
    with pytest.raises(UserInputError, match=r"ses-02 matches session_splits patterns.*train, val"):
        _prepare(tmp_path, session_splits={"0*": "train", "*2": "val"}, **only_second)


def test_label_regex_names_labels_from_stimulus_names(dataset):
    root, _ = dataset
    prepared = _prepare(root, subjects=["01"], label_column=None, label_regex=r"stim-(\d)")
    assert set(prepared.stimulus_labels) == {"0"}
    with pytest.raises(
        UserInputError, match=re.escape("label_regex 'img-([0-9]+)' does not match stimulus")
    ):
        _prepare(root, subjects=["01"], label_column=None, label_regex="img-([0-9]+)")


def test_a_named_label_column_must_exist_the_default_may_not(tmp_path):
    write_bids_fmri(tmp_path, n_subjects=1, n_sessions=1, n_runs=1, n_train_per_run=3)
    with pytest.raises(UserInputError, match="label_column 'kind' is in no events file"):
        _prepare(tmp_path, label_column="kind")
    for path in [*tmp_path.rglob("*_events.tsv"), tmp_path / "stimuli" / "stimuli.tsv"]:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
        table.drop(columns="category").to_csv(path, sep="\t", index=False)
    # every default written out, as catalog settings arrive: the default column may be absent
    config = FMRIPipelineConfig(**FMRIPipelineConfig().model_dump())
    assert "label_column" in config.model_fields_set
    prepared = prepare_bids_fmri(tmp_path, config, progress=False)
    assert prepared.stimulus_labels == [""] * 6


def test_stimuli_dir_and_preparing_without_images(tmp_path, dataset):
    root, _ = dataset
    elsewhere = tmp_path / "pictures"
    shutil.copytree(root / "stimuli", elsewhere / "nested")
    moved = _prepare(root, subjects=["01"], stimuli_dir=str(elsewhere), zscore="none")
    here = _prepare(root, subjects=["01"], zscore="none")
    np.testing.assert_array_equal(moved.images, here.images)
    assert all(elsewhere in path.parents for path in moved.source_files if path.suffix == ".png")
    (elsewhere / "nested" / "stim-00002.png").unlink()
    with pytest.raises(
        UserInputError,
        match=r"1 of 27 stimulus images are missing \(stim-00002.png, first named in sub-01",
    ):
        _prepare(root, subjects=["01"], stimuli_dir=str(elsewhere))
    with pytest.raises(UserInputError, match=rf"27 of 27 .*looked below {tmp_path}/nowhere"):
        _prepare(root, subjects=["01"], stimuli_dir=str(tmp_path / "nowhere"))
    config = FMRIPipelineConfig(subjects=["01"], stimuli_dir=str(tmp_path / "nowhere"))
    blind = prepare_bids_fmri(root, config, progress=False, with_images=False)
    assert blind.images is None and blind.stimulus_ids == here.stimulus_ids


def test_duplicate_image_names_below_stimuli_dir_are_refused(tmp_path, dataset):
    root, _ = dataset
    for folder in ("a", "b"):
        shutil.copytree(root / "stimuli", tmp_path / folder)
    with pytest.raises(UserInputError, match=r"Several images .* match stimulus 'stim-0000\d.png'"):
        _prepare(root, subjects=["01"], stimuli_dir=str(tmp_path))


def test_annexed_file_without_content_is_named(tmp_path):
    write_bids_fmri(tmp_path, n_subjects=1, n_sessions=1, n_runs=1, n_train_per_run=3)
    path = bold_path(tmp_path)
    path.unlink()
    path.symlink_to(tmp_path / ".git" / "annex" / "objects" / "MD5E-s1--0.nii.gz")
    with pytest.raises(UserInputError, match=rf"{path.name} is a link to content.*datalad get"):
        _prepare(tmp_path)


NEW_OPTION_BAD_INPUTS = {
    "unknown-session": ({"sessions": ["07"]}, "ses-01, ses-02"),
    "unknown-task-in-list": ({"task": ["images", "faces"]}, "'faces'"),
    "trial-type-column": ({"trial_types": ["image"], "trial_type_column": "kind"}, "kind"),
    "fmriprep-missing": ({"input": "fmriprep"}, "derivatives/fmriprep"),
    "stimuli-dir-missing": ({"stimuli_dir": "/nonexistent/images"}, "/nonexistent/images"),
}


@pytest.mark.parametrize("case", list(NEW_OPTION_BAD_INPUTS))
def test_new_options_bad_input_one_line(dataset, case):
    root, _ = dataset
    options, named = NEW_OPTION_BAD_INPUTS[case]
    with pytest.raises(UserInputError) as caught:
        _prepare(root, **options)
    message = str(caught.value)
    assert named in message and "\n" not in message and ";" in message


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"label_regex": "(unclosed"}, "label_regex"),
        ({"label_regex": "no-group"}, r"one \(group\)"),
        ({"split_values": {"exp": "training-set"}}, "'training-set'"),
        ({"session_splits": {"01": "later"}}, "'later'"),
        ({"sessions": []}, "sessions"),
        ({"task": []}, "task"),
        ({"input": "spm"}, "input"),
        ({"mask_resample": "linear"}, "mask_resample"),
    ],
)
def test_config_rejects_bad_new_options(options, named):
    with pytest.raises(ValueError, match=named):
        FMRIPipelineConfig(**options)


def test_config_strips_bids_prefixes_and_keeps_old_configs_valid():
    config = FMRIPipelineConfig(
        task="task-images", sessions=["ses-01"], space="space-T1w", split_values={"x": "Training"}
    )
    assert (config.tasks, config.sessions, config.space) == (["images"], ["01"], "T1w")
    assert config.split_values == {"x": "train"}
    assert FMRIPipelineConfig().input == "raw" and FMRIPipelineConfig().tasks is None
