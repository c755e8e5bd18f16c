"""mindeye-mlp against per-subject ridge on synthetic-fmri, and mindeye-mlp training throughput.

1. Decoding: retrieval top-1, two-way identification and feature correlation (efficientnet-lite0
   global features, repeat-averaged test betas) per subject and on average, for ridge and
   mindeye-mlp trained with their default presets on all subjects, with training times.
2. Throughput and model FLOP utilisation (MFU) of mindeye-mlp training: samples/s of the trainer
   (its own measurement: training loop time, data reads included, validation excluded) and of
   bare training steps on one resident batch (forward, backward, AdamW); FLOPs of one step
   counted by torch's FlopCounterMode (matmuls: 2*M*N*K, backward included); MFU = achieved
   FLOP/s / the fp32 matmul peak measured in the same process on the same threads.

    python bench/fmri_models.py [--store STORE] [--work DIR] [--threads 1]
                                [--out bench/results/fmri_models.json]

Without ``--store`` the default synthetic-fmri store is prepared under ``--work`` (~80 s).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from mindzoo.cli.prepare import run_prepare
from mindzoo.datasets.store import TensorStore
from mindzoo.datasets.views import make_splits
from mindzoo.evaluation.metrics import evaluate_features
from mindzoo.evaluation.run import evaluate_run
from mindzoo.models import create_model
from mindzoo.training.adapt import adapt_model, adaptation_trials
from mindzoo.training.checkpoint import load_model
from mindzoo.training.run import train_model

SPACE = "efficientnet-lite0"
METRICS = ("retrieval_top1", "two_way_id", "feature_corr")


def decode(name: str, store: Path, work: Path) -> dict:
    """Train ``name`` with its preset on all subjects, evaluate; metrics per subject and mean."""
    start = time.perf_counter()
    run = train_model(name, store, work / name, overwrite=True, progress=False)
    seconds = time.perf_counter() - start
    metrics = evaluate_run(run, run / "eval")
    pick = {m: f"{m}.{SPACE}" for m in METRICS}
    result = {
        "train_seconds": round(seconds, 2),
        "subjects": {
            s: {m: round(v[key], 4) for m, key in pick.items()}
            for s, v in metrics["subjects"].items()
        },
        "mean": {m: round(metrics["mean"][key], 4) for m, key in pick.items()},
        "chance_top1": metrics["mean"]["chance.retrieval_top1"],
    }
    training = json.loads((run / "metrics.json").read_text()).get("training")
    if training:
        result["epochs"] = training["epochs"]
        result["trainer_samples_per_second"] = training["samples_per_second"]
    return result


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    """Best fp32 FLOP/s of an n x n matmul on the current threads."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


def step_throughput(run: Path, store: Path, batch_size: int, steps: int = 30) -> dict:
    """FLOPs per sample and samples/s of bare training steps of the trained mindeye-mlp."""
    model = load_model(run).train()
    config = json.loads((run / "config.json").read_text())
    targets = {"global": f"{SPACE}/global"}
    train = make_splits(TensorStore.open(store), config["subjects"], targets)["train"]
    subject = config["subjects"][0]
    rows = train.subject_slice(subject)
    batch = train.batch(range(rows.start, rows.start + batch_size))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        outputs = model(batch.voxels, subject)
        loss, _ = model.loss(outputs, model.target_scaler.transform(batch.targets))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter:
        step()
    flops_per_sample = counter.get_total_flops() / batch_size
    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    samples_per_second = steps * batch_size / (time.perf_counter() - start)
    return {
        "subject": subject,
        "n_voxels": model.n_voxels[subject],
        "batch_size": batch_size,
        "flops_per_sample": flops_per_sample,
        "step_samples_per_second": round(samples_per_second, 1),
    }


def data_efficiency(
    store: Path,
    work: Path,
    held_out: str = "sub-04",
    fractions: tuple[float, ...] = (0.05, 0.1, 0.25, 1.0),
) -> dict:
    """mindeye-mlp pre-trained without ``held_out``, adapted to it with the first ``fractions`` of
    its training trials (NewSubjectLayer, `adapt` defaults), against ridge fitted on exactly the
    same trials (its own grouped CV picks the penalty); test metrics of ``held_out``."""
    opened = TensorStore.open(store)
    sources = [s for s in opened.subjects if s != held_out]
    start = time.perf_counter()
    pre = train_model(
        "mindeye-mlp", store, work / "pretrain", sources, overwrite=True, progress=False
    )
    result = {
        "held_out": held_out,
        "pretrained_on": sources,
        "pretrain_seconds": round(time.perf_counter() - start, 2),
        "fractions": {},
    }
    features = opened.features(SPACE, "global")
    x_test, stim_test, _ = opened.split(held_out, "test", average_repeats=True)
    true = features.get_orthogonal_selection((stim_test,)).reshape(len(stim_test), -1)
    stim_of = opened.trials(held_out)["stimulus_index"].to_numpy()
    signals = opened.signals(held_out)
    for fraction in fractions:
        start = time.perf_counter()
        run = adapt_model(
            pre,
            store,
            held_out,
            work / f"adapt-{fraction}",
            fraction=fraction,
            overwrite=True,
            progress=False,
        )
        adapt_seconds = time.perf_counter() - start
        adapted = evaluate_run(run, run / "eval")["subjects"][held_out]
        rows, _ = adaptation_trials(opened, held_out, fraction=fraction)
        x = signals.get_orthogonal_selection((rows,))
        stim = stim_of[rows]
        start = time.perf_counter()
        ridge = create_model("ridge").fit(x, features.get_orthogonal_selection((stim,)), stim)
        ridge_seconds = time.perf_counter() - start
        ridge_scores = evaluate_features(ridge.predict(x_test), true, SPACE)
        result["fractions"][str(fraction)] = {
            "n_trials": int(len(rows)),
            "mindeye_mlp_adapted": {
                **{m: round(adapted[f"{m}.{SPACE}"], 4) for m in METRICS},
                "seconds": round(adapt_seconds, 2),
            },
            "ridge": {
                **{m: round(ridge_scores[f"{m}.{SPACE}"], 4) for m in METRICS},
                "seconds": round(ridge_seconds, 2),
            },
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="A prepared synthetic-fmri store.")
    parser.add_argument("--work", type=Path, default=Path("bench/results/fmri_models_work"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU).")
    parser.add_argument("--out", type=Path, default=Path("bench/results/fmri_models.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    store = args.store
    if store is None:
        store = args.work / "store"
        run_prepare("synthetic-fmri", store, None, None, [])
    results = {
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "store": str(TensorStore.open(store).path),
        "models": {name: decode(name, store, args.work) for name in ("ridge", "mindeye-mlp")},
    }
    run = args.work / "mindeye-mlp"
    batch_size = json.loads((run / "config.json").read_text())["settings"]["trainer"]["batch_size"]
    throughput = step_throughput(run, store, batch_size)
    peak = matmul_peak()
    trainer_rate = results["models"]["mindeye-mlp"]["trainer_samples_per_second"]
    throughput.update(
        {
            "trainer_samples_per_second": trainer_rate,
            "matmul_peak_flops": round(peak),
            "mfu_trainer": round(throughput["flops_per_sample"] * trainer_rate / peak, 4),
            "mfu_step": round(
                throughput["flops_per_sample"] * throughput["step_samples_per_second"] / peak, 4
            ),
        }
    )
    results["mindeye_mlp_throughput"] = throughput
    results["data_efficiency"] = data_efficiency(store, args.work / "data_efficiency")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
