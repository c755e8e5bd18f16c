"""synthetic-fmri: stimuli, BIDS layout, pybids indexing, design, anatomy, determinism, signal."""

import json
from pathlib import Path

import bids
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from nilearn.glm.first_level import make_first_level_design_matrix
from PIL import Image
from pydantic import ValidationError

from mindzoo.datasets.stimuli import CATEGORIES, PHOTO_SOURCES, SHAPE_KINDS, make_stimuli
from mindzoo.datasets.synthetic import fmri as synthetic_fmri
from mindzoo.datasets.synthetic.fmri import simulate_bids
from mindzoo.datasets.synthetic.fmri_config import SyntheticFMRIConfig
from mindzoo.errors import UserInputError
from mindzoo.evaluation.noise_ceiling import noise_ceiling

SMALL = {
    "n_subjects": 2,
    "image_size": 32,
    "n_test_images": 4,
    "test_repeats": 3,
    "n_train_images": 10,
    "n_sessions": 1,
    "runs_per_session": 2,
    "trials_per_run": 12,
    "blank_trials_per_run": 3,
    "volume_shape": (16, 18, 16),
}
EVENT_COLUMNS = ["onset", "duration", "trial_type", "stim_file", "stim_id", "category", "split"]


# --- stimuli ------------------------------------------------------------------------------------


def test_stimuli_are_distinct_colour_images_with_known_categories():
    images, categories = make_stimuli(300, image_size=32, seed=3)
    assert images.shape == (300, 32, 32, 3) and images.dtype == np.uint8
    assert len({image.tobytes() for image in images}) == 300
    assert set(categories) <= set(CATEGORIES)
    assert set(categories) & set(PHOTO_SOURCES) and set(categories) & set(SHAPE_KINDS)
    # colour, not grey: most images have clearly different R, G and B channels
    channel_spread = np.abs(images[..., 0].astype(int) - images[..., 1]).mean(axis=(1, 2))
    assert np.mean(channel_spread > 5) > 0.5


def test_stimuli_are_seeded():
    first, first_categories = make_stimuli(20, image_size=32, seed=1)
    again, again_categories = make_stimuli(20, image_size=32, seed=1)
    other, _ = make_stimuli(20, image_size=32, seed=2)
    np.testing.assert_array_equal(first, again)
    assert first_categories == again_categories
    assert not np.array_equal(first, other)


# --- the simulated dataset ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic") / "bids"
    return simulate_bids(root, SyntheticFMRIConfig(**SMALL), progress=False)


def _bold_files(root: Path) -> list[Path]:
    return sorted(root.glob("sub-*/ses-*/func/*_bold.nii.gz"))


def test_top_level_files(dataset):
    description = json.loads((dataset / "dataset_description.json").read_text())
    assert description["BIDSVersion"] == "1.9.0" and description["DatasetType"] == "raw"
    assert description["GeneratedBy"][0]["Name"] == "mindzoo synthetic-fmri"
    assert pd.read_csv(dataset / "participants.tsv", sep="\t")["participant_id"].tolist() == [
        "sub-01",
        "sub-02",
    ]
    sidecar = json.loads((dataset / "task-images_bold.json").read_text())
    assert sidecar == {"TaskName": "images", "RepetitionTime": 1.6}
    assert "Generative model" in (dataset / "README").read_text()
    masks = json.loads((dataset / "derivatives/masks/dataset_description.json").read_text())
    assert masks["DatasetType"] == "derivative"


def test_stimuli_table_and_pngs(dataset):
    stimuli = pd.read_csv(dataset / "stimuli" / "stimuli.tsv", sep="\t")
    assert list(stimuli.columns) == ["stim_file", "stim_id", "category", "split"]
    assert len(stimuli) == 4 + 2 * 10
    assert (stimuli["split"] == "test").sum() == 4
    assert stimuli["stim_id"].is_unique
    for file_name in stimuli["stim_file"]:
        with Image.open(dataset / "stimuli" / file_name) as image:
            assert image.size == (32, 32) and image.mode == "RGB"


def test_pybids_indexes_runs_and_events(dataset):
    layout = bids.BIDSLayout(dataset, validate=True)
    assert layout.get_subjects() == ["01", "02"]
    assert layout.get_tasks() == ["images"]
    bold = layout.get(suffix="bold", extension=".nii.gz")
    events = layout.get(suffix="events", extension=".tsv")
    assert len(bold) == 4 and len(events) == 4
    assert layout.get_metadata(bold[0].path)["RepetitionTime"] == 1.6


def test_nifti_shapes_tr_and_affines_agree_with_the_masks(dataset):
    config = SyntheticFMRIConfig(**SMALL)
    for subject in ("sub-01", "sub-02"):
        masks = dataset / "derivatives/masks" / subject / "func"
        brain = nib.load(masks / f"{subject}_space-native_desc-brain_mask.nii.gz")
        dseg = nib.load(masks / f"{subject}_space-native_dseg.nii.gz")
        assert brain.get_data_dtype() == np.uint8 and dseg.get_data_dtype() == np.int16
        brain_data = np.asanyarray(brain.dataobj)
        roi = np.asanyarray(dseg.dataobj)
        assert set(np.unique(brain_data)) == {0, 1}
        assert np.all(brain_data[roi > 0] == 1)  # ROIs lie inside the brain
        names = pd.read_csv(masks / f"{subject}_space-native_dseg.tsv", sep="\t")
        assert list(names.columns) == ["index", "name"]
        assert set(np.unique(roi)) - {0} <= set(names["index"])
        for path in sorted((dataset / subject).glob("ses-*/func/*_bold.nii.gz")):
            bold = nib.load(path)
            assert bold.ndim == 4 and bold.shape[:3] == brain.shape
            assert bold.shape[3] == config.n_volumes
            assert bold.header.get_zooms() == pytest.approx((2.5, 2.5, 2.5, 1.6))
            assert bold.header.get_xyzt_units() == ("mm", "sec")
            np.testing.assert_allclose(bold.affine, brain.affine)
            np.testing.assert_allclose(dseg.affine, brain.affine)
            data = bold.get_fdata(dtype=np.float32)
            assert np.all(data[brain_data == 0] == 0)
            assert np.all(data[brain_data == 1] > 100)  # scanner-like intensities in the brain


def test_events_timing_and_columns(dataset):
    config = SyntheticFMRIConfig(**SMALL)
    stimuli = pd.read_csv(dataset / "stimuli" / "stimuli.tsv", sep="\t").set_index("stim_file")
    for path in _bold_files(dataset):
        events = pd.read_csv(str(path).replace("_bold.nii.gz", "_events.tsv"), sep="\t")
        assert list(events.columns) == EVENT_COLUMNS
        assert len(events) == config.trials_per_run
        assert (events["trial_type"] == "image").all() and (events["duration"] == 3.0).all()
        slots = (events["onset"] - config.run_lead_in) / config.trial_period
        np.testing.assert_allclose(slots, np.round(slots))  # on the 4 s trial grid
        assert np.all(np.diff(slots) >= 1)
        n_slots = config.trials_per_run + config.blank_trials_per_run
        assert slots.max() < n_slots and n_slots - len(np.unique(slots)) == 3  # 3 blank slots
        last_offset = events["onset"].max() + 3.0
        assert last_offset <= config.n_volumes * config.tr - config.run_tail + 1e-6
        # every event agrees with the stimulus table
        table = stimuli.loc[events["stim_file"]]
        assert events["stim_id"].tolist() == table["stim_id"].tolist()
        assert events["category"].tolist() == table["category"].tolist()
        assert events["split"].tolist() == table["split"].tolist()


def _subject_events(root: Path, subject: str) -> pd.DataFrame:
    paths = sorted((root / subject).glob("ses-*/func/*_events.tsv"))
    return pd.concat([pd.read_csv(p, sep="\t") for p in paths])


def test_test_images_are_shared_three_times_and_train_images_are_own(dataset):
    events = {s: _subject_events(dataset, s) for s in ("sub-01", "sub-02")}
    test_sets = []
    for table in events.values():
        test = table[table["split"] == "test"]
        counts = test["stim_id"].value_counts()
        assert len(counts) == 4 and (counts == 3).all()
        test_sets.append(set(counts.index))
    assert test_sets[0] == test_sets[1]
    train = [set(t.loc[t["split"] == "train", "stim_id"]) for t in events.values()]
    assert len(train[0]) == 10 and len(train[1]) == 10
    assert not train[0] & train[1]


def test_subjects_differ_in_anatomy_and_roi_voxel_counts(dataset):
    counts, shapes, affines = [], [], []
    for subject in ("sub-01", "sub-02"):
        path = dataset / "derivatives/masks" / subject / "func"
        dseg = nib.load(path / f"{subject}_space-native_dseg.nii.gz")
        roi = np.asanyarray(dseg.dataobj)
        counts.append(int((roi > 0).sum()))
        shapes.append(dseg.shape)
        affines.append(dseg.affine)
        assert len(np.unique(roi)) - 1 >= 5  # most ROIs are present even in a tiny volume
    assert counts[0] != counts[1] and min(counts) > 50
    assert shapes[0] != shapes[1] or not np.allclose(affines[0], affines[1])


def test_same_seed_same_data_other_seed_other_data(dataset, tmp_path):
    again = simulate_bids(tmp_path / "again", SyntheticFMRIConfig(**SMALL), progress=False)
    other = simulate_bids(tmp_path / "other", SyntheticFMRIConfig(**SMALL, seed=1), progress=False)
    relative = _bold_files(dataset)[0].relative_to(dataset)

    def raw(root: Path) -> np.ndarray:
        return np.asanyarray(nib.load(root / relative).dataobj)

    np.testing.assert_array_equal(raw(again), raw(dataset))
    for name in ("stimuli/stimuli.tsv", str(relative).replace("_bold.nii.gz", "_events.tsv")):
        assert (again / name).read_bytes() == (dataset / name).read_bytes()
    assert raw(other).shape != raw(dataset).shape or not np.array_equal(raw(other), raw(dataset))


def _lsa_betas(root: Path, subject: str, config: SyntheticFMRIConfig) -> pd.DataFrame:
    """Single-trial betas of the signal-ROI voxels by a plain least-squares-all GLM."""
    dseg = nib.load(root / f"derivatives/masks/{subject}/func/{subject}_space-native_dseg.nii.gz")
    roi = np.asanyarray(dseg.dataobj) > 0
    betas, stim_ids = [], []
    for path in sorted((root / subject).glob("ses-*/func/*_bold.nii.gz")):
        bold = nib.load(path).get_fdata()[roi].T
        bold = 100 * bold / bold.mean(axis=0)
        events = pd.read_csv(str(path).replace("_bold.nii.gz", "_events.tsv"), sep="\t")
        trials = events.assign(trial_type=[f"t{i:03d}" for i in range(len(events))])
        design = make_first_level_design_matrix(
            np.arange(bold.shape[0]) * config.tr,
            trials[["onset", "duration", "trial_type"]],
            hrf_model="glover",
            drift_model="polynomial",
            drift_order=0,
        )
        coef = np.linalg.lstsq(design.to_numpy(), bold, rcond=None)[0][: len(events)]
        betas.append(coef)
        stim_ids += events["stim_id"].tolist()
    return pd.DataFrame(np.concatenate(betas), index=stim_ids)


def test_noise_free_responses_repeat_exactly_and_vary_across_images(tmp_path):
    silent = {
        name: 0.0
        for name in (
            "trial_gain_sd",
            "neural_noise_psc",
            "thermal_noise_psc",
            "physio_noise_psc",
            "global_noise_psc",
            "regional_noise_psc",
            "drift_psc",
            "hrf_delay_sd",
            "subject_noise_jitter",
        )
    }
    config = SyntheticFMRIConfig(**{**SMALL, "n_subjects": 1}, **silent)
    root = simulate_bids(tmp_path / "silent", config, progress=False)
    betas = _lsa_betas(root, "sub-01", config)
    test = np.stack([betas.loc[i].to_numpy() for i in range(1, 5)])  # [4 images, 3 reps, V]
    # repeats agree (up to int16 storage), so every signal voxel's ceiling is ~1 ...
    assert np.median(noise_ceiling(test)) > 0.99
    # ... and the true responses differ between images by about signal_psc
    across_images = betas.groupby(level=0).mean().std(axis=0)
    assert 0.5 * config.signal_psc < np.median(across_images) < 1.5 * config.signal_psc


def test_default_noise_makes_repeats_disagree(dataset):
    config = SyntheticFMRIConfig(**SMALL)
    betas = _lsa_betas(dataset, "sub-01", config)
    test = np.stack([betas.loc[i].to_numpy() for i in range(1, 5)])
    assert np.median(noise_ceiling(test)) < 0.9


def test_default_config_matches_the_nsd_like_design():
    config = SyntheticFMRIConfig()
    assert config.n_subjects >= 4 and config.image_size == 64 and config.test_repeats == 3
    assert config.n_trial_slots == 750 and config.tr == 1.6
    assert config.stimulus_duration == 3.0 and config.interstimulus_interval == 1.0


def test_design_that_does_not_fit_the_runs_is_rejected():
    with pytest.raises(ValidationError, match="add runs or trials"):
        SyntheticFMRIConfig(n_test_images=50, n_train_images=700)
    with pytest.raises(ValidationError):
        SyntheticFMRIConfig(unknown_knob=1.0)


def test_existing_output_is_not_overwritten(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(UserInputError, match="not empty"):
        simulate_bids(tmp_path / "full", SyntheticFMRIConfig(**SMALL), progress=False)
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(synthetic_fmri, "_write_masks", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        simulate_bids(tmp_path / "bids", SyntheticFMRIConfig(**SMALL), progress=False)
    assert list(tmp_path.iterdir()) == []
