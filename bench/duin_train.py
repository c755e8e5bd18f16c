"""Du-IN on synthetic-ieeg: decoding per subject against baselines, and training throughput.

1. Decoding (held-out test trials, per subject and mean): du-in-cls initialised from du-in-mae
   (itself trained on the codes of du-in-vqvae; all stages multi-subject), du-in-cls from
   scratch, braindecode baselines (default: eegnet and shallow-fbcsp, one network per subject)
   and chance; each model with its default preset (``configs/models``), all on the same store,
   splits and trainer.
2. Throughput and model FLOP utilisation (MFU) of each Du-IN stage: samples/s of the trainer (its
   own measurement: training loop time, data reads and augmentation included, validation
   excluded) and of bare training steps on one resident batch (forward, backward, AdamW); FLOPs
   of one step counted by torch's FlopCounterMode (matmuls and convolutions, backward included);
   MFU = achieved FLOP/s / the fp32 matmul peak measured in the same process on the same threads
   (``matmul_peak`` of bench/fmri_models.py).

    python bench/duin_train.py [--store STORE] [--work DIR] [--threads 1] [--seed 0]
                               [--baselines eegnet shallow-fbcsp] [--prepare-set K=V ...]
                               [--out bench/results/duin_train.json]

Without ``--store`` synthetic-ieeg is prepared under ``--work`` (its defaults, plus any
``--prepare-set`` options such as ``pipeline.channels.regions=[vSMC,STG]``).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from fmri_models import matmul_peak
from torch.utils.flop_counter import FlopCounterMode

from mindzoo.cli.prepare import run_prepare
from mindzoo.datasets.ephys_views import EphysDataset
from mindzoo.datasets.store import TensorStore
from mindzoo.evaluation.run import evaluate_run
from mindzoo.training.ephys import load_ephys_model, train_ephys

METRICS = ("top1", "top5", "balanced_accuracy")


def train_and_score(name: str, store: Path, out: Path, overrides: list[str]) -> dict:
    """Train ``name`` (preset + overrides) and evaluate it; per-subject and mean test metrics."""
    start = time.perf_counter()
    run = train_ephys(name, store, out, overrides=overrides, progress=False)
    seconds = time.perf_counter() - start
    training = json.loads((run / "metrics.json").read_text())["training"]
    result = {
        "run": str(run),
        "train_seconds": round(seconds, 1),
        "epochs": training["epochs"],
        "trainer_samples_per_second": training["samples_per_second"],
    }
    if json.loads((run / "config.json").read_text())["kind"] == "ephys-classifier":
        metrics = evaluate_run(run)
        result["subjects"] = {
            s: {m: round(v[m], 4) for m in METRICS} for s, v in metrics["subjects"].items()
        }
        result["mean"] = {m: round(metrics["mean"][m], 4) for m in METRICS}
        result["chance_top1"] = round(metrics["mean"]["chance.top1"], 4)
    else:
        result["best_val_loss"] = training["best_val_loss"]
    return result


def step_throughput(run: Path, store: Path, batch_size: int, steps: int = 10) -> dict:
    """FLOPs per sample and samples/s of bare training steps of a trained ephys model."""
    model = load_ephys_model(run).train()
    config = json.loads((run / "config.json").read_text())
    subject = config["subjects"][0]
    train = EphysDataset(TensorStore.open(store), [subject], "train")
    batch = train.batch(range(min(batch_size, len(train))))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step() -> None:
        model(batch.x, subject, batch.y)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter:
        step()
    flops_per_sample = counter.get_total_flops() / len(batch)
    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    rate = steps * len(batch) / (time.perf_counter() - start)
    return {
        "subject": subject,
        "batch_size": len(batch),
        "flops_per_sample": flops_per_sample,
        "step_samples_per_second": round(rate, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="A prepared ephys store (synthetic-ieeg).")
    parser.add_argument("--work", type=Path, default=Path("bench/results/duin_train_work"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU).")
    parser.add_argument("--seed", type=int, default=0, help="trainer.seed of every run.")
    parser.add_argument("--baselines", nargs="*", default=["eegnet", "shallow-fbcsp"])
    parser.add_argument("--set", dest="sets", action="append", default=[], help="For every run.")
    parser.add_argument("--prepare-set", nargs="*", default=[])
    parser.add_argument("--out", type=Path, default=Path("bench/results/duin_train.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    store = args.store
    if store is None:
        store = args.work / "store"
        run_prepare("synthetic-ieeg", store, None, None, args.prepare_set)
    work = args.work / f"seed-{args.seed}"
    common = [f"trainer.seed={args.seed}", *args.sets]
    runs = {}
    runs["du-in-vqvae"] = train_and_score("du-in-vqvae", store, work / "vqvae", common)
    runs["du-in-mae"] = train_and_score(
        "du-in-mae", store, work / "mae", [*common, f"init={work / 'vqvae'}"]
    )
    runs["du-in-cls (mae)"] = train_and_score(
        "du-in-cls", store, work / "cls-mae", [*common, f"init={work / 'mae'}"]
    )
    runs["du-in-cls (scratch)"] = train_and_score("du-in-cls", store, work / "cls-scratch", common)
    for name in args.baselines:
        runs[name] = train_and_score(name, store, work / name, common)
    peak = matmul_peak()
    throughput = {}
    for stage, folder in (("vqvae", "vqvae"), ("mae", "mae"), ("cls", "cls-mae")):
        run = work / folder
        batch_size = json.loads((run / "config.json").read_text())["settings"]["trainer"][
            "batch_size"
        ]
        numbers = step_throughput(run, store, batch_size)
        trainer_rate = runs[f"du-in-{stage}" if stage != "cls" else "du-in-cls (mae)"][
            "trainer_samples_per_second"
        ]
        numbers.update(
            {
                "trainer_samples_per_second": trainer_rate,
                "mfu_trainer": round(numbers["flops_per_sample"] * trainer_rate / peak, 4),
                "mfu_step": round(
                    numbers["flops_per_sample"] * numbers["step_samples_per_second"] / peak, 4
                ),
            }
        )
        throughput[f"du-in-{stage}"] = numbers
    opened = TensorStore.open(store)
    results = {
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "store": str(opened.path),
        "dataset": opened.dataset,
        "seed": args.seed,
        "matmul_peak_flops": round(peak),
        "runs": runs,
        "throughput": throughput,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
