"""NSD from a local mirror: values, trial bookkeeping, conventions and bad input, on a fake
mirror in NSD's real layout and formats (tests/factories/nsd.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from factories.nsd import EXPDESIGN, STIM_INFO, STIMULI, betas_path, roi_path, write_nsd_mirror
from PIL import Image
from pydantic import ValidationError

from mindzoo.datasets.store import TensorStore
from mindzoo.errors import UserInputError
from mindzoo.pipelines.nsd import NSDConfig, prepare_nsd_mirror
from mindzoo.pipelines.prepare import prepare_dataset

SESSIONS = (1, 2)  # the sessions with betas in the default mirror (the design has 3)


def _prepare(root: Path, **options):
    return prepare_nsd_mirror(root, NSDConfig(**options), progress=False)


def _expected_trials(truth, subject: int, sessions=SESSIONS) -> pd.DataFrame:
    trials = truth.trials[subject]
    return trials[trials["session"].isin(sessions)].reset_index(drop=True)


def _raw_psc(truth, subject: int, ijk: np.ndarray, sessions=SESSIONS) -> np.ndarray:
    """The stored int16 betas / 300 at ``ijk``, ``[trial, voxel]`` in session order."""
    i, j, k = ijk.T
    return np.concatenate(
        [truth.volume_betas[subject][s][i, j, k].T / 300.0 for s in sessions]
    ).astype(np.float32)


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    root = tmp_path_factory.mktemp("nsd")
    return root, write_nsd_mirror(root)


@pytest.fixture(scope="module")
def raw(mirror):
    return _prepare(mirror[0], zscore="none")


@pytest.fixture(scope="module")
def scored(mirror):
    return _prepare(mirror[0])


# --- betas and voxels ------------------------------------------------------------------------


def test_betas_are_the_stored_int16_over_300_at_the_roi_voxels(mirror, raw):
    root, truth = mirror
    assert sorted(raw.subjects) == ["sub-01", "sub-02"]
    for subject in (1, 2):
        data = raw.subjects[f"sub-{subject:02d}"]
        expected_ijk = np.argwhere(truth.roi[subject] == 1)
        np.testing.assert_array_equal(data.voxel_ijk, expected_ijk)
        homogeneous = np.column_stack([expected_ijk, np.ones(len(expected_ijk))])
        np.testing.assert_allclose(data.voxel_xyz, (homogeneous @ truth.affine.T)[:, :3], atol=1e-4)
        np.testing.assert_allclose(data.affine, truth.affine)
        assert data.volume_shape == truth.roi[subject].shape
        assert data.space == "func1pt8mm"
        assert set(data.roi_labels) == {"nsdgeneral"}
        assert data.betas.dtype == np.float32
        np.testing.assert_allclose(data.betas, _raw_psc(truth, subject, expected_ijk), rtol=1e-6)


def test_nifti_and_hdf5_betas_are_identical(mirror, scored):
    from_hdf5 = _prepare(mirror[0], betas_format="hdf5")
    for subject, data in scored.subjects.items():
        np.testing.assert_array_equal(from_hdf5.subjects[subject].betas, data.betas)
        np.testing.assert_array_equal(from_hdf5.subjects[subject].voxel_ijk, data.voxel_ijk)
        pd.testing.assert_frame_equal(from_hdf5.subjects[subject].trials, data.trials)


def test_zscore_per_session_with_training_trial_statistics(raw, scored):
    for subject, data in scored.subjects.items():
        original = raw.subjects[subject].betas.astype(np.float64)
        trials = data.trials
        for session in SESSIONS:
            train = (trials["session"] == session).to_numpy() & (
                trials["split"] == "train"
            ).to_numpy()
            test = (trials["session"] == session).to_numpy() & (
                trials["split"] == "test"
            ).to_numpy()
            assert train.sum() > 10 and test.sum() > 0
            np.testing.assert_allclose(data.betas[train].mean(axis=0), 0.0, atol=1e-5)
            np.testing.assert_allclose(data.betas[train].std(axis=0), 1.0, atol=1e-5)
            mean, std = original[train].mean(axis=0), original[train].std(axis=0)
            np.testing.assert_allclose(data.betas[test], (original[test] - mean) / std, atol=1e-5)
            # Test trials do not set the statistics: their own mean is not zero.
            assert np.abs(data.betas[test].mean(axis=0)).max() > 0.1


# --- trials, stimuli, splits -----------------------------------------------------------------


def test_trial_table_follows_the_nsd_design(mirror, scored):
    root, truth = mirror
    all_ids = set()
    for subject in (1, 2):
        table = scored.subjects[f"sub-{subject:02d}"].trials
        expected = _expected_trials(truth, subject)
        np.testing.assert_array_equal(table["nsd_trial"], expected["nsd_trial"])
        np.testing.assert_array_equal(table["session"], expected["session"])
        np.testing.assert_array_equal(table["nsd_id"], expected["nsd_id"])
        np.testing.assert_array_equal(table["repetition"], expected["repetition"])
        assert table["stimulus_id"].tolist() == [f"nsd-{n:05d}" for n in expected["nsd_id"]]
        assert table["split"].tolist() == ["test" if s else "train" for s in expected["shared"]]
        ids = [scored.stimulus_ids[i] for i in table["stimulus_index"]]
        assert ids == table["stimulus_id"].tolist()
        all_ids |= set(expected["nsd_id"])
        expected_runs = expected["run"] if subject == 1 else np.zeros(len(expected))
        np.testing.assert_array_equal(table["run"], expected_runs)  # responses.tsv: subj01 only
    assert scored.stimulus_ids == [f"nsd-{n:05d}" for n in sorted(all_ids)]
    shared = set(truth.shared_ids)
    assert scored.stimulus_splits == ["test" if n in shared else "train" for n in sorted(all_ids)]
    assert scored.stimulus_labels == [""] * len(all_ids)
    read = {path.relative_to(root).as_posix() for path in scored.source_files}
    assert {EXPDESIGN, STIM_INFO, STIMULI, roi_path(1), betas_path(2, 2)} <= read


def test_repetition_indices_agree_with_the_stimulus_info_csv(mirror, scored):
    root, _ = mirror
    info = pd.read_csv(root / STIM_INFO).set_index("nsdId")
    for subject in (1, 2):
        table = scored.subjects[f"sub-{subject:02d}"].trials
        assert set(table["repetition"]) == {0, 1, 2}
        for row in table.itertuples():
            assert info.at[row.nsd_id, f"subject{subject}_rep{row.repetition}"] == row.nsd_trial


def test_sessions_and_subjects_limit_keeps_nsd_repetitions_and_session_scores(mirror, scored):
    root, truth = mirror
    only = _prepare(root, subjects=["subj02"], sessions=["ses-02"])
    assert list(only.subjects) == ["sub-02"]
    table = only.subjects["sub-02"].trials
    expected = _expected_trials(truth, 2, sessions=(2,))
    np.testing.assert_array_equal(table["nsd_trial"], expected["nsd_trial"])
    np.testing.assert_array_equal(table["repetition"], expected["repetition"])
    assert table["repetition"].max() >= 1  # second viewings keep NSD's index, not 0
    full = scored.subjects["sub-02"]
    in_session_2 = (full.trials["session"] == 2).to_numpy()
    np.testing.assert_allclose(only.subjects["sub-02"].betas, full.betas[in_session_2], atol=1e-6)


def test_trial_count_per_session_is_read_from_the_files(tmp_path):
    truth = write_nsd_mirror(tmp_path, trials_per_session=20, mat_v73=True, seed=5)
    prepared = _prepare(tmp_path, load_images=False)
    table = prepared.subjects["sub-01"].trials
    expected = _expected_trials(truth, 1)
    assert len(table) == 40
    np.testing.assert_array_equal(table["session"], (table["nsd_trial"] - 1) // 20 + 1)
    np.testing.assert_array_equal(table["nsd_id"], expected["nsd_id"])
    np.testing.assert_array_equal(table["repetition"], expected["repetition"])


# --- conventions -----------------------------------------------------------------------------


def test_mindeye1_averaged_convention(mirror, scored):
    root, truth = mirror
    averaged = _prepare(root, convention="mindeye1-averaged")
    for subject in (1, 2):
        single = scored.subjects[f"sub-{subject:02d}"]
        data = averaged.subjects[f"sub-{subject:02d}"]
        counts = single.trials.groupby("nsd_id").size()
        shared = counts.index.isin(truth.shared_ids)
        assert (counts[shared] == 3).any() and (counts[shared] < 3).any()
        expected_test = set(counts.index[shared & (counts == 3).to_numpy()])
        table = data.trials
        assert set(table.loc[table["split"] == "test", "nsd_id"]) == expected_test
        assert set(table.loc[table["split"] == "train", "nsd_id"]) == set(counts.index[~shared])
        assert table["nsd_id"].is_unique and (table["repetition"] == 0).all()
        for row, (nsd_id, n_repeats, session) in enumerate(
            table[["nsd_id", "n_repeats", "session"]].itertuples(index=False)
        ):
            rows = (single.trials["nsd_id"] == nsd_id).to_numpy()
            assert n_repeats == rows.sum()
            assert session == single.trials.loc[rows, "session"].iloc[0]
            np.testing.assert_allclose(data.betas[row], single.betas[rows].mean(axis=0), atol=1e-5)
    kept = {n for d in averaged.subjects.values() for n in d.trials["nsd_id"]}
    assert averaged.stimulus_ids == [f"nsd-{n:05d}" for n in sorted(kept)]


def test_fsaverage_surface_betas(mirror):
    root, truth = mirror
    surface = _prepare(root, space="fsaverage", zscore="none")
    lh, rh = (np.flatnonzero(truth.surface_roi[h]) for h in (0, 1))
    for subject in (1, 2):
        data = surface.subjects[f"sub-{subject:02d}"]
        expected = np.concatenate(
            [
                np.hstack(
                    [
                        truth.surface_betas[subject][s][0][lh].T,
                        truth.surface_betas[subject][s][1][rh].T,
                    ]
                )
                for s in SESSIONS
            ]
        )
        np.testing.assert_array_equal(data.betas, expected)  # float .mgh: no / 300
        np.testing.assert_array_equal(data.voxel_ijk[:, 0], [0] * len(lh) + [1] * len(rh))
        np.testing.assert_array_equal(data.voxel_ijk[:, 1], np.concatenate([lh, rh]))
        np.testing.assert_array_equal(
            data.voxel_xyz,
            np.concatenate([truth.surface_positions[0][lh], truth.surface_positions[1][rh]]),
        )
        assert data.volume_shape == (2, truth.surface_roi.shape[1], 1)
        assert data.space == "fsaverage"
    no_positions = _prepare(root, space="fsaverage", surface_coordinates=None, load_images=False)
    assert np.isnan(no_positions.subjects["sub-01"].voxel_xyz).all()


# --- images and labels -----------------------------------------------------------------------


def test_images_are_the_imgbrick_rows_of_the_stimuli(mirror, scored):
    root, truth = mirror
    nsd_ids = [int(s.removeprefix("nsd-")) for s in scored.stimulus_ids]
    np.testing.assert_array_equal(scored.images, truth.images[nsd_ids])
    small = _prepare(root, image_size=5, subjects=[1], sessions=[1])
    first = int(small.stimulus_ids[0].removeprefix("nsd-"))
    resized = Image.fromarray(truth.images[first]).resize((5, 5), Image.Resampling.BICUBIC)
    assert small.images.shape == (len(small.stimulus_ids), 5, 5, 3)
    np.testing.assert_array_equal(small.images[0], np.asarray(resized))


def test_without_images_the_stimulus_file_is_not_needed(mirror, tmp_path):
    root = shutil.copytree(mirror[0], tmp_path / "nsd")
    (root / STIMULI).unlink()
    prepared = _prepare(root, load_images=False)
    assert prepared.images is None and len(prepared.stimulus_ids) > 0


def test_labels_from_a_stimulus_info_column(mirror):
    root, _ = mirror
    labelled = _prepare(root, label_column="cocoId", load_images=False)
    info = pd.read_csv(root / STIM_INFO).set_index("nsdId")
    nsd_ids = [int(s.removeprefix("nsd-")) for s in labelled.stimulus_ids]
    assert labelled.stimulus_labels == [str(info.at[n, "cocoId"]) for n in nsd_ids]
    table = labelled.subjects["sub-01"].trials
    assert table["label"].tolist() == [str(info.at[n, "cocoId"]) for n in table["nsd_id"]]


# --- through the catalog entry ------------------------------------------------------------


def test_prepare_nsd_catalog_entry_writes_the_store(mirror, scored, tmp_path):
    root, _ = mirror
    result = prepare_dataset(
        "nsd",
        tmp_path / "store",
        source=root,
        overrides=["features=[pixels]", "pipeline.image_size=8"],
        subjects=["02"],
        sessions=["1", "2"],
        progress=False,
    )
    store = TensorStore.open(result.version_dir)
    assert store.subjects == ["sub-02"]
    expected = scored.subjects["sub-02"]
    np.testing.assert_allclose(store.signals("sub-02")[...], expected.betas, atol=1e-6)
    trials = store.trials("sub-02")
    for column in ("stimulus_id", "session", "repetition", "split", "nsd_trial"):
        assert trials[column].tolist() == expected.trials[column].tolist()
    assert store.images().shape[1:] == (8, 8, 3)
    axis, attrs = store.axis("sub-02")
    np.testing.assert_array_equal(axis["ijk"], expected.voxel_ijk)
    assert attrs["space"] == "func1pt8mm"
    again = prepare_dataset(
        "nsd",
        tmp_path / "store",
        source=root,
        overrides=["features=[pixels]", "pipeline.image_size=8"],
        subjects=["02"],
        sessions=["1", "2"],
        progress=False,
    )
    assert again.cache_hit


def test_failed_nsd_prepare_leaves_no_store(mirror, tmp_path):
    root = shutil.copytree(mirror[0], tmp_path / "nsd")
    (root / roi_path(1)).unlink()
    with pytest.raises(UserInputError, match=roi_path(1)):
        prepare_dataset("nsd", tmp_path / "store", source=root, overrides=["features=[]"])
    assert not (tmp_path / "store").exists()


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("missing", "options"),
    [
        (EXPDESIGN, {}),
        (STIM_INFO, {}),
        (STIMULI, {}),
        (roi_path(1), {}),
        (betas_path(1, 2), {"sessions": [1, 2]}),
        (betas_path(2, 2, "hdf5"), {"betas_format": "hdf5", "sessions": [1, 2]}),
        ("nsddata/freesurfer/fsaverage/label/rh.nsdgeneral.mgz", {"space": "fsaverage"}),
        ("nsddata/freesurfer/fsaverage/surf/lh.white", {"space": "fsaverage"}),
    ],
)
def test_missing_file_names_the_nsd_path(mirror, tmp_path, missing, options):
    root = shutil.copytree(mirror[0], tmp_path / "nsd")
    (root / missing).unlink()
    with pytest.raises(UserInputError) as error:
        _prepare(root, **options)
    message = str(error.value)
    assert missing in message and "\n" not in message


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (
            {"subjects": [9]},
            "Unknown NSD subject 9: nsddata/experiments/nsd/nsd_expdesign.mat has subjects 1-8",
        ),
        ({"subjects": [3]}, betas_path(3, 1)),
        ({"sessions": [4]}, "Session 4 of subject 1 is out of range"),
        ({"sessions": [2, 3]}, betas_path(1, 3)),
        ({"label_column": "nope"}, "has no column 'nope'"),
    ],
)
def test_bad_subjects_sessions_and_columns(mirror, options, expected):
    with pytest.raises(UserInputError, match="^[^\n]*$") as error:
        _prepare(mirror[0], **options)
    assert expected in str(error.value)


@pytest.mark.parametrize("extension", ["nii.gz", "hdf5"])
def test_truncated_betas_file_is_named(mirror, tmp_path, extension):
    root = shutil.copytree(mirror[0], tmp_path / "nsd")
    path = root / betas_path(2, 2, extension)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserInputError, match="^[^\n]*$") as error:
        _prepare(root, betas_format="nifti" if extension == "nii.gz" else "hdf5")
    assert f"Cannot read {path}" in str(error.value)


def test_stimulus_info_from_another_release_is_refused(mirror, tmp_path):
    root = shutil.copytree(mirror[0], tmp_path / "nsd")
    info = pd.read_csv(root / STIM_INFO, index_col=0)
    shown = info.index[info["subject1_rep0"] > 0]
    info.loc[shown[0], "subject1_rep0"] += 1
    info.to_csv(root / STIM_INFO)
    with pytest.raises(UserInputError, match="use both files from one NSD release"):
        _prepare(root)


@pytest.mark.parametrize(
    "options",
    [
        {"betas_format": "mgh"},
        {"space": "fsaverage", "betas_format": "hdf5"},
        {"subjects": ["first"]},
        {"sessions": [0]},
        {"image_size": 0},
        {"glm": "lss"},
    ],
)
def test_invalid_options_are_refused(options):
    with pytest.raises(ValidationError):
        NSDConfig(**options)
