"""Reconstruction metrics (MindEye2 definitions), metric backbones and the report section."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from scipy.spatial.distance import correlation as scipy_correlation
from skimage.color import rgb2gray
from skimage.metrics import structural_similarity

from mindzoo.errors import UserInputError
from mindzoo.evaluation.image_metrics import (
    LITE0_COLUMNS,
    STANDARD_COLUMNS,
    correlation_distance,
    eval_images,
    pixcorr,
    reconstruction_metrics,
    retrieval_top1,
    ssim_score,
    two_way_identification,
)
from mindzoo.evaluation.report import reconstruction_section
from mindzoo.features.backbones import (
    BACKBONES,
    AlexNetFeatures,
    backbone_features,
    load_alexnet,
    parse_metric_weights,
    unavailable_reason,
)

RNG = np.random.default_rng(7)


def _images(n: int, size: int = 4) -> np.ndarray:
    return RNG.integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _pil_resize(x: np.ndarray, size: int) -> np.ndarray:
    """Independent reference resize: PIL's float bilinear filter, channel by channel."""
    channels = [
        np.asarray(
            Image.fromarray(x[..., c].astype(np.float32), mode="F").resize(
                (size, size), Image.Resampling.BILINEAR
            )
        )
        for c in range(3)
    ]
    return np.stack(channels, axis=-1).astype(np.float64)


def _at_425(image: np.ndarray) -> np.ndarray:
    """MindEye2's low-level preprocessing: [0, 1] floats, 256x256, then 425x425."""
    return _pil_resize(_pil_resize(image / 255.0, 256), 425)


# ----------------------------------------------------------------------------- PixCorr
def test_pixcorr_matches_numpy_pearson_of_reference_resized_images():
    recons, truths = _images(3), _images(3, size=6)  # sizes may differ
    expected = np.mean(
        [
            np.corrcoef(_at_425(r).ravel(), _at_425(t).ravel())[0, 1]
            for r, t in zip(recons, truths, strict=True)
        ]
    )
    assert pixcorr(recons, truths) == pytest.approx(expected, abs=1e-6)


def test_pixcorr_hand_values_identity_inversion_and_affine():
    truths = (_images(3) // 2) * 2  # even values: halving is exact in uint8
    recons = np.stack([truths[0], 255 - truths[1], truths[2] // 2 + 10])
    # r = 1 (same), -1 (inverted), 1 (positive affine): resizing is linear, so r is kept
    assert pixcorr(recons, truths) == pytest.approx(1 / 3, abs=1e-6)
    assert pixcorr(truths, truths) == pytest.approx(1.0, abs=1e-9)


# -------------------------------------------------------------------------------- SSIM
def test_ssim_hand_value_for_uniform_gray_images():
    # uniform gray 0.2 vs 0.4: SSIM = (2ab + C1) / (a^2 + b^2 + C1), C1 = (0.01 * data_range)^2
    a = np.full((1, 4, 4, 3), 51, np.uint8)
    b = np.full((1, 4, 4, 3), 102, np.uint8)
    c1 = (0.01 * 1.0) ** 2
    assert ssim_score(a, b) == pytest.approx((2 * 0.2 * 0.4 + c1) / (0.04 + 0.16 + c1), abs=1e-6)


def test_ssim_matches_reference_pipeline_and_identity_is_one():
    recons, truths = _images(2), _images(2)
    expected = np.mean(
        [
            structural_similarity(
                rgb2gray(_at_425(r)),
                rgb2gray(_at_425(t)),
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=1.0,
            )
            for r, t in zip(recons, truths, strict=True)
        ]
    )
    assert ssim_score(recons, truths) == pytest.approx(expected, abs=1e-5)
    assert ssim_score(truths, truths) == pytest.approx(1.0, abs=1e-9)


def test_low_level_metrics_reject_bad_images():
    with pytest.raises(UserInputError, match="uint8"):
        pixcorr(_images(2).astype(np.float32), _images(2))
    with pytest.raises(UserInputError, match="one reconstruction per test image"):
        ssim_score(_images(2), _images(3))


# ---------------------------------------------------------------- feature-space metrics
def test_two_way_identification_hand_value_and_permutation_invariance():
    true = np.eye(3)
    pred = np.stack([true[0], true[0], true[2]])
    # r(e_i, e_j) = -0.5 for i != j. Item 0 and 2 beat both others; item 1's own r is -0.5,
    # which no other ground truth undercuts: (1 + 0 + 1) / 3.
    assert two_way_identification(pred, true) == pytest.approx(2 / 3)
    feats_true, feats_pred = RNG.normal(size=(6, 5)), RNG.normal(size=(6, 5))
    order = RNG.permutation(6)
    assert two_way_identification(feats_pred[order], feats_true[order]) == pytest.approx(
        two_way_identification(feats_pred, feats_true)
    )


def test_correlation_distance_hand_values_and_scipy():
    true = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    pred = np.array([[3.0, 2.0, 1.0], [2.0, 4.0, 6.0]])
    assert correlation_distance(pred, true) == pytest.approx((2.0 + 0.0) / 2)
    a, b = RNG.normal(size=(4, 2, 3)), RNG.normal(size=(4, 2, 3))
    expected = np.mean([scipy_correlation(x.ravel(), y.ravel()) for x, y in zip(a, b, strict=True)])
    assert correlation_distance(a, b) == pytest.approx(expected)


def test_retrieval_top1_both_directions_by_hand():
    true = np.eye(3)
    pred = np.stack([true[0], true[1], true[0]])
    # brain->image: predictions 0 and 1 find their image, 2 finds image 0.
    # image->brain: image 0 ties between predictions 0 and 2 (a miss), image 1 hits,
    # image 2 is orthogonal to every prediction (a tie, a miss).
    result = retrieval_top1(pred, true)
    assert result == {"brain->image": pytest.approx(2 / 3), "image->brain": pytest.approx(1 / 3)}


def test_retrieval_top1_averages_random_subsets():
    # Prediction i is closer to its partner's image than to its own; it is a hit only when the
    # partner is not in the subset: P = 1 - 149/199 = 0.251 for subsets of 150 out of 200.
    n = 200
    true = np.eye(n)
    partner = np.arange(n) ^ 1
    pred = 0.9 * true + true[partner]
    full = retrieval_top1(pred, true, subset_size=n)
    assert full["brain->image"] == 0.0
    sub = retrieval_top1(pred, true, n_subsets=30, subset_size=150, seed=3)
    assert sub["brain->image"] == pytest.approx(1 - 149 / 199, abs=0.03)
    assert retrieval_top1(pred, true, subset_size=150, seed=3) == sub
    assert retrieval_top1(pred, true, subset_size=150, seed=4) != sub
    with pytest.raises(UserInputError, match="shape"):
        retrieval_top1(pred[:3], true[:4])


# ------------------------------------------------------------------------------ AlexNet
ALEX_CONVS = {
    0: (64, 3, 11),
    3: (192, 64, 5),
    6: (384, 192, 3),
    8: (256, 384, 3),
    10: (256, 256, 3),
}


def _alexnet_state() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    state = {}
    for index, (out_c, in_c, k) in ALEX_CONVS.items():
        state[f"features.{index}.weight"] = torch.randn(out_c, in_c, k, k, generator=gen) * 0.05
        state[f"features.{index}.bias"] = torch.randn(out_c, generator=gen) * 0.05
    state["classifier.6.bias"] = torch.zeros(10)  # heads are ignored
    return state


def test_alexnet_loads_torchvision_layout_and_matches_manual_layers(tmp_path):
    state = _alexnet_state()
    torch.save(state, tmp_path / "alexnet.pth")
    save_file(state, str(tmp_path / "alexnet.safetensors"))
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    for name in ("alexnet.pth", "alexnet.safetensors"):
        out = load_alexnet(tmp_path / name)(x)
        assert out["features.4"].shape == (1, 192, 27, 27)
        assert out["features.11"].shape == (1, 256, 13, 13)

    def conv(h, i, pad, stride=1):
        w, b = state[f"features.{i}.weight"], state[f"features.{i}.bias"]
        return F.conv2d(h, w, b, stride=stride, padding=pad)

    h = F.max_pool2d(F.relu(conv(x, 0, 2, stride=4)), 3, 2)
    layer2 = F.relu(conv(h, 3, 2))
    h = F.max_pool2d(layer2, 3, 2)
    layer5 = F.relu(conv(F.relu(conv(F.relu(conv(h, 6, 1)), 8, 1)), 10, 1))
    torch.testing.assert_close(out["features.4"], layer2)
    torch.testing.assert_close(out["features.11"], layer5)
    assert AlexNetFeatures()(torch.zeros(1, 3, 256, 256))["features.11"].shape == (1, 256, 15, 15)


def test_alexnet_rejects_incomplete_wrong_or_unsafe_files(tmp_path):
    state = _alexnet_state()
    del state["features.10.bias"]
    torch.save(state, tmp_path / "missing.pth")
    with pytest.raises(UserInputError, match="features.10.bias"):
        load_alexnet(tmp_path / "missing.pth")
    state = _alexnet_state()
    state["features.3.weight"] = torch.zeros(192, 64, 3, 3)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(UserInputError, match="does not match"):
        load_alexnet(tmp_path / "shape.pth")
    torch.save({"model": Path("x")}, tmp_path / "object.pth")  # not tensors: refused unread
    with pytest.raises(UserInputError, match="tensors-only"):
        load_alexnet(tmp_path / "object.pth")


# ----------------------------------------------------------------- the reconstruction table
def test_reconstruction_metrics_identical_shuffled_and_alexnet(tmp_path):
    torch.save(_alexnet_state(), tmp_path / "alexnet.pth")
    truths = _images(4, size=16)
    weights = {"alexnet": tmp_path / "alexnet.pth"}
    same = reconstruction_metrics(truths, truths, weights=weights)
    for column in ("PixCorr", "SSIM", "Alex(2)", "Alex(5)", "efficientnet-lite0 2-way"):
        assert same[column] == pytest.approx(1.0, abs=1e-6), column
    assert same["efficientnet-lite0 distance"] == pytest.approx(0.0, abs=1e-6)
    assert same["Incep"] is None and "inception=PATH" in same["notes"]["Incep"]
    assert "Alex(2)" not in same["notes"]

    shuffled = reconstruction_metrics(truths[[1, 2, 3, 0]], truths, weights=weights)
    for column in ("PixCorr", "SSIM", "Alex(2)", "efficientnet-lite0 2-way"):
        assert shuffled[column] < same[column] - 0.1, column
    assert shuffled["efficientnet-lite0 distance"] > 0.01
    assert list(shuffled)[:10] == [*STANDARD_COLUMNS, *LITE0_COLUMNS]


def test_reconstruction_metrics_adds_retrieval_and_checks_weights(tmp_path):
    truths = _images(3, size=8)
    embeds = RNG.normal(size=(3, 4))
    result = reconstruction_metrics(truths, truths, embeddings=(embeds, embeds))
    assert result["retrieval brain->image"] == result["retrieval image->brain"] == 1.0
    with pytest.raises(UserInputError, match="Unknown metric backbone"):
        reconstruction_metrics(truths, truths, weights={"vgg": tmp_path})
    with pytest.raises(UserInputError, match="not found"):
        reconstruction_metrics(truths, truths, weights={"alexnet": tmp_path / "none.pth"})
    with pytest.raises(UserInputError, match="at least 2"):
        reconstruction_metrics(truths[:1], truths[:1])


def test_parse_metric_weights(tmp_path):
    (tmp_path / "a.pth").write_bytes(b"")
    assert parse_metric_weights([f"alexnet={tmp_path / 'a.pth'}"]) == {
        "alexnet": tmp_path / "a.pth"
    }
    with pytest.raises(UserInputError, match="NAME=PATH"):
        parse_metric_weights(["alexnet"])


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="has torchvision")
def test_torchvision_backbones_are_skipped_with_a_note(tmp_path):
    reason = unavailable_reason("swav", {"swav": tmp_path})
    assert "torchvision" in reason and "swav=PATH" in reason


@pytest.mark.skipif(
    importlib.util.find_spec("mindzoo.features.clip") is None, reason="no CLIP loader"
)
def test_clip_column_with_tiny_random_model(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        projection_dim=8,
    )
    CLIPVisionModelWithProjection(config).save_pretrained(tmp_path / "clip")
    weights = {"clip": tmp_path / "clip"}
    assert unavailable_reason("clip", weights) is None
    backbone = BACKBONES["clip"]
    extractor = backbone.load(weights["clip"], "cpu")
    truths = eval_images(_images(4, size=16))
    feats = backbone_features(backbone, extractor, truths)["image_embeds"]
    shuffled = backbone_features(backbone, extractor, truths[[1, 2, 3, 0]])["image_embeds"]
    assert feats.shape == (4, 8)
    assert two_way_identification(feats, feats) == 1.0
    assert two_way_identification(shuffled, feats) < 1.0


# ----------------------------------------------------------------------------- report
def test_reconstruction_section_table_notes_and_grid():
    row = {c: None for c in STANDARD_COLUMNS} | {"PixCorr": 0.25, "SSIM": 0.5, "Eff": 0.75}
    row |= {"efficientnet-lite0 2-way": 0.875, "efficientnet-lite0 distance": 0.125}
    row["notes"] = {c: "needs weights" for c in STANDARD_COLUMNS if row[c] is None}
    text = reconstruction_section([("brain-it sub-01", row)], Path("grid.png"))
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| model | PixCorr"))
    columns = [cell.strip().rsplit(" ", 1)[0] for cell in header.strip("|").split("|")][1:]
    assert columns == list(STANDARD_COLUMNS)
    assert "| brain-it sub-01 | 0.250 | 0.500 |  |  |  |  | 0.750 |  |" in lines
    assert "- Alex(2), Alex(5), Incep, CLIP, SwAV: needs weights" in lines
    assert "| brain-it sub-01 | 0.875 | 0.125 |" in lines
    assert lines[-1] == (
        "![Reconstructions: ground truth first, then one row per model and subject](grid.png)"
    )
    with pytest.raises(UserInputError, match="lack SSIM"):
        reconstruction_section([("x", {"PixCorr": 1.0})], None)
