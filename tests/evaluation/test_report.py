"""Evaluation report: markdown tables carry the input values; figures are real, non-blank PNGs."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mindzoo.errors import UserInputError
from mindzoo.evaluation.report import SubjectResult, write_report

SPACE = "efficientnet-lite0"


def subject_result(seed: int, n_test: int = 12, with_images: bool = True) -> SubjectResult:
    rng = np.random.default_rng(seed)
    true = rng.normal(size=(n_test, 32))
    pred = true + rng.normal(scale=1.0, size=true.shape)
    shape = (12, 14, 8)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
    inside = (((grid - np.array([6, 7, 4])) / np.array([5, 6, 3.5])) ** 2).sum(-1) < 1
    ijk = np.argwhere(inside)
    affine = np.diag([2.0, 2.0, 2.5, 1.0])
    affine[:3, 3] = [-12, -14, -10]
    images = rng.integers(0, 256, size=(n_test, 16, 16, 3), dtype=np.uint8)
    return SubjectResult(
        pred=pred,
        true=true,
        noise_ceiling=rng.uniform(-0.1, 0.8, size=len(ijk)),
        voxel_ijk=ijk,
        affine=affine,
        volume_shape=shape,
        test_images=images if with_images else None,
    )


def metrics_dict() -> dict:
    subjects = {
        "sub-01": {
            f"two_way_id.{SPACE}": 0.81234,
            f"retrieval_top1.{SPACE}": 0.25,
            f"feature_corr.{SPACE}": 0.4567,
        },
        "sub-02": {
            f"two_way_id.{SPACE}": 0.7,
            f"retrieval_top1.{SPACE}": 1 / 12,
            f"feature_corr.{SPACE}": 0.3333,
        },
    }
    mean = {k: (subjects["sub-01"][k] + subjects["sub-02"][k]) / 2 for k in subjects["sub-01"]}
    return {"dataset": "synthetic-fmri", "model": "ridge", "subjects": subjects, "mean": mean}


def assert_real_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[0] > 50 and pixels.shape[1] > 50
    assert pixels.std() > 5  # not a blank canvas
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    results = {"sub-01": subject_result(0), "sub-02": subject_result(1, with_images=False)}
    return write_report(out, metrics_dict(), results, title="Ridge on synthetic-fmri")


def test_report_header_and_subject_tables(report):
    text = report.read_text()
    assert report.name == "report.md"
    assert text.startswith("# Ridge on synthetic-fmri\n")
    assert "Dataset: `synthetic-fmri`" in text and "Model: `ridge`" in text
    assert f"| two_way_id.{SPACE} | 0.812 | 0.500 |" in text
    assert f"| retrieval_top1.{SPACE} | 0.250 | 0.083 (1/12) |" in text
    assert f"| feature_corr.{SPACE} | 0.457 | — |" in text
    assert f"| retrieval_top1.{SPACE} | 0.083 | 0.083 (1/12) |" in text  # sub-02
    assert text.index("## sub-01") < text.index("## sub-02")


def test_report_summary_table_has_subjects_and_mean(report):
    text = report.read_text()
    assert (
        f"| subject | two_way_id.{SPACE} | retrieval_top1.{SPACE} | feature_corr.{SPACE} |" in text
    )
    assert "| sub-01 | 0.812 | 0.250 | 0.457 |" in text
    assert "| sub-02 | 0.700 | 0.083 | 0.333 |" in text
    assert "| **mean** | 0.756 | 0.167 | 0.395 |" in text


def test_report_figures_exist_are_linked_and_not_blank(report):
    text = report.read_text()
    expected = [
        "sub-01_identification.png",
        "sub-01_noise_ceiling.png",
        "sub-01_retrieval.png",
        "sub-02_identification.png",
        "sub-02_noise_ceiling.png",
    ]
    for name in expected:
        assert f"]({name})" in text
        assert_real_png(report.parent / name)
    assert not (report.parent / "sub-02_retrieval.png").exists()  # no images given for sub-02


def test_report_states_median_noise_ceiling(report):
    nc = subject_result(0).noise_ceiling
    assert f"Noise ceiling: median {np.median(nc):.3f} over {nc.size} voxels" in report.read_text()


def test_subject_without_arrays_gets_a_table_but_no_figures(tmp_path):
    metrics = metrics_dict()
    path = write_report(tmp_path, metrics, {}, title="Tables only")
    text = path.read_text()
    assert "| two_way_id.efficientnet-lite0 | 0.700 | 0.500 |" in text
    assert f"| retrieval_top1.{SPACE} | 0.083 | — |" in text  # N unknown without predictions
    assert not list(tmp_path.glob("*.png"))


def test_metrics_without_subjects_is_user_error(tmp_path):
    with pytest.raises(UserInputError, match="'subjects'"):
        write_report(tmp_path, {"dataset": "x", "model": "ridge"}, {}, title="t")


def test_mismatched_voxel_indices_are_user_error(tmp_path):
    result = subject_result(2)
    result.voxel_ijk = result.voxel_ijk[:-1]
    metrics = {"subjects": {"sub-01": metrics_dict()["subjects"]["sub-01"]}}
    with pytest.raises(UserInputError, match="voxel_ijk"):
        write_report(tmp_path, metrics, {"sub-01": result}, title="t")
