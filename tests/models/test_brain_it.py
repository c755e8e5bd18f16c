"""brain-it: shapes, cluster fit, member-only attention pooling, training, CLI, adaptation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from factories.cli import cli, sets
from factories.ddp import run_ddp
from factories.toy_store import TOY_TARGETS, TOY_VOXELS, write_toy_store
from safetensors.numpy import load_file
from sklearn.mixture import GaussianMixture

from mindzoo.datasets.store import TensorStore
from mindzoo.datasets.views import FMRIDataset, make_splits
from mindzoo.errors import UserInputError
from mindzoo.models import create_model, load_model
from mindzoo.models.base import AdaptationContext, Stage
from mindzoo.models.brain_it import (
    BrainIT,
    BrainITConfig,
    NearestVoxelAdaptation,
    default_cluster_count,
)
from mindzoo.models.brain_it_layers import VoxelClusterPooling, unpatchify
from mindzoo.models.mindeye_mlp import target_loss
from mindzoo.training import checkpoint as ckpt
from mindzoo.training.decoders import predict
from mindzoo.training.trainer import Trainer, TrainerConfig, seed_everything

SHAPES = {"global": (5,), "spatial": (3, 4)}
TOY_SHAPES = {"global": (8,), "spatial": (4, 3)}
SMALL = BrainITConfig(
    embed_dim=8, n_clusters=4, n_heads=2, n_blocks=1, dropout=0.0, adapt_neighbours=3
)


def test_forward_shapes_and_input_checks() -> None:
    model = BrainIT(SMALL, {"sub-01": 7, "sub-02": 11}, SHAPES)
    out = model(torch.randn(4, 7), "sub-01")
    assert {k: tuple(v.shape) for k, v in out.items()} == {"global": (4, 5), "spatial": (4, 3, 4)}
    assert model(torch.randn(2, 11), "sub-02")["spatial"].shape == (2, 3, 4)
    # one query token per spatial location plus one for the global vector
    assert {k: tuple(v.shape) for k, v in model.query_tokens.items()} == {
        "global": (1, 8),
        "spatial": (3, 8),
    }
    with pytest.raises(UserInputError, match=r"Expected voxels \[B, 7\] for sub-01"):
        model(torch.randn(4, 11), "sub-01")
    with pytest.raises(UserInputError, match="not divisible"):
        BrainIT(SMALL.model_copy(update={"n_heads": 3}), {"sub-01": 7}, SHAPES)
    with pytest.raises(UserInputError, match="encoder_target='pixels'"):
        BrainIT(SMALL.model_copy(update={"encoder_target": "pixels"}), {"sub-01": 7}, SHAPES)


def test_image_target_gets_one_query_token_per_patch_read_out_in_place() -> None:
    model = BrainIT(SMALL, {"sub-01": 7}, {"global": (5,), "lowlevel": (28, 28, 3)})
    assert tuple(model.query_tokens["lowlevel"].shape) == (49, 8)  # 7 x 7 patches of 4 x 4
    assert model.heads["lowlevel"].out_features == 4 * 4 * 3
    assert model(torch.randn(2, 7), "sub-01")["lowlevel"].shape == (2, 28, 28, 3)
    # token k (row-major patch grid) holds the pixels of patch (k // 7, k % 7), row-major inside
    tokens = torch.zeros(1, 49, 48)
    tokens[0, 7 * 2 + 5] = torch.arange(48, dtype=torch.float32)
    image = unpatchify(tokens, (28, 28, 3))[0]
    patch = image[8:12, 20:24]
    assert torch.equal(patch.reshape(-1), torch.arange(48, dtype=torch.float32))
    assert image.abs().sum() == patch.abs().sum()


def test_target_weights_weigh_each_targets_loss() -> None:
    torch.manual_seed(0)
    outputs = {"global": torch.randn(6, 5), "spatial": torch.randn(6, 3, 4)}
    targets = {"global": torch.randn(6, 5), "spatial": torch.randn(6, 3, 4)}
    alone, _ = target_loss({"global": outputs["global"]}, {"global": targets["global"]}, 1, 1, 0.1)
    muted, _ = target_loss(outputs, targets, 1, 1, 0.1, {"spatial": 0.0})
    torch.testing.assert_close(muted, alone)
    spatial, _ = target_loss(
        {"spatial": outputs["spatial"]}, {"spatial": targets["spatial"]}, 1, 1, 0.1
    )
    quarter, _ = target_loss(outputs, targets, 1, 1, 0.1, {"spatial": 0.25})
    torch.testing.assert_close(quarter, (alone + 0.25 * spatial) / 1.25)
    with pytest.raises(UserInputError, match="target_weights names 'low'"):
        BrainIT(SMALL.model_copy(update={"target_weights": {"low": 0.5}}), {"sub-01": 7}, SHAPES)


def test_default_cluster_count_scales_with_voxels() -> None:
    assert [default_cluster_count(n) for n in (10, 75, 1000, 4962, 60000)] == [1, 1, 20, 32, 32]
    model = BrainIT(BrainITConfig(), {"a": 1397, "b": 1105}, SHAPES)
    assert model.n_clusters == 32 and model.pooling.cluster_queries.shape == (32, 64)
    assert create_model("brain-it").n_clusters == 32  # NSD-sized reference subject


def _reference_pooling(
    pool: VoxelClusterPooling,
    voxels: torch.Tensor,
    emb: torch.Tensor,
    clusters: torch.Tensor,
    member_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """The pooling written as an explicit loop over clusters and heads; a member with weight
    ``w`` gets attention ``w exp(s) / sum(w' exp(s'))`` within its cluster."""
    heads, d = pool.n_heads, pool.head_dim
    if member_weights is None:
        member_weights = torch.ones(len(clusters))
    x = voxels.unsqueeze(-1) * emb  # [B, V, D]
    keys, values = pool.key(x), pool.value(x)
    tokens = []
    for c in range(pool.n_clusters):
        members = clusters == c
        parts = []
        for h in range(heads):
            part = slice(h * d, (h + 1) * d)
            q = pool.cluster_queries[c, part]
            if members.any():
                scores = keys[:, members, part] @ q / d**0.5  # [B, n_members]
                attention = member_weights[members] * scores.exp()
                attention = attention / attention.sum(-1, keepdim=True)
                parts.append((attention.unsqueeze(-1) * values[:, members, part]).sum(1))
            else:
                parts.append(torch.zeros(len(voxels), d))
        tokens.append(torch.cat(parts, -1) + pool.root(pool.cluster_queries[c]))
    return pool.norm(F.relu(torch.stack(tokens, 1)))


def test_pooling_attends_to_cluster_members_only() -> None:
    torch.manual_seed(0)
    pool = VoxelClusterPooling(dim=8, n_clusters=4, n_heads=2)
    voxels, emb = torch.randn(3, 10), torch.randn(10, 8)
    clusters = torch.tensor([0, 0, 1, 1, 1, 2, 2, 0, 1, 2])  # cluster 3 has no member
    tokens = pool(voxels, emb, clusters)
    assert tokens.shape == (3, 4, 8)
    torch.testing.assert_close(tokens, _reference_pooling(pool, voxels, emb, clusters))
    # changing voxel 5 (cluster 2) changes token 2 and no other token
    perturbed = voxels.clone()
    perturbed[:, 5] += 3.0
    moved = (pool(perturbed, emb, clusters) - tokens).abs().amax(dim=(0, 2))
    assert moved[2] > 1e-3
    assert torch.equal(moved[[0, 1, 3]], torch.zeros(3))


def test_pooling_weighs_soft_members_within_their_cluster() -> None:
    torch.manual_seed(0)
    pool = VoxelClusterPooling(dim=8, n_clusters=4, n_heads=2)
    voxels, emb = torch.randn(3, 6), torch.randn(6, 8)
    clusters = torch.tensor([0, 0, 1, 1, 2, 2])
    weights = torch.tensor([0.7, 0.3, 0.5, 0.5, 0.9, 0.1])
    tokens = pool(voxels, emb, clusters, weights.log())
    reference = _reference_pooling(pool, voxels, emb, clusters, weights)
    torch.testing.assert_close(tokens, reference)
    assert (tokens - pool(voxels, emb, clusters)).abs().amax() > 1e-3  # the weights matter
    # a voxel split into two entries of the same cluster with weights 1/2 is that voxel
    split = pool(
        voxels[:, [0, 0, 2]],
        emb[[0, 0, 2]],
        torch.tensor([0, 0, 1]),
        torch.tensor([0.5, 0.5, 1.0]).log(),
    )
    torch.testing.assert_close(split, pool(voxels[:, [0, 2]], emb[[0, 2]], torch.tensor([0, 1])))


def _toy_splits(tmp_path: Path, subjects: list[str]) -> tuple[TensorStore, dict[str, FMRIDataset]]:
    store = write_toy_store(tmp_path / "store")
    return store, make_splits(store, subjects, TOY_TARGETS)


def _fit(model: BrainIT, splits: dict[str, FMRIDataset], **kwargs) -> list[dict]:
    config = TrainerConfig(epochs=15, batch_size=16, lr=1e-2, device="cpu", patience=None)
    return (
        Trainer(config).fit(model, splits["train"], splits["val"], progress=False, **kwargs).history
    )


def _source_model(splits: dict[str, FMRIDataset], subjects: list[str]) -> BrainIT:
    seed_everything(0)
    model = BrainIT(SMALL, {s: TOY_VOXELS[s] for s in subjects}, TOY_SHAPES)
    model.target_scaler.fit(splits["train"].target_statistics())
    return model


def test_clusters_are_fitted_jointly_on_encoder_embeddings(tmp_path: Path) -> None:
    subjects = list(TOY_VOXELS)
    _, splits = _toy_splits(tmp_path, subjects)
    model = _source_model(splits, subjects)
    model.start_stage(Stage("bit"), splits["train"], resuming=False)
    train = splits["train"]
    basis = model.encoder_basis.double().numpy()
    embeddings = []
    for subject in subjects:
        batch = train.batch(range(*train.subject_slice(subject).indices(len(train))))
        target = model.target_scaler.transform(batch.targets)["global"].double().numpy()
        z, y = target @ basis, batch.voxels.double().numpy()
        # the whitened basis gives coordinates of unit variance over all training trials
        expected = np.linalg.solve(z.T @ z + 1.0 * len(z) * np.eye(8), z.T @ y).T
        got = model.encoder_embeddings.get(subject).double().numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
        embeddings.append(expected)
    joint = np.concatenate(embeddings)
    joint /= np.linalg.norm(joint, axis=1, keepdims=True)
    labels = GaussianMixture(4, covariance_type="diag", random_state=0, reg_covar=1e-4)
    labels = labels.fit(joint).predict(joint)
    fitted = torch.cat([model.clusters.get(s) for s in subjects]).numpy()
    np.testing.assert_array_equal(fitted, labels)
    # every voxel of every subject has a cluster; clusters mix subjects
    assert [len(model.clusters.get(s)) for s in subjects] == list(TOY_VOXELS.values())
    owner = np.repeat(np.arange(3), list(TOY_VOXELS.values()))
    assert max(len(np.unique(owner[fitted == c])) for c in range(4)) >= 2
    # the learned embeddings start as the encoder embeddings, scaled to mean norm 1
    start = torch.cat([model.voxel_embeddings[s].detach() for s in subjects])
    assert float(start.norm(dim=1).mean()) == pytest.approx(1.0, rel=1e-5)
    assert all(p.requires_grad for p in model.parameters())
    # resuming keeps the fitted state (it comes from the checkpoint)
    state = ckpt.weights(model)
    model.encoder_basis.zero_()
    model.start_stage(Stage("bit"), splits["train"], resuming=True)
    assert float(model.encoder_basis.abs().sum()) == 0.0
    model.load_state_dict(state)


def test_training_lowers_the_loss_and_a_checkpoint_reloads(tmp_path: Path) -> None:
    subjects = ["sub-01", "sub-02"]
    _, splits = _toy_splits(tmp_path, subjects)
    model = _source_model(splits, subjects)
    history = _fit(model, splits)
    assert history[-1]["val_loss"] < 0.7 * history[0]["val_loss"]
    run = tmp_path / "run"
    run.mkdir()
    ckpt.write_json(
        run / "config.json",
        {
            "model": "brain-it",
            "settings": {"model": SMALL.model_dump()},
            "build": model.build_spec(),
        },
    )
    ckpt.save_weights(run / "model.safetensors", ckpt.weights(model))
    reloaded = load_model(run)
    a, b = predict(model, splits["test"]), predict(reloaded, splits["test"])
    for subject in subjects:
        for target in TOY_SHAPES:
            np.testing.assert_array_equal(a[subject][target], b[subject][target])
        assert torch.equal(reloaded.clusters.get(subject), model.clusters.get(subject))


def test_adaptation_trains_only_the_new_voxel_embeddings(tmp_path: Path) -> None:
    store, source = _toy_splits(tmp_path, ["sub-01", "sub-02"])
    model = _source_model(source, ["sub-01", "sub-02"])
    model.config = model.config.model_copy(update={"adapt_clusters": 1})  # hard membership
    _fit(model, source)
    before = ckpt.weights(model)

    new = make_splits(store, ["sub-03"], TOY_TARGETS)
    strategy = model.adaptation_strategy()
    assert isinstance(strategy, NearestVoxelAdaptation)
    strategy.prepare(model, AdaptationContext("sub-03", 25, new["train"], {}))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"voxel_embeddings.sub-03"}
    # each new voxel sits in the cluster most of its k nearest source voxels are in and starts
    # as their similarity-weighted average (k = adapt_neighbours = 3 here)
    bank = torch.cat([model.encoder_embeddings.get(s) for s in ("sub-01", "sub-02")])
    new_emb = model.encoder_embeddings.get("sub-03")
    assert new_emb.abs().sum() > 0
    similarity = F.normalize(new_emb, dim=1) @ F.normalize(bank, dim=1).T
    order = similarity.argsort(dim=1, descending=True)[:, :3]
    source_clusters = torch.cat([model.clusters.get(s) for s in ("sub-01", "sub-02")])
    learned = torch.cat([model.voxel_embeddings[s].detach() for s in ("sub-01", "sub-02")])
    initial = model.voxel_embeddings["sub-03"].detach().clone()
    for voxel in range(25):
        counts = np.bincount(source_clusters[order[voxel]].numpy(), minlength=4)
        assert model.clusters.get("sub-03")[voxel] == counts.argmax()
        weights = torch.softmax(similarity[voxel, order[voxel]] / 0.05, dim=0)
        expected = (weights[:, None] * learned[order[voxel]]).sum(0)
        torch.testing.assert_close(initial[voxel], expected)

    history = _fit(model, new, stages=strategy.stages(model))
    after = ckpt.weights(model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # everything shared: bit-identical
    assert not torch.equal(initial, model.voxel_embeddings["sub-03"])
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    spec = model.build_spec()
    assert spec["n_voxels"] == {"sub-01": 20, "sub-02": 30, "sub-03": 25}
    # the adapted model rebuilds from its spec (cluster count kept) and predicts the same
    rebuilt = BrainIT(SMALL.model_copy(update={"n_clusters": None}), **spec)
    rebuilt.load_state_dict(after)
    a, b = predict(model, new["test"]), predict(rebuilt, new["test"])
    np.testing.assert_allclose(a["sub-03"]["global"], b["sub-03"]["global"], rtol=1e-5, atol=1e-6)


def test_soft_membership_adaptation_votes_seeds_and_reloads(tmp_path: Path) -> None:
    store, source = _toy_splits(tmp_path, ["sub-01", "sub-02"])
    model = _source_model(source, ["sub-01", "sub-02"])
    model.config = model.config.model_copy(update={"adapt_neighbours": 4, "adapt_clusters": 2})
    _fit(model, source)
    before = ckpt.weights(model)
    new = make_splits(store, ["sub-03"], TOY_TARGETS)
    strategy = model.adaptation_strategy()
    strategy.prepare(model, AdaptationContext("sub-03", 25, new["train"], {}))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "voxel_embeddings.sub-03"
    }
    assert model.voxel_embeddings["sub-03"].shape == (25, 2, 8)  # one embedding per cluster

    # expected, voxel by voxel: vote shares = softmax(cosine / 0.05) of the 4 nearest source
    # voxels summed per cluster; the 2 largest (ties to the lower cluster), renormalised; each
    # slot starts as the share-weighted average of the neighbours in that cluster
    bank = torch.cat([model.encoder_embeddings.get(s) for s in ("sub-01", "sub-02")])
    similarity = (
        F.normalize(model.encoder_embeddings.get("sub-03"), dim=1) @ F.normalize(bank, dim=1).T
    )
    source_clusters = torch.cat([model.clusters.get(s) for s in ("sub-01", "sub-02")])
    learned = torch.cat([model.voxel_embeddings[s].detach() for s in ("sub-01", "sub-02")])
    ids, log_weights = model.member_clusters.get("sub-03"), model.member_log_weights.get("sub-03")
    initial = model.voxel_embeddings["sub-03"].detach().clone()
    spare_slots = 0
    for voxel in range(25):
        order = similarity[voxel].argsort(descending=True)[:4]
        weights = torch.softmax(similarity[voxel, order] / 0.05, dim=0)
        labels = source_clusters[order]
        shares = {int(c): float(weights[labels == c].sum()) for c in labels.unique()}
        ranked = sorted(shares, key=lambda c: (-shares[c], c))
        if len(ranked) == 1:  # a spare slot repeats the cluster with weight 0
            ranked, shares = ranked * 2, {ranked[0]: shares[ranked[0]]}
            spare_slots += 1
            assert float(log_weights[voxel, 1]) < -20
        assert ids[voxel].tolist() == ranked[:2]
        assert model.clusters.get("sub-03")[voxel] == ranked[0]
        kept = [shares[c] for c in dict.fromkeys(ranked[:2])]
        np.testing.assert_allclose(
            log_weights[voxel, : len(kept)].exp().numpy(), np.array(kept) / sum(kept), rtol=1e-5
        )
        for slot, cluster in enumerate(ranked[:2]):
            inside = weights * (labels == cluster)
            expected = (inside[:, None] * learned[order]).sum(0) / inside.sum()
            torch.testing.assert_close(initial[voxel, slot], expected)
    assert spare_slots < 25  # most voxels really join two clusters

    history = _fit(model, new, stages=strategy.stages(model))
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    after = ckpt.weights(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.build_spec()["memberships"] == {"sub-03": 2}
    # the adapted model reloads from config.json + safetensors and predicts the same
    run = tmp_path / "adapted"
    run.mkdir()
    config = {"model": "brain-it", "settings": {"model": model.config.model_dump()}}
    ckpt.write_json(run / "config.json", {**config, "build": model.build_spec()})
    ckpt.save_weights(run / "model.safetensors", after)
    reloaded = load_model(run)
    a, b = predict(model, new["test"]), predict(reloaded, new["test"])
    np.testing.assert_allclose(a["sub-03"]["global"], b["sub-03"]["global"], rtol=1e-5, atol=1e-6)
    with pytest.raises(UserInputError, match="cannot refit its clusters"):
        reloaded.fit_clusters(source["train"])


def test_new_voxels_match_source_voxels_of_their_own_roi(tmp_path: Path) -> None:
    store, source = _toy_splits(tmp_path, ["sub-01", "sub-02"])
    model = _source_model(source, ["sub-01", "sub-02"])
    model.config = model.config.model_copy(update={"adapt_clusters": 1})  # k = 3 neighbours
    rois = {"sub-01": np.array(["V1", "FFA"] * 10), "sub-02": np.array(["V1"] * 28 + ["PPA"] * 2)}
    model.set_voxel_rois(rois)
    assert model.roi_names == ["FFA", "PPA", "V1"]
    assert model.voxel_rois.get("sub-02").tolist() == [2] * 28 + [1] * 2
    model.fit_clusters(source["train"])
    new = make_splits(store, ["sub-03"], TOY_TARGETS)
    emb = model.encode_voxels(new["train"], "sub-03")
    new_rois = np.array(["V1"] * 10 + ["FFA"] * 10 + ["PPA"] * 3 + ["MT"] * 2)
    free_model = BrainIT(SMALL.model_copy(update={"adapt_clusters": 1}), **model.build_spec())
    free_model.load_state_dict(ckpt.weights(model))
    free_model.config = free_model.config.model_copy(update={"adapt_same_roi": False})
    free = free_model.add_subject("sub-03", emb, new_rois)
    top = model.add_subject("sub-03", emb, new_rois)

    source_rois = np.concatenate([rois["sub-01"], rois["sub-02"]])
    bank = torch.cat([model.encoder_embeddings.get(s) for s in ("sub-01", "sub-02")])
    similarity = (F.normalize(emb, dim=1) @ F.normalize(bank, dim=1).T).numpy()
    for voxel in range(20):  # V1 and FFA: the 3 most similar source voxels of the same ROI
        same = np.flatnonzero(source_rois == new_rois[voxel])
        expected = same[np.argsort(-similarity[voxel, same])[:3]]
        assert top[voxel].tolist() == expected.tolist()
    assert not torch.equal(top[:20], free[:20])  # the restriction changed some neighbours
    # PPA: only 2 source voxels (48, 49) < k; the third slot gets no vote and no weight
    learned = torch.cat([model.voxel_embeddings[s].detach() for s in ("sub-01", "sub-02")])
    clusters = torch.cat([model.clusters.get(s) for s in ("sub-01", "sub-02")])
    for voxel in range(20, 23):
        assert sorted(top[voxel, :2].tolist()) == [48, 49]
        pair = top[voxel, :2]
        weights = torch.softmax(torch.from_numpy(similarity[voxel, pair.numpy()]) / 0.05, dim=0)
        torch.testing.assert_close(
            model.voxel_embeddings["sub-03"][voxel].detach(), weights @ learned[pair]
        )
        votes = np.bincount(clusters[pair].numpy(), minlength=4)
        assert model.clusters.get("sub-03")[voxel] == votes.argmax()
    # MT: no source voxel has the label, so it searches all of them
    assert torch.equal(top[23:], free[23:])
    assert model.voxel_rois.get("sub-03").tolist() == [2] * 10 + [0] * 10 + [1] * 3 + [-1] * 2
    assert model.build_spec()["roi_names"] == ["FFA", "PPA", "V1"]
    rebuilt = BrainIT(SMALL, **model.build_spec())
    rebuilt.load_state_dict(ckpt.weights(model))
    assert torch.equal(rebuilt.voxel_rois.get("sub-01"), model.voxel_rois.get("sub-01"))
    with pytest.raises(UserInputError, match="not a subject"):
        BrainIT(SMALL, {"sub-01": 20}, TOY_SHAPES).set_voxel_rois({"sub-09": np.array(["V1"])})


# --- on the tiny synthetic-fmri store, through the CLI -------------------------------------


@pytest.fixture(scope="module")
def tiny_store(shared_tiny_store: Path) -> Path:
    """The session's read-only tiny store (tests/conftest.py)."""
    return shared_tiny_store


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This module's run folders (the shared store's folder is not written to)."""
    return tmp_path_factory.mktemp("brainit")


def test_cli_train_evaluate_beats_chance_and_reloads(tiny_store: Path, runs: Path) -> None:
    run = runs / "run"
    # 2 subjects x 54 trials: batches of 16 give each of the default 20 epochs 8 steps. No
    # validation carve: a handful of validation trials picked early weights (two-way .55-.58 at
    # seeds 0-2 with today's packages); all trials for 20 epochs give .69-.74 at seeds 0-2.
    small_batches = sets(["trainer.batch_size=16", "data.val_fraction=0"])
    assert (
        cli("train", "brain-it", "--store", str(tiny_store), "--out", str(run), *small_batches) == 0
    )
    config = json.loads((run / "config.json").read_text())
    assert config["build"]["target_shapes"] == {
        "spatial": [49, 320],
        "global": [1280],
        "lowlevel": [28, 28, 3],
    }
    predictions = load_file(str(run / "predictions.safetensors"))
    assert predictions["sub-01/test_pred"].shape == (8, 1280)
    assert predictions["sub-01/outputs/spatial"].shape == (8, 49, 320)
    assert predictions["sub-01/outputs/lowlevel"].shape == (8, 28, 28, 3)
    np.testing.assert_array_equal(
        predictions["sub-01/test_pred"], predictions["sub-01/outputs/global"]
    )
    out = run / "eval"
    assert cli("evaluate", str(run), "--out", str(out)) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "brain-it"
    # chance: top-1 1/8, two-way 0.5
    assert metrics["mean"]["retrieval_top1.efficientnet-lite0"] >= 0.25
    assert metrics["mean"]["two_way_id.efficientnet-lite0"] > 0.65

    model = load_model(run)
    store = TensorStore.open(tiny_store)
    test = make_splits(store, config["subjects"], {"global": "efficientnet-lite0/global"})["test"]
    for subject, outputs in predict(model, test).items():
        np.testing.assert_array_equal(outputs["global"], predictions[f"{subject}/test_pred"])


def test_cli_adapt_matches_new_voxels_within_their_roi(tiny_store: Path, runs: Path) -> None:
    store = TensorStore.open(tiny_store)
    run, out = runs / "run-sub01", runs / "adapted-sub02"
    quick = sets(["trainer.batch_size=16", "trainer.epochs=2"])
    args = ["train", "brain-it", "--store", str(tiny_store), "--subjects", "01", "--out", str(run)]
    assert cli(*args, *quick) == 0
    labels = {s: store.voxel_rois(s) for s in store.subjects}
    names = sorted(set(labels["sub-01"]))
    assert (
        len(names) > 1
        and json.loads((run / "config.json").read_text())["build"]["roi_names"] == names
    )
    model = load_model(run)
    assert model.voxel_rois.get("sub-01").tolist() == [names.index(n) for n in labels["sub-01"]]

    args = ["adapt", str(run), "--store", str(tiny_store), "--subject", "02", "--out", str(out)]
    assert cli(*args, "--fraction", "0.5", *quick) == 0
    adapted = load_model(out)
    codes = adapted.voxel_rois.get("sub-02").numpy()
    expected = [names.index(n) if n in names else -1 for n in labels["sub-02"]]
    assert codes.tolist() == expected
    # every new voxel of a ROI sub-01 also has joined only clusters that voxels of that ROI
    # are in (its neighbours all come from the ROI)
    source_codes = model.voxel_rois.get("sub-01").numpy()
    source_clusters = model.clusters.get("sub-01").numpy()
    members = adapted.member_clusters.get("sub-02").numpy()
    weights = adapted.member_log_weights.get("sub-02").exp().numpy()
    for voxel in np.flatnonzero(codes >= 0):
        allowed = set(source_clusters[source_codes == codes[voxel]].tolist())
        assert set(members[voxel][weights[voxel] > 0].tolist()) <= allowed


_DDP_SCRIPT = """
import json, sys, torch
from pathlib import Path
torch.set_num_threads(1)
from factories.toy_store import TOY_TARGETS, TOY_VOXELS
from mindzoo.datasets.store import TensorStore
from mindzoo.datasets.views import make_splits
from mindzoo.models.brain_it import BrainIT, BrainITConfig
from mindzoo.training.trainer import Trainer, TrainerConfig, seed_everything

store, out = TensorStore.open(sys.argv[1]), sys.argv[2]
splits = make_splits(store, list(TOY_VOXELS), TOY_TARGETS)
trainer = Trainer(TrainerConfig(epochs=3, batch_size=16, lr=3e-3, device="cpu", patience=None))
seed_everything(0)
config = BrainITConfig(
    embed_dim=8, n_clusters=4, n_heads=2, n_blocks=1, dropout=0.0, clip_weight=0.0
)
model = BrainIT(config, TOY_VOXELS, {"global": (8,), "spatial": (4, 3)})
model.target_scaler.fit(splits["train"].target_statistics())
state = trainer.fit(model, splits["train"], splits["val"], progress=False)
if trainer.accelerator.is_main_process:
    result = {"history": state.history, "world": trainer.accelerator.num_processes}
    Path(out + ".json").write_text(json.dumps(result))
"""


@pytest.mark.slow
def test_two_process_cpu_ddp_matches_one_process(tmp_path: Path) -> None:
    # per-subject train/val sizes are multiples of 16, so each global batch splits evenly;
    # SoftCLIP is off because its in-batch negatives differ between one batch of 16 and two of 8
    store = write_toy_store(tmp_path / "store", n_train=48, n_val=16)
    results = run_ddp(_DDP_SCRIPT, store.path, tmp_path, port_base=29510)
    histories = {}
    for world, result in results.items():
        assert result["world"] == world
        histories[world] = result["history"]
    assert len(histories[1]) == len(histories[2]) == 3
    for one, two in zip(histories[1], histories[2], strict=True):
        assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-4)
        assert two["val_loss"] == pytest.approx(one["val_loss"], rel=1e-4)
    assert histories[1][-1]["train_loss"] < histories[1][0]["train_loss"]
