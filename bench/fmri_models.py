"""The fMRI zoo against per-subject ridge on synthetic-fmri: decoding, data efficiency, speed.

1. Decoding: retrieval top-1, two-way identification and feature correlation (efficientnet-lite0
   global features, repeat-averaged test betas) per subject and on average, for ridge,
   mindeye-mlp, brain-it and mindbridge trained with their default presets on all subjects.
2. Data efficiency: each model in ``--adapt`` (default brain-it) pre-trained without the held-out
   subject, adapted to it with the first 5/10/25/100 % of its training trials (the family's
   strategy, `adapt` defaults), against ridge fitted on exactly the same trials.
3. Throughput and model FLOP utilisation (MFU) of each torch model's training: samples/s of the
   trainer (its own measurement: training loop time, data reads included, validation excluded)
   and of bare training steps on one resident batch (forward, backward, AdamW); FLOPs of one
   step counted by torch's FlopCounterMode (matmuls: 2*M*N*K, backward included); MFU =
   achieved FLOP/s / the fp32 matmul peak measured in the same process on the same threads.
4. ``--gpu``: bf16 training steps of brain-it at NSD scale (15k voxels, 256 output tokens) on
   synthetic tensors: samples/s and peak memory (needs CUDA; says so and exits 2 otherwise).

    python bench/fmri_models.py [--store STORE] [--work DIR] [--threads 1] [--adapt brain-it]
                                [--models ridge,mindeye-mlp,brain-it,mindbridge] [--gpu]
                                [--out bench/results/fmri_models.json]

Without ``--store`` the default synthetic-fmri store is prepared under ``--work`` (~80 s).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from mindzoo.cli.prepare import run_prepare
from mindzoo.datasets.store import TensorStore
from mindzoo.datasets.views import make_splits
from mindzoo.evaluation.metrics import evaluate_features
from mindzoo.evaluation.run import evaluate_run
from mindzoo.models import create_model, load_model
from mindzoo.models.brain_it import BrainIT, BrainITConfig
from mindzoo.training.adapt import adapt_model, adaptation_trials
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


def step_throughput(run: Path, store: Path, batch_size: int, steps: int = 20) -> dict:
    """FLOPs per sample and samples/s of bare training steps of a trained torch decoder run."""
    model = load_model(run).train()
    config = json.loads((run / "config.json").read_text())
    targets = config["settings"]["data"].get("targets") or {"global": f"{SPACE}/global"}
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
    name: str,
    store: Path,
    work: Path,
    held_out: str = "sub-04",
    fractions: tuple[float, ...] = (0.05, 0.1, 0.25, 1.0),
    pretrained: Path | None = None,
) -> dict:
    """Model ``name`` pre-trained without ``held_out``, adapted to it with the first
    ``fractions`` of its training trials (the family's strategy, `adapt` defaults), against
    ridge fitted on exactly the same trials (its own grouped CV picks the penalty); test
    metrics of ``held_out``, and each fraction's top-1 as a share of ridge's at 100 %.
    ``pretrained``: a run of ``name`` trained without ``held_out`` to start from instead."""
    opened = TensorStore.open(store)
    sources = [s for s in opened.subjects if s != held_out]
    start = time.perf_counter()
    if pretrained is None:
        pre = train_model(name, store, work / "pretrain", sources, overwrite=True, progress=False)
    else:
        pre = pretrained
        trained_on = json.loads((pre / "config.json").read_text())["subjects"]
        if held_out in trained_on:
            raise SystemExit(f"{pre} was trained on {held_out}; pass a run without it")
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
            "adapted": {
                **{m: round(adapted[f"{m}.{SPACE}"], 4) for m in METRICS},
                "seconds": round(adapt_seconds, 2),
            },
            "ridge": {
                **{m: round(ridge_scores[f"{m}.{SPACE}"], 4) for m in METRICS},
                "seconds": round(ridge_seconds, 2),
            },
        }
    full = result["fractions"][str(max(fractions))]["ridge"]["retrieval_top1"]
    for entry in result["fractions"].values():
        entry["adapted_top1_over_ridge_full"] = round(
            entry["adapted"]["retrieval_top1"] / max(full, 1e-9), 3
        )
    return result


def nsd_scale_gpu(steps: int = 20, batch_size: int = 32) -> dict:
    """bf16 training steps of brain-it at NSD scale on synthetic tensors (one CUDA device):
    15k voxels, 256 output tokens of 1664 channels (OpenCLIP bigG patch tokens, as the paper),
    the paper's width (512) and depth (5 blocks), 128 clusters; samples/s and peak memory."""
    if not torch.cuda.is_available():
        print("--gpu needs a CUDA device; none is visible", file=sys.stderr)
        sys.exit(2)
    device = torch.device("cuda")
    config = BrainITConfig(embed_dim=512, n_clusters=128, n_heads=8, n_blocks=5, dropout=0.0)
    model = BrainIT(config, {"subj01": 15_000}, {"tokens": (256, 1664)}).to(device)
    model.clusters.get("subj01").copy_(torch.randint(0, 128, (15_000,), device=device))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    voxels = torch.randn(batch_size, 15_000, device=device)
    target = {"tokens": torch.randn(batch_size, 256, 1664, device=device)}

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, _ = model.loss(model(voxels, "subj01"), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {
        "device": torch.cuda.get_device_name(),
        "precision": "bf16 autocast",
        "n_voxels": 15_000,
        "output_tokens": 256,
        "parameters": sum(p.numel() for p in model.parameters()),
        "batch_size": batch_size,
        "samples_per_second": round(steps * batch_size / seconds, 1),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="A prepared synthetic-fmri store.")
    parser.add_argument("--work", type=Path, default=Path("bench/results/fmri_models_work"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU).")
    parser.add_argument("--models", default="ridge,mindeye-mlp,brain-it,mindbridge")
    parser.add_argument("--adapt", default="brain-it", help="Models for the data-efficiency curve.")
    parser.add_argument("--gpu", action="store_true", help="Only the NSD-scale GPU check.")
    parser.add_argument(
        "--only-adapt",
        type=Path,
        metavar="RUN",
        help="Only the data-efficiency curve, from this pre-trained run (no held-out subject); "
        "updates data_efficiency in an existing --out JSON.",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/fmri_models.json"))
    args = parser.parse_args()
    if args.gpu:
        result = {"torch": torch.__version__, "brain_it_nsd_scale_gpu": nsd_scale_gpu()}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2))
        return
    torch.set_num_threads(args.threads)
    store = args.store
    if store is None:
        store = args.work / "store"
        run_prepare("synthetic-fmri", store, None, None, [])
    if args.only_adapt is not None:
        results = json.loads(args.out.read_text()) if args.out.is_file() else {}
        name = json.loads((args.only_adapt / "config.json").read_text())["model"]
        results.setdefault("data_efficiency", {})[name] = data_efficiency(
            name, store, args.work / f"data_efficiency-{name}", pretrained=args.only_adapt
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
        print(json.dumps(results["data_efficiency"], indent=2))
        return
    names = [n for n in args.models.split(",") if n]
    results = {
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "store": str(TensorStore.open(store).path),
        "models": {name: decode(name, store, args.work) for name in names},
        "matmul_peak_flops": round(matmul_peak()),
        "throughput": {},
        "data_efficiency": {},
    }
    peak = results["matmul_peak_flops"]
    for name in names:
        if name == "ridge":
            continue
        run = args.work / name
        settings = json.loads((run / "config.json").read_text())["settings"]
        throughput = step_throughput(run, store, settings["trainer"]["batch_size"])
        trainer_rate = results["models"][name]["trainer_samples_per_second"]
        throughput.update(
            {
                "trainer_samples_per_second": trainer_rate,
                "mfu_trainer": round(throughput["flops_per_sample"] * trainer_rate / peak, 4),
                "mfu_step": round(
                    throughput["flops_per_sample"] * throughput["step_samples_per_second"] / peak,
                    4,
                ),
            }
        )
        results["throughput"][name] = throughput
    for name in [n for n in args.adapt.split(",") if n]:
        work = args.work / f"data_efficiency-{name}"
        results["data_efficiency"][name] = data_efficiency(name, store, work)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
