"""FEMBA and its Mamba block: the parallel scan against the sequential reference, causality,
both directions, shapes, masking, the masked loss, parameter counts against the paper, and a
short training run."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mindzoo.datasets.ephys_views import RecordingInfo
from mindzoo.errors import UserInputError
from mindzoo.models.femba import (
    INIT,
    PAPER_PARAMETERS,
    REFERENCE_RECORDING,
    BiMamba,
    FEMBAClassifier,
    FEMBAConfig,
    FEMBAPretrain,
    build_femba,
    femba_parameter_count,
    masked_smooth_l1,
    official_to_ours,
    same_conv2d,
)
from mindzoo.models.mamba_scan import (
    Mamba,
    kernels_available,
    mamba_parameter_count,
    scan_parallel,
    scan_sequential,
    selective_scan,
)
from mindzoo.models.trainable import InitRun, Stage, count_parameters
from mindzoo.tensorfile import save_state

SMALL = {"embed_dim": 4, "n_blocks": 1, "head_hidden": 16}
SHORT = RecordingInfo({"sub-01": 22, "sub-02": 22}, n_times=256, sfreq=256.0, n_classes=3)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread: these small ops run 10-50x slower with two threads on a loaded
    2-core machine (threads spin-waiting for each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _recurrence(length: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(2, length, 3, 4, generator=g, dtype=torch.float64)
    b = torch.randn(2, length, 3, 4, generator=g, dtype=torch.float64)
    return a, b


@pytest.mark.parametrize("length", [1, 5, 16, 17, 80, 129, 300])
@pytest.mark.parametrize("chunk", [2, 5, 16])
def test_parallel_scan_equals_sequential_reference(length: int, chunk: int) -> None:
    a, b = _recurrence(length)
    a.requires_grad_(True)
    b.requires_grad_(True)
    h_par = scan_parallel(a, b, chunk)
    h_seq = scan_sequential(a, b)
    assert h_par.shape == (2, length, 3, 4)
    assert (h_par - h_seq).abs().max().item() < 1e-12
    # h_2 by hand: a2 (a1 b0 + b1) + b2
    if length >= 3:
        by_hand = a[:, 2] * (a[:, 1] * b[:, 0] + b[:, 1]) + b[:, 2]
        assert torch.allclose(h_par[:, 2], by_hand, atol=1e-14)
    weights = torch.randn_like(h_seq)
    grads_par = torch.autograd.grad((h_par * weights).sum(), (a, b))
    grads_seq = torch.autograd.grad((h_seq * weights).sum(), (a, b))
    for g_par, g_seq in zip(grads_par, grads_seq, strict=True):
        assert (g_par - g_seq).abs().max().item() < 1e-11


def test_parallel_scan_gradcheck() -> None:
    a, b = _recurrence(11, seed=3)
    assert torch.autograd.gradcheck(
        lambda a, b: scan_parallel(a, b, 4), (a.requires_grad_(), b.requires_grad_())
    )


@pytest.mark.parametrize(("length", "chunk"), [(1, 4), (45, 8), (45, 7), (80, 16), (33, 64)])
def test_mamba_parallel_and_sequential_blocks_agree(length: int, chunk: int) -> None:
    torch.manual_seed(0)
    block = Mamba(16, expand=4, scan="parallel", chunk=chunk).double()
    x = torch.randn(2, length, 16, dtype=torch.float64, requires_grad=True)
    y_par = block(x)
    weights = torch.randn_like(y_par)
    grads_par = torch.autograd.grad((y_par * weights).sum(), [x, *block.parameters()])
    block.scan = "sequential"
    y_seq = block(x)
    grads_seq = torch.autograd.grad((y_seq * weights).sum(), [x, *block.parameters()])
    assert y_par.shape == (2, length, 16)
    assert (y_par - y_seq).abs().max().item() < 1e-12
    assert y_par.abs().max().item() > 1e-3  # not trivially zero
    for g_par, g_seq in zip(grads_par, grads_seq, strict=True):
        assert (g_par - g_seq).abs().max().item() <= 1e-12 * max(1.0, g_seq.abs().max().item())


def test_selective_scan_gradcheck() -> None:
    g = torch.Generator().manual_seed(7)
    u = torch.randn(2, 3, 9, generator=g, dtype=torch.float64)  # [batch, d_inner, L]
    B, C = torch.randn(2, 2, 4, 9, generator=g, dtype=torch.float64)  # [batch, d_state, L]
    delta = torch.rand(2, 3, 9, generator=g, dtype=torch.float64)
    A = -torch.rand(3, 4, generator=g, dtype=torch.float64)
    inputs = tuple(t.requires_grad_() for t in (u, delta, A, B, C))
    assert torch.autograd.gradcheck(lambda *args: selective_scan(*args, chunk=4), inputs)


def test_mamba_parameters_follow_mamba_ssm() -> None:
    block = Mamba(40, d_state=16, d_conv=4, expand=4)
    shapes = {k: tuple(v.shape) for k, v in block.state_dict().items()}
    d_inner, rank = 160, math.ceil(40 / 16)
    assert shapes == {
        "in_proj.weight": (2 * d_inner, 40),
        "conv1d.weight": (d_inner, 1, 4),
        "conv1d.bias": (d_inner,),
        "x_proj.weight": (rank + 32, d_inner),
        "dt_proj.weight": (d_inner, rank),
        "dt_proj.bias": (d_inner,),
        "A_log": (d_inner, 16),
        "D": (d_inner,),
        "out_proj.weight": (40, d_inner),
    }
    expected_a = -torch.arange(1.0, 17.0).expand(d_inner, 16)
    assert torch.allclose(-torch.exp(block.A_log), expected_a)  # S4D-real
    assert torch.equal(block.D.data, torch.ones(d_inner))
    dt = F.softplus(block.dt_proj.bias)
    assert dt.min() >= 1e-3 - 1e-7 and dt.max() <= 0.1 + 1e-7
    assert count_parameters(block) == mamba_parameter_count(40, expand=4)


def test_mamba_is_causal() -> None:
    torch.manual_seed(1)
    block = Mamba(8, expand=4).double()
    x = torch.randn(2, 30, 8, dtype=torch.float64)
    changed = x.clone()
    changed[:, 20] += 5.0
    y, y_changed = block(x), block(changed)
    assert torch.allclose(y[:, :20], y_changed[:, :20], atol=1e-13, rtol=0)
    assert (y[:, 20:] - y_changed[:, 20:]).abs().amax(dim=(0, 2)).min() > 1e-6


def test_bidirectional_block_sees_both_directions() -> None:
    torch.manual_seed(2)
    block = BiMamba(8, expand=4).double()
    x = torch.randn(2, 30, 8, dtype=torch.float64)
    y = block(x)
    by_hand = block.mamba_fwd(x) + block.mamba_rev(x.flip(1)).flip(1)
    assert torch.allclose(y, by_hand, atol=1e-14)
    changed = x.clone()
    changed[:, 20] += 5.0
    diff = (block(changed) - y).abs().amax(dim=(0, 2))
    assert diff[:20].min() > 1e-6  # the past sees the change (reverse direction)
    assert diff[20:].min() > 1e-6  # the future too (forward direction)
    fwd_only = (block.mamba_fwd(changed) - block.mamba_fwd(x)).abs().amax(dim=(0, 2))
    assert fwd_only[:20].max() < 1e-13


def test_femba_shapes_and_official_names() -> None:
    config = FEMBAConfig(**SMALL)
    pre = build_femba(config, REFERENCE_RECORDING, "pretrain")
    x = torch.randn(2, 22, 1280)
    tokens = pre.encoder(x)
    assert tokens.shape == (2, 80, 4 * 11)  # 1280 / 16 tokens of embed_dim x 11 channel pairs
    mask = pre.sample_mask(pre.patch_mask(2))
    assert pre.reconstruct(x, mask).shape == (2, 22, 1280)
    out = pre(x)
    assert out["loss"].ndim == 0 and out["loss"].item() > 0
    cls = build_femba(config, SHORT, "cls")
    out = cls(torch.randn(3, 22, 256 + 7), "sub-02", torch.tensor([0, 1, 2]))
    assert out["logits"].shape == (3, 3)
    assert torch.isclose(out["loss"], F.cross_entropy(out["logits"], torch.tensor([0, 1, 2])))
    keys = set(pre.state_dict()) | set(cls.state_dict())
    for key in (
        "encoder.patch_embed.proj.weight",
        "encoder.pos_embed",
        "encoder.mamba_blocks.0.mamba_fwd.in_proj.weight",
        "encoder.mamba_blocks.0.mamba_rev.A_log",
        "encoder.norm_layers.0.weight",
        "decoder.dec_conv.weight",
        "decoder.conv_transpose.weight",
        "classifier.fc1.weight",
        "classifier.mamba_1.dt_proj.bias",
        "classifier.fc3.bias",
    ):
        assert key in keys


def test_fft_decoder_conv_equals_conv2d() -> None:
    g = torch.Generator().manual_seed(6)
    x = torch.randn(3, 1, 20, 44, generator=g, dtype=torch.float64)
    weight = torch.randn(1, 1, 31, 31, generator=g, dtype=torch.float64)
    expected = F.conv2d(x, weight, padding=15)
    assert (same_conv2d(x, weight) - expected).abs().max().item() < 1e-10


def test_mask_ratio_and_patch_structure() -> None:
    pre = FEMBAPretrain(FEMBAConfig(**SMALL), REFERENCE_RECORDING)
    patches = pre.patch_mask(8, torch.Generator().manual_seed(0))
    assert patches.shape == (8, 11, 80)
    assert pre.n_masked == int(0.6 * 880) == 528
    assert patches.sum(dim=(1, 2)).tolist() == [528] * 8
    assert not torch.equal(patches[0], patches[1])  # one draw per window
    samples = pre.sample_mask(patches)
    assert samples.shape == (8, 22, 1280)
    assert samples.sum().item() == 8 * 528 * 32  # 60% of the samples: 0.6 x 8 x 22 x 1280
    blocks = samples.view(8, 11, 2, 80, 16)
    assert torch.equal(blocks.all(2).all(3), blocks.any(2).any(3))  # whole 2 x 16 patches
    assert torch.equal(blocks[:, :, 0, :, 0], patches)


def test_loss_only_on_masked_samples() -> None:
    torch.manual_seed(3)
    pre = FEMBAPretrain(FEMBAConfig(**SMALL), SHORT)
    x = torch.randn(2, 22, 256)
    mask = pre.sample_mask(pre.patch_mask(2))
    recon = pre.reconstruct(x, mask)
    loss = masked_smooth_l1(recon, x, mask)
    diff = (recon - x)[mask].abs()
    by_hand = torch.where(diff < 1, 0.5 * diff**2, diff - 0.5).mean()
    assert torch.isclose(loss, by_hand)
    visible_changed = torch.where(mask, recon, recon + 10.0)
    assert masked_smooth_l1(visible_changed, x, mask).item() == loss.item()
    hidden_changed = torch.where(mask, recon + 10.0, recon)
    assert masked_smooth_l1(hidden_changed, x, mask).item() > loss.item() + 1
    pre.eval()  # validation masks are the same every call
    assert pre(x)["loss"].item() == pre(x)["loss"].item()
    # the encoder never sees the masked samples
    other = torch.where(mask, torch.randn_like(x), x)
    assert torch.equal(pre.reconstruct(other, mask), recon)


def test_parameter_counts_against_the_paper() -> None:
    ours = {p: femba_parameter_count(FEMBAConfig(preset=p)) for p in PAPER_PARAMETERS}
    assert ours["tiny"] == pytest.approx(PAPER_PARAMETERS["tiny"], rel=0.01)  # 7.795 M
    assert ours["base"] == pytest.approx(PAPER_PARAMETERS["base"], rel=0.03)  # 46.61 M
    assert ours["huge"] == pytest.approx(PAPER_PARAMETERS["huge"], rel=0.01)  # 385.5 M
    large_cls = femba_parameter_count(FEMBAConfig(preset="large"), stage="cls")
    assert large_cls == pytest.approx(PAPER_PARAMETERS["large"], rel=0.01)  # 77.82 M
    # the formula against built models
    tiny = FEMBAConfig()
    assert count_parameters(FEMBAPretrain(tiny, REFERENCE_RECORDING)) == femba_parameter_count(
        tiny, stage="pretrain"
    )
    small = FEMBAConfig(**SMALL, preset="large", expand=2)
    for stage, info in (("pretrain", SHORT), ("cls", SHORT)):
        built = count_parameters(build_femba(small, info, stage))
        assert built == femba_parameter_count(small, 22, 256, stage, n_classes=3)


def test_bad_shapes_are_one_line_errors() -> None:
    config = FEMBAConfig(**SMALL)
    with pytest.raises(UserInputError, match="21"):
        FEMBAPretrain(config, RecordingInfo({"a": 21}, 256, 256.0, 2))
    with pytest.raises(UserInputError, match="one montage"):
        FEMBAClassifier(config, RecordingInfo({"a": 22, "b": 20}, 256, 256.0, 2))
    with pytest.raises(UserInputError, match="shorter"):
        FEMBAPretrain(config, RecordingInfo({"a": 22}, 8, 256.0, 2))
    model = FEMBAClassifier(config, SHORT)
    with pytest.raises(UserInputError, match="256-sample windows"):
        model(torch.randn(1, 22, 512))


@pytest.mark.parametrize("stage", ["pretrain", "cls"])
def test_femba_tiny_trains_on_a_fixed_batch(stage: str) -> None:
    torch.manual_seed(4)
    info = RecordingInfo({"sub-01": 22}, n_times=128, sfreq=256.0, n_classes=3)
    model = build_femba(FEMBAConfig(preset="tiny"), info, stage)
    x = torch.randn(6, 22, 128).cumsum(-1) / 8  # smooth, learnable signals
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    x[y == 1, :4] += 2.0  # classes differ on the first channel pairs
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(20):
        torch.manual_seed(0)  # the same mask every step
        loss = model(x, "sub-01", y)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses  # measured: 0.46 -> 0.14 (pretrain)


def test_classifier_starts_from_a_pretraining_run(tmp_path: Path) -> None:
    torch.manual_seed(8)
    config = FEMBAConfig(**SMALL)
    pre = FEMBAPretrain(config, SHORT)
    save_state(pre.state_dict(), tmp_path / "model.safetensors")
    run_config = {"settings": {"model": config.model_dump()}, "build": {"info": SHORT.as_dict()}}
    init = InitRun(tmp_path, run_config)
    settings, extras = INIT.prepare({"preset": "base", "head_hidden": 16}, init)
    assert settings["embed_dim"] == 4 and settings["n_blocks"] == 1 and extras == {}
    assert settings["preset"] == "tiny" and settings["head_hidden"] == 16
    cls = FEMBAClassifier(FEMBAConfig(**settings), SHORT)
    INIT.apply(cls, init)
    for key, value in pre.encoder.state_dict().items():
        assert torch.equal(cls.encoder.state_dict()[key], value)
    longer = FEMBAClassifier(FEMBAConfig(**settings), RecordingInfo({"a": 22}, 512, 256.0, 3))
    with pytest.raises(UserInputError, match="pos_embed of shape"):
        INIT.apply(longer, init)


def test_layerwise_decay_and_frozen_encoder() -> None:
    model = FEMBAClassifier(FEMBAConfig(**{**SMALL, "n_blocks": 3}), SHORT)
    model.start_stage(Stage("main"), None, False)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = model.optimizer_groups(params)
    scales = {g["lr_scale"]: len(g["params"]) for g in groups}
    per_block = len(list(model.encoder.mamba_blocks[0].parameters())) + 2  # + its LayerNorm
    assert scales == {
        0.75**3: per_block,  # block 0
        0.75**2: per_block,
        0.75: per_block,
        1.0: 2 + 1 + len(list(model.classifier.parameters())),  # patch conv, positions, head
    }
    assert sum(scales.values()) == len(params)
    frozen = FEMBAClassifier(FEMBAConfig(**SMALL, freeze_encoder=True), SHORT)
    frozen.start_stage(Stage("main"), None, False)
    trainable = {n for n, p in frozen.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("classifier.") for n in trainable)


def test_official_keys_map_onto_ours() -> None:
    pre = FEMBAPretrain(FEMBAConfig(**SMALL), SHORT)
    official = {}
    for key, value in pre.state_dict().items():  # the official module's names
        official["model." + key.removeprefix("encoder.")] = value
    mapped = official_to_ours(official)
    assert set(mapped) == set(pre.state_dict())
    pre.load_state_dict(mapped)


@pytest.mark.skipif(
    not (kernels_available() and torch.cuda.is_available()), reason="needs mamba_ssm and CUDA"
)
def test_cuda_kernel_matches_parallel_scan() -> None:
    torch.manual_seed(5)
    block = Mamba(64, expand=4, scan="kernel").cuda()
    x = torch.randn(2, 100, 64, device="cuda")
    y_kernel = block(x)
    block.scan = "parallel"
    assert torch.allclose(block(x), y_kernel, atol=1e-4, rtol=1e-3)
