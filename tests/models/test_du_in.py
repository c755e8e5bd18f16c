"""Du-IN: shapes, cosine codebook (lookup, EMA, k-means init), masked modelling, the three
training stages and their chaining, checkpoints, and `train` + `evaluate` through the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from factories.cli import cli, error_lines, sets
from factories.ephys import write_ephys_store
from safetensors.numpy import load_file
from safetensors.torch import load_file as load_torch

from mindzoo.datasets.ephys_views import EphysDataset, RecordingInfo, random_shift
from mindzoo.datasets.store import TensorStore
from mindzoo.errors import UserInputError
from mindzoo.models import create_model, load_model
from mindzoo.models.du_in import (
    CosineVectorQuantizer,
    DuINConfig,
    DuINVQVAE,
    SubjectBatchNorm,
    first_conv_geometry,
    masked_code_loss,
    symmetric_masks,
)
from mindzoo.models.du_in_stages import build_stage, subject_of_key
from mindzoo.training.ephys import resolve_ephys_settings, train_ephys

TINY_MODEL = [
    "model.conv_filters=[8,8,4]",
    "model.n_layers=1",
    "model.n_heads=2",
    "model.d_head=8",
    "model.d_ff=32",
    "model.codebook_size=32",
    "model.d_codex=8",
    "model.n_decoder_layers=1",
]
TINY = [*TINY_MODEL, "trainer.epochs=3", "trainer.batch_size=16"]


def small_config(**changes) -> DuINConfig:
    base = {
        "conv_filters": [8, 8, 4],
        "n_layers": 1,
        "n_heads": 2,
        "d_head": 8,
        "d_ff": 32,
        "codebook_size": 16,
        "d_codex": 8,
        "n_decoder_layers": 1,
    }
    return DuINConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ephys_store(tmp_path_factory.mktemp("duin") / "store")


@pytest.fixture(scope="module")
def stages(store: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """vqvae -> mae -> cls (from the mae), trained briefly on the tiny store."""
    root = tmp_path_factory.mktemp("stages")
    torch.set_num_threads(1)
    vqvae = train_ephys("du-in-vqvae", store, root / "vqvae", overrides=TINY, progress=False)
    mae = train_ephys(
        "du-in-mae", store, root / "mae", overrides=[*TINY, f"init={vqvae}"], progress=False
    )
    return {"vqvae": vqvae, "mae": mae, "root": root}


# ------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize(
    ("sfreq", "n_times", "patch_len", "geometry"),
    [(1000.0, 3000, 100, (19, 10, 9)), (250.0, 500, 25, (3, 2, 1)), (200.0, 400, 20, (3, 2, 1))],
)
def test_shapes_follow_the_sampling_rate(sfreq, n_times, patch_len, geometry) -> None:
    info = RecordingInfo({"sub-01": 5, "sub-02": 7}, n_times=n_times, sfreq=sfreq, n_classes=6)
    config = small_config()
    assert first_conv_geometry(patch_len, config.patch_steps) == geometry
    model = build_stage(config, info, "cls").eval()
    n_patches = n_times // patch_len
    steps = -(-patch_len // geometry[1])  # ceil
    assert model.encoder.patch_len == patch_len and model.encoder.d_model == steps * 4
    x = torch.randn(3, 7, n_times)
    tokens = model.encoder(x, "sub-02")
    assert tokens.shape == (3, n_patches, steps * 4)
    assert model.logits(x, "sub-02").shape == (3, 6)
    recon, _, codes = build_stage(config, info, "vqvae").eval().reconstruct(x, "sub-02")
    assert recon.shape == (3, 7, n_patches * patch_len) and codes.shape == (3, n_patches)


def test_paper_defaults_have_the_published_size() -> None:
    # Table 2 gives 4.38M for Du-IN; ours (no contrastive block, no sigmoid) is within 5%
    model = create_model("du-in-cls")
    assert model.encoder.d_model == 160 and model.encoder.n_patches == 30
    count = sum(p.numel() for p in model.parameters())
    assert 4.1e6 < count < 4.4e6


# ------------------------------------------------------------------------------------ codebook
def test_lookup_is_cosine_and_scale_free() -> None:
    quantizer = CosineVectorQuantizer(small_config(codebook_size=8, d_codex=4), d_model=6)
    z = torch.randn(50, 4)
    expected = (F.normalize(z, dim=-1) @ F.normalize(quantizer.codebook, dim=-1).T).argmax(-1)
    assert torch.equal(quantizer.lookup(z), expected)
    assert torch.equal(quantizer.lookup(1e-3 * z), expected)
    # a long vector close in Euclidean distance to code 0 but pointing at code 1 takes code 1
    quantizer.codebook.copy_(torch.eye(8, 4))
    query = torch.tensor([[0.9, 3.0, 0.0, 0.0]])
    assert int(quantizer.lookup(query)) == 1


def test_ema_update_moves_codes_to_the_mean_of_their_vectors() -> None:
    quantizer = CosineVectorQuantizer(small_config(codebook_size=4, d_codex=3), d_model=6)
    codebook = torch.tensor([[1.0, 0.2, 0], [0, 1, 0], [0, 0, 1], [-1, 0, 0]])
    quantizer.codebook.copy_(F.normalize(codebook, dim=-1))
    before = quantizer.codebook.clone()
    z = F.normalize(torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.6, 0.2]]), dim=-1)
    codes = quantizer.lookup(z)
    assert codes.tolist() == [0, 0]
    quantizer.ema_update(z, codes)
    # first update from empty statistics: the code becomes the normalised mean of its vectors
    torch.testing.assert_close(
        quantizer.codebook[0], F.normalize(z.mean(0), dim=0), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(quantizer.codebook[1:], before[1:])  # unused codes stay
    assert torch.allclose(quantizer.codebook.norm(dim=-1), torch.ones(4))
    # a second batch pulls code 0 further toward its direction, weighted by the EMA counts
    target = F.normalize(torch.tensor([1.0, 0.0, 1.0]), dim=0)
    before_cos = float(quantizer.codebook[0] @ target)
    quantizer.ema_update(target[None].repeat(4, 1), torch.zeros(4, dtype=torch.long))
    assert float(quantizer.codebook[0] @ target) > before_cos


def test_kmeans_init_finds_the_clusters_once() -> None:
    torch.manual_seed(0)
    quantizer = CosineVectorQuantizer(small_config(codebook_size=3, d_codex=5), d_model=5)
    quantizer.project = torch.nn.Identity()  # look at the quantizer alone
    centres = F.normalize(torch.randn(3, 5), dim=-1)
    z = centres.repeat_interleave(40, 0) + 0.05 * torch.randn(120, 5)
    quantizer.train()
    _, _, codes = quantizer(z[None])
    assert bool(quantizer.initialised)
    similarity = centres @ quantizer.codebook.T
    assert torch.all(similarity.max(dim=1).values > 0.99)
    assert len(set(codes.flatten().tolist())) == 3
    first = quantizer.codebook.clone()
    quantizer(z[None] + 5.0)  # no second k-means: only the EMA step moves the codes
    assert torch.all((quantizer.codebook * first).sum(-1) > 0.5)


def test_straight_through_gradient_reaches_the_encoder() -> None:
    info = RecordingInfo({"sub-01": 3}, n_times=100, sfreq=100.0, n_classes=2)
    model = DuINVQVAE(small_config(), info).train()
    out = model(torch.randn(4, 3, 100), "sub-01")
    out["loss"].backward()
    assert model.encoder.subject.layers["sub-01"].weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------- masked modelling
def test_symmetric_masks_hide_half_and_their_complement_the_rest() -> None:
    torch.manual_seed(1)
    mask = symmetric_masks(64, 30, 0.5)
    assert mask.shape == (64, 30)
    assert torch.all(mask.sum(1) == 15) and torch.all((~mask).sum(1) == 15)
    assert not torch.any(mask & ~mask) and torch.all(mask | ~mask)
    assert len({tuple(row.tolist()) for row in mask}) > 60  # random per trial
    # every position is hidden about half the time
    assert torch.all((mask.float().mean(0) - 0.5).abs() < 0.25)


def test_mae_loss_counts_only_masked_patches() -> None:
    torch.manual_seed(2)
    logits_a, logits_b = torch.randn(2, 6, 10), torch.randn(2, 6, 10)
    mask = symmetric_masks(2, 6, 0.5)
    codes = torch.randint(0, 10, (2, 6))
    loss = masked_code_loss(logits_a, logits_b, mask, codes)
    expected = np.mean(
        [
            float(
                F.cross_entropy(
                    (logits_a if mask[b, p] else logits_b)[b, p][None], codes[b, p][None]
                )
            )
            for b in range(2)
            for p in range(6)
        ]
    )
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    # predictions of a view at positions it can see do not count
    noisy_a = logits_a + 100 * torch.randn_like(logits_a) * (~mask)[..., None]
    noisy_b = logits_b + 100 * torch.randn_like(logits_b) * mask[..., None]
    assert float(masked_code_loss(noisy_a, noisy_b, mask, codes)) == pytest.approx(float(loss))
    assert float(masked_code_loss(noisy_b, noisy_a, mask, codes)) != pytest.approx(float(loss))


# ------------------------------------------------------------------------------ data and runs
def test_shift_augmentation_moves_trials_with_zero_fill() -> None:
    torch.manual_seed(3)
    x = torch.arange(1, 21, dtype=torch.float32).reshape(1, 1, 20).repeat(50, 2, 1)
    shifted = random_shift(x, 3)
    seen = set()
    for row in shifted:
        assert torch.equal(row[0], row[1])  # one shift for all channels of a trial
        valid = torch.nonzero(row[0]).flatten()
        shift = int(valid[0]) + 1 - int(row[0, valid[0]])  # out[t] = x[t - shift]
        seen.add(shift)
        assert -3 <= shift <= 3 and len(valid) == 20 - abs(shift)
        assert torch.equal(row[0, valid], x[0, 0, valid - shift])
    assert seen == set(range(-3, 4))


def test_dataset_reads_splits_lazily_or_preloaded(store: Path) -> None:
    opened = TensorStore.open(store)
    lazy = EphysDataset(opened, ["sub-01", "sub-02"], "train", preload_config(0))
    eager = EphysDataset(opened, ["sub-01", "sub-02"], "train")
    assert lazy.sizes == eager.sizes == [48, 48]
    rows = [50, 60, 55]
    a, b = lazy.batch(rows), eager.batch(rows)
    assert a.subject == "sub-02" and torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    trials = opened.trials("sub-02")
    train_rows = np.flatnonzero(trials["split"] == "train")
    expected = opened.signals("sub-02")[int(train_rows[2])]
    np.testing.assert_array_equal(a.x[0].numpy(), expected)


def preload_config(mb: float):
    from mindzoo.datasets.ephys_views import EphysDataConfig

    return EphysDataConfig(preload_max_mb=mb)


def test_cls_training_beats_chance_and_reloads_identically(store: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    run = train_ephys(
        "du-in-cls",
        store,
        tmp_path / "cls",
        overrides=[*TINY_MODEL, "trainer.epochs=12", "trainer.lr=0.003", "data.shift_seconds=0.05"],
        progress=False,
    )
    predictions = load_file(str(run / "predictions.safetensors"))
    accuracies = [
        float(np.mean(predictions[f"{s}/test_logits"].argmax(1) == predictions[f"{s}/test_labels"]))
        for s in ("sub-01", "sub-02")
    ]
    assert np.mean(accuracies) > 0.6  # 4 classes: chance 0.25
    model = load_model(run)
    test = EphysDataset(TensorStore.open(store), ["sub-01"], "test")
    with torch.no_grad():
        logits = model.logits(test.batch(range(len(test))).x, "sub-01").numpy()
    np.testing.assert_array_equal(logits, predictions["sub-01/test_logits"])


def test_mae_learns_the_codes_of_its_vqvae_run(stages: dict[str, Path]) -> None:
    vqvae = load_torch(str(stages["vqvae"] / "model.safetensors"))
    mae = load_torch(str(stages["mae"] / "model.safetensors"))
    teacher = {k[len("teacher.") :]: v for k, v in mae.items() if k.startswith("teacher.")}
    assert teacher.keys() == vqvae.keys()
    assert all(torch.equal(teacher[k], vqvae[k]) for k in vqvae)  # frozen: unchanged
    # the student encoder is a fresh one, not the tokenizer's
    assert not torch.equal(
        mae["encoder.tokenizer.convs.0.weight"], vqvae["encoder.tokenizer.convs.0.weight"]
    )
    config = json.loads((stages["mae"] / "config.json").read_text())
    assert config["init"] == str(stages["vqvae"].resolve())
    history = json.loads((stages["mae"] / "metrics.json").read_text())["training"]["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_cls_starts_from_the_mae_encoder(stages: dict[str, Path], store: Path) -> None:
    torch.set_num_threads(1)
    run = train_ephys(
        "du-in-cls",
        store,
        stages["root"] / "cls-mae",
        overrides=[
            "trainer.epochs=1",
            "trainer.lr=1e-9",  # one step that barely moves: the weights are the mae's
            "trainer.weight_decay=0",
            "model.n_layers=4",  # overridden by the init run's encoder settings
            f"init={stages['mae']}",
        ],
        progress=False,
    )
    mae = load_torch(str(stages["mae"] / "model.safetensors"))
    cls = load_torch(str(run / "model.safetensors"))
    key = "encoder.transformer.layers.0.qkv.weight"
    torch.testing.assert_close(cls[key], mae[key], atol=1e-6, rtol=0)
    assert "encoder.transformer.layers.1.qkv.weight" not in cls
    assert json.loads((run / "config.json").read_text())["settings"]["model"]["n_layers"] == 1


def test_wrong_init_runs_are_one_line_errors(
    stages: dict[str, Path], store: Path, tmp_path: Path
) -> None:
    with pytest.raises(UserInputError, match="not a finished run") as missing:
        train_ephys("du-in-mae", store, tmp_path / "a", overrides=[*TINY, f"init={tmp_path}/nope"])
    assert "\n" not in str(missing.value)
    with pytest.raises(
        UserInputError, match="is a du-in-mae run; du-in-mae starts from a du-in-vqvae"
    ):
        train_ephys("du-in-mae", store, tmp_path / "b", overrides=[*TINY, f"init={stages['mae']}"])
    with pytest.raises(UserInputError, match="--set init=RUN_DIR"):
        train_ephys("du-in-mae", store, tmp_path / "c", overrides=TINY)
    with pytest.raises(UserInputError, match="starts from scratch"):
        train_ephys(
            "du-in-vqvae", store, tmp_path / "d", overrides=[*TINY, f"init={stages['vqvae']}"]
        )
    assert not any(tmp_path.iterdir())  # nothing written


def test_tokenizer_norm_keeps_statistics_per_subject() -> None:
    """Subjects whose spatial layers output different scales are each normalised correctly in
    eval mode (a shared running mean/var would leave sub-02 at 10x)."""
    torch.manual_seed(0)
    norm = SubjectBatchNorm(3, ["sub-01", "sub-02"])
    scale = {"sub-01": 1.0, "sub-02": 10.0}
    norm.train()
    for _ in range(200):
        for subject, k in scale.items():
            norm(k * torch.randn(64, 3, 5) + k, subject)
    norm.eval()
    for subject, k in scale.items():
        out = norm(k * torch.randn(512, 3, 5) + k, subject)
        assert out.mean().item() == pytest.approx(0.0, abs=0.1)
        assert out.std().item() == pytest.approx(1.0, abs=0.1)
    assert subject_of_key("tokenizer.norms.1.stats.sub-02.running_var") == "sub-02"
    assert subject_of_key("subject.layers.sub-01.weight") == "sub-01"
    assert subject_of_key("tokenizer.norms.1.weight") is None
    assert subject_of_key("transformer.layers.0.qkv.weight") is None


def test_classifier_head_starts_as_du_in() -> None:
    """Du-IN's head init (N(0, 0.02) weights, zero biases)."""
    torch.manual_seed(0)
    info = RecordingInfo({"sub-01": 4}, n_times=100, sfreq=100.0, n_classes=5)
    model = build_stage(small_config(), info, "cls")
    hidden, out = model.head[1], model.head[4]
    for layer in (hidden, out):
        assert torch.count_nonzero(layer.bias) == 0
        assert layer.weight.std().item() == pytest.approx(0.02, rel=0.15)


def test_channel_mismatch_compares_names_then_counts() -> None:
    names = {"sub-01": ["A1-A2", "A2-A3"], "sub-02": ["B1-B2"]}
    info = RecordingInfo({"sub-01": 2, "sub-02": 1}, 100, 100.0, 3, names)
    assert info.channel_mismatch(info) is None
    other = RecordingInfo({"sub-01": 2}, 100, 100.0, 1, {"sub-01": ["A1-A2", "A3-A4"]})
    message = info.channel_mismatch(other)
    assert message is not None and message.startswith("sub-01") and "A2-A3" in message
    # a subject only one side has is not a mismatch (a new subject gets fresh layers)
    assert info.channel_mismatch(RecordingInfo({"sub-03": 5}, 100, 100.0, 1)) is None
    # runs written before channel names were kept: counts decide
    assert info.channel_mismatch(RecordingInfo({"sub-01": 2}, 100, 100.0, 1)) is None
    assert "2 channels here and 3" in info.channel_mismatch(RecordingInfo({"sub-01": 3}, 1, 1.0, 1))


def test_cls_refuses_an_encoder_pretrained_on_other_channels(
    stages: dict[str, Path], tmp_path: Path
) -> None:
    """A pre-training store and a labeled store must select the same channels per subject."""
    other = write_ephys_store(tmp_path / "other", n_channels=(7, 8), seed=1)
    with pytest.raises(UserInputError, match="pre-trained on other channels: sub-01") as err:
        train_ephys("du-in-cls", other, tmp_path / "cls", overrides=[f"init={stages['mae']}"])
    assert "\n" not in str(err.value)
    assert not (tmp_path / "cls").exists()
    with pytest.raises(UserInputError, match="tokenizer was trained on other channels"):
        train_ephys("du-in-mae", other, tmp_path / "mae", overrides=[f"init={stages['vqvae']}"])
    assert not (tmp_path / "mae").exists()


def test_resume_continues_to_the_same_weights(store: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    settings = [*TINY, "trainer.epochs=2", "trainer.keep_checkpoints=5"]
    full = train_ephys("du-in-vqvae", store, tmp_path / "full", overrides=settings, progress=False)
    # simulate a kill after the first epoch: keep only its checkpoint, drop the results
    partial = tmp_path / "partial"
    train_ephys("du-in-vqvae", store, partial, overrides=settings, progress=False)
    checkpoints = sorted((partial / "checkpoints").iterdir())
    for later in checkpoints[1:]:
        shutil.rmtree(later)
    for name in ("metrics.json", "model.safetensors"):
        (partial / name).unlink()
    train_ephys("du-in-vqvae", store, partial, overrides=settings, resume=True, progress=False)
    a = load_torch(str(full / "model.safetensors"))
    b = load_torch(str(partial / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_train_and_evaluate(store: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    args = sets([*TINY, "trainer.epochs=2"])
    assert cli("train", "du-in-cls", "--store", str(store), "--out", str(run), *args) == 0
    assert cli("evaluate", str(run)) == 0
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["kind"] == "ephys-classifier"
    for subject in ("sub-01", "sub-02"):
        scores = metrics["subjects"][subject]
        assert 0 <= scores["top1"] <= scores["top5"] <= 1
        assert scores["top5"] == 1.0  # 4 classes: the true one is always in the top 5
        assert scores["chance.top1"] == 0.25 and scores["n_test_trials"] == 16
        assert 0 <= scores["balanced_accuracy"] <= 1
    assert (run / "eval" / "confusion_sub-01.png").stat().st_size > 1000
    capsys.readouterr()
    assert (
        cli(
            "train",
            "du-in-mae",
            "--store",
            str(store),
            "--out",
            str(tmp_path / "m"),
            "--set",
            "init=/nonexistent",
        )
        == 2
    )
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "init=/nonexistent" in lines[0]


def test_presets_cpu_default_and_paper_variant() -> None:
    default = resolve_ephys_settings("du-in-cls", [])
    paper = resolve_ephys_settings("du-in-cls", ["preset=paper", "trainer.epochs=3"])
    assert default.model["n_layers"] == 2 and default.model["conv_filters"] == [32, 32, 8]
    assert paper.model["n_layers"] == 8 and paper.model["conv_filters"] == [128, 128, 16]
    assert paper.trainer["epochs"] == 3 and paper.trainer["lr"] == 0.0002
    with pytest.raises(UserInputError, match="presets of du-in-cls: du-in-cls-paper"):
        resolve_ephys_settings("du-in-cls", ["preset=huge"])


def test_dead_codes_restart_at_batch_vectors_only_when_asked() -> None:
    torch.manual_seed(4)
    z = F.normalize(torch.randn(6, 3), dim=-1)
    for threshold, restarted in ((0.0, False), (0.5, True)):
        config = small_config(codebook_size=5, d_codex=3, dead_code_threshold=threshold)
        quantizer = CosineVectorQuantizer(config, d_model=3)
        before = quantizer.codebook.clone()
        quantizer.ema_update(z, torch.zeros(6, dtype=torch.long))  # every vector on code 0
        rest = quantizer.codebook[1:]
        matches = (rest @ z.T).max(dim=1).values
        assert bool(torch.all(matches > 1 - 1e-5)) is restarted
        if not restarted:
            torch.testing.assert_close(rest, before[1:])
        else:
            assert torch.all(quantizer.cluster_size[1:] == 1.0)
