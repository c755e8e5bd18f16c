"""adapt: new-subject adaptation of a pre-trained decoder, on a tiny 4-subject synthetic store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from factories.cli import TINY, cli, error_lines, sets
from safetensors.numpy import load_file

from mindzoo.datasets.store import TensorStore
from mindzoo.datasets.views import DataConfig
from mindzoo.models import load_model
from mindzoo.models.base import AdaptationContext, FMRIDecoder
from mindzoo.models.mindeye_mlp import MindEyeMLP, NewSubjectLayer
from mindzoo.training.adapt import adapt_model, adaptation_splits, adaptation_trials
from mindzoo.training.decoders import predict
from mindzoo.training.trainer import Trainer

TARGETS = {"global": "efficientnet-lite0/global"}
# pre-training on 3 tiny subjects (54 training trials each): 2 batches a subject an epoch
PRETRAIN = ["trainer.epochs=20", "trainer.batch_size=32", "model.hidden_dim=64"]
ADAPT = ["trainer.epochs=40", "trainer.batch_size=32", "trainer.lr=0.003"]


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("adapt") / "store"
    four = [*TINY, "simulator.n_subjects=4"]
    assert cli("prepare", "synthetic-fmri", "--out", str(out), "--seed", "3", *sets(four)) == 0
    return out


@pytest.fixture(scope="module")
def pretrained(tiny_store: Path) -> Path:
    run = tiny_store.parent / "pre"
    args = ["train", "mindeye-mlp", "--store", str(tiny_store), "--out", str(run)]
    assert cli(*args, "--subjects", "01,02,03", *sets(PRETRAIN)) == 0
    return run


def test_adaptation_trials_are_the_first_in_acquisition_order(tiny_store: Path) -> None:
    store = TensorStore.open(tiny_store)
    table = store.trials("sub-04")
    rows, available = adaptation_trials(store, "sub-04", n_trials=10)
    assert available == int((table["split"] == "train").sum()) == 60
    chosen = table.iloc[rows]
    assert (chosen["split"] == "train").all() and len(chosen) == 10
    later = table[(table["split"] == "train")].drop(chosen.index)
    key = ["session", "run", "onset"]
    last = tuple(chosen.sort_values(key).iloc[-1][key])
    assert all(tuple(r) > last for r in later[key].itertuples(index=False))
    assert len(adaptation_trials(store, "sub-04", fraction=0.25)[0]) == 15
    assert len(adaptation_trials(store, "sub-04", fraction=1.0)[0]) == 60


def test_splits_never_hold_test_stimuli_and_mix_sources_without_val_stimuli(
    tiny_store: Path,
) -> None:
    store = TensorStore.open(tiny_store)
    rows, _ = adaptation_trials(store, "sub-04", n_trials=30)
    data = DataConfig(val_fraction=0.2)
    splits = adaptation_splits(store, "sub-04", rows, TARGETS, data, ["sub-01", "sub-02"])
    stim = store.trials("sub-04")["stimulus_index"].to_numpy()
    own_train = splits["subject_train"].stimuli("sub-04")
    val = splits["val"].stimuli("sub-04")
    assert splits["val"].subjects == ["sub-04"] and len(val) > 0
    assert sorted([*own_train, *val]) == sorted(stim[rows])  # exactly the chosen trials
    assert not set(own_train) & set(val)
    test = set(splits["test"].stimuli("sub-04"))
    assert len(test) == 8 and not test & set(stim[rows])
    assert splits["train"].subjects == ["sub-04", "sub-01", "sub-02"]
    for source in ("sub-01", "sub-02"):
        mixed = splits["train"].stimuli(source)
        assert len(mixed) > 0 and not set(mixed) & (set(val) | test)


@pytest.fixture
def fit_data(monkeypatch: pytest.MonkeyPatch) -> dict[str, set]:
    """Records the stimuli and subjects of the datasets the Trainer trains and validates on."""
    seen: dict[str, set] = {}
    original = Trainer.fit

    def spy(self, model, train, val=None, **kwargs):
        seen["train"] = {int(s) for p in train.parts for s in p.stimulus_index}
        seen["val"] = {int(s) for p in val.parts for s in p.stimulus_index}
        seen["subjects"] = set(train.subjects) | set(val.subjects)
        return original(self, model, train, val, **kwargs)

    monkeypatch.setattr(Trainer, "fit", spy)
    return seen


def _test_stimuli(store_path: Path, subject: str) -> set[int]:
    table = TensorStore.open(store_path).trials(subject)
    return {int(s) for s in table.query("split == 'test'")["stimulus_index"]}


def test_adapt_to_a_held_out_subject_end_to_end(
    pretrained: Path, tiny_store: Path, fit_data: dict[str, set]
) -> None:
    out = tiny_store.parent / "adapted"
    args = ["adapt", str(pretrained), "--store", str(tiny_store), "--subject", "04"]
    assert cli(*args, "--fraction", "1.0", "--out", str(out), *sets(ADAPT)) == 0
    store = TensorStore.open(tiny_store)
    assert fit_data["subjects"] == {"sub-04"}  # NewSubjectLayer does not mix source data
    assert len(fit_data["train"]) == 60 and not fit_data["val"]  # default: no validation carve
    assert not fit_data["train"] & _test_stimuli(tiny_store, "sub-04")

    config = json.loads((out / "config.json").read_text())
    assert config["subjects"] == ["sub-04"]
    assert set(config["build"]["n_voxels"]) == {"sub-01", "sub-02", "sub-03", "sub-04"}
    assert config["adaptation"]["strategy"] == "new-subject-layer"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["adaptation"]["n_trials"] == 60
    assert metrics["adaptation"]["n_train_trials"] + metrics["adaptation"]["n_val_trials"] == 60
    assert (
        metrics["adaptation"]["trained_parameters"] == (store.signals("sub-04").shape[1] + 1) * 64
    )

    # only the new subject layer changed
    before, after = (
        load_file(str(pretrained / "model.safetensors")),
        load_file(str(out / "model.safetensors")),
    )
    assert set(after) - set(before) == {
        "subject_layers.sub-04.weight",
        "subject_layers.sub-04.bias",
    }
    assert all(np.array_equal(before[k], after[k]) for k in before)

    # evaluate reads it; the adapted subject decodes above chance (1/8 top-1, 0.5 two-way;
    # seeded, it reaches 2/8 and about 0.75-0.85 here with several trainer settings)
    assert cli("evaluate", str(out)) == 0
    scores = json.loads((out / "eval" / "metrics.json").read_text())["subjects"]["sub-04"]
    assert scores["retrieval_top1.efficientnet-lite0"] > scores["chance.retrieval_top1"]
    assert scores["two_way_id.efficientnet-lite0"] > 0.7

    # the adapted run reloads and predicts what it saved
    model = load_model(out)
    rows, _ = adaptation_trials(store, "sub-04", fraction=1.0)
    test = adaptation_splits(store, "sub-04", rows, TARGETS, DataConfig())["test"]
    saved = load_file(str(out / "predictions.safetensors"))
    np.testing.assert_array_equal(
        predict(model, test)["sub-04"]["global"], saved["sub-04/test_pred"]
    )


def test_fewer_trials_and_a_validation_carve_from_them_only(
    pretrained: Path, tiny_store: Path, tmp_path: Path, fit_data: dict[str, set]
) -> None:
    def adapt(out: Path, overrides: list[str]) -> dict:
        adapt_model(
            pretrained, tiny_store, "sub-04", out, n_trials=12, overrides=overrides, progress=False
        )
        return json.loads((out / "metrics.json").read_text())

    metrics = adapt(tmp_path / "a", ADAPT)
    facts = metrics["adaptation"]
    assert facts["n_trials"] == 12 and facts["n_available_train_trials"] == 60
    # by default no validation carve: all 12 trials train, for a fixed schedule
    assert facts["n_train_trials"] == 12 and facts["n_val_trials"] == 0
    history = metrics["training"]["history"]
    assert len(history) == 40 and all(h["val_loss"] is None for h in history)

    facts = adapt(tmp_path / "b", [*ADAPT, "data.val_fraction=0.25", "trainer.epochs=3"])[
        "adaptation"
    ]
    assert facts["n_val_trials"] == 3 and facts["n_train_trials"] == 9
    store = TensorStore.open(tiny_store)
    rows, _ = adaptation_trials(store, "sub-04", n_trials=12)
    first = {int(s) for s in store.trials("sub-04")["stimulus_index"].to_numpy()[rows]}
    assert fit_data["train"] | fit_data["val"] == first and not fit_data["train"] & fit_data["val"]
    assert not first & _test_stimuli(tiny_store, "sub-04")


class _MixingLayer(NewSubjectLayer):
    """Asks for the source subjects' data (as MindBridge reset-tuning does); trains the heads
    too, so that source batches have something to train."""

    mixes_source_data = True

    def prepare(self, model: FMRIDecoder, context: AdaptationContext) -> None:
        super().prepare(model, context)
        for parameter in model.heads.parameters():
            parameter.requires_grad_(True)


def test_a_mixing_strategy_trains_on_source_subjects_too(
    pretrained: Path,
    tiny_store: Path,
    tmp_path: Path,
    fit_data: dict[str, set],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(MindEyeMLP, "adaptation_strategy", lambda self: _MixingLayer())
    quick = [*ADAPT, "trainer.epochs=2", "data.val_fraction=0.25"]
    out = adapt_model(
        pretrained,
        tiny_store,
        "sub-04",
        tmp_path / "m",
        n_trials=12,
        overrides=quick,
        progress=False,
    )
    assert fit_data["subjects"] == {"sub-01", "sub-02", "sub-03", "sub-04"}
    facts = json.loads((out / "metrics.json").read_text())["adaptation"]
    assert facts["mixed_source_subjects"] == ["sub-01", "sub-02", "sub-03"]
    assert facts["n_source_trials"] > 100
    assert not fit_data["train"] & (fit_data["val"] | _test_stimuli(tiny_store, "sub-04"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--subject", "01", "--n-trials", "10"], "adapt is for a new subject; sub-01"),
        (["--subject", "09", "--n-trials", "10"], "Subject sub-09 is not in store"),
        (["--subject", "04", "--n-trials", "61"], "more than the 60 training trials"),
        (["--subject", "04"], "exactly one of --n-trials N or --fraction F"),
        (["--subject", "04", "--n-trials", "5", "--fraction", "0.5"], "exactly one of"),
        (["--subject", "04", "--fraction", "1.5"], "outside (0, 1]"),
        (["--subject", "04", "--fraction", "1", "--set", "model.hidden_dim=8"], "adapt only"),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(
    pretrained: Path,
    tiny_store: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    out = tmp_path / "never"
    args = ["adapt", str(pretrained), "--store", str(tiny_store), "--out", str(out), *extra]
    assert cli(*args) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and message in lines[0]
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []
