"""Du-IN on synthetic-ieeg: decoding per subject against baselines, and training throughput.

1. Decoding (held-out test trials, per subject, mean over subjects and seeds): du-in-cls
   initialised from du-in-mae (itself trained on the codes of du-in-vqvae; all stages
   multi-subject) pre-trained on the unlabeled free-speech windows (synthetic-ieeg-speech, as
   Du-IN pre-trains on unlabeled recordings) and/or on the labeled training trials only,
   du-in-cls from scratch, braindecode baselines (default: eegnet and shallow-fbcsp, one network
   per subject) and chance; each model with its default preset (``mindzoo/configs/models``),
   all on the same labeled store, splits and trainer. ``summary.checks`` states the issue's
   ordering; a bar chart goes next to the JSON (.png).
2. Throughput and model FLOP utilisation (MFU) of each Du-IN stage: samples/s of the trainer (its
   own measurement: training loop time, data reads and augmentation included, validation
   excluded) and of bare training steps on one resident batch (forward, backward, AdamW); FLOPs
   of one step counted by torch's FlopCounterMode (matmuls and convolutions, backward included);
   MFU = achieved FLOP/s / the fp32 matmul peak measured in the same process on the same threads
   (``matmul_peak`` of bench/fmri_models.py).

    python bench/duin_train.py [--store STORE] [--pretrain-store STORE] [--work DIR]
                               [--pretrain-on speech|labeled|both] [--seeds 0 1] [--threads 1]
                               [--baselines eegnet shallow-fbcsp] [--prepare-set K=V ...]
                               [--out bench/results/duin_train.json]

Without ``--store`` / ``--pretrain-store``, synthetic-ieeg and synthetic-ieeg-speech are
prepared under ``--work`` (their defaults plus any ``--prepare-set`` options, given to both so
that they hold the same subjects and channels, e.g. ``pipeline.channels.regions=[vSMC,STG]``).
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
from mindzoo.models import load_model
from mindzoo.training.ephys import train_ephys

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
    model = load_model(run).train()
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


def pretrain_and_finetune(
    tag: str, pretrain: Path, store: Path, work: Path, common: list[str], runs: dict
) -> None:
    """du-in-vqvae and du-in-mae on ``pretrain``, then du-in-cls from the mae on ``store``."""
    vqvae, mae = work / f"vqvae-{tag}", work / f"mae-{tag}"
    runs[f"du-in-vqvae ({tag})"] = train_and_score("du-in-vqvae", pretrain, vqvae, common)
    runs[f"du-in-mae ({tag})"] = train_and_score(
        "du-in-mae", pretrain, mae, [*common, f"init={vqvae}"]
    )
    runs[f"du-in-cls (mae, {tag})"] = train_and_score(
        "du-in-cls", store, work / f"cls-mae-{tag}", [*common, f"init={mae}"]
    )


def summarize(per_seed: dict[int, dict]) -> dict:
    """Mean test top-1 per classifier over seeds (and per subject), and the issue's ordering:
    du-in (mae) > du-in (scratch) > chance, du-in (mae) above at least one baseline."""
    names = [n for n, r in next(iter(per_seed.values())).items() if "mean" in r]
    table = {}
    for name in names:
        means = [per_seed[s][name]["mean"]["top1"] for s in per_seed]
        subjects = per_seed[next(iter(per_seed))][name]["subjects"]
        table[name] = {
            "top1_mean": round(sum(means) / len(means), 4),
            "top1_per_seed": means,
            "top1_per_subject": {
                sub: round(
                    sum(per_seed[s][name]["subjects"][sub]["top1"] for s in per_seed)
                    / len(per_seed),
                    4,
                )
                for sub in subjects
            },
        }
    chance = next(iter(per_seed.values()))[names[0]]["chance_top1"]
    mae = table.get("du-in-cls (mae, speech)", table.get("du-in-cls (mae, labeled)"))
    scratch = table["du-in-cls (scratch)"]["top1_mean"]
    baselines = [n for n in table if not n.startswith("du-in")]
    checks = {
        "mae_above_scratch": mae is not None and mae["top1_mean"] > scratch,
        "scratch_above_chance": scratch > chance,
        "mae_above_a_baseline": mae is not None
        and any(mae["top1_mean"] > table[b]["top1_mean"] for b in baselines),
    }
    return {"chance_top1": chance, "classifiers": table, "checks": checks}


def plot(summary: dict, path: Path) -> None:
    """Bar per classifier (mean over seeds and subjects), a dot per subject, chance line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = summary["classifiers"]
    fig, ax = plt.subplots(figsize=(1.6 * len(table) + 1, 3.4))
    for k, (name, row) in enumerate(table.items()):
        ax.bar(k, row["top1_mean"], color="tab:orange" if name.startswith("du-in") else "tab:gray")
        ax.plot([k] * len(row["top1_per_subject"]), list(row["top1_per_subject"].values()), "k.")
    ax.axhline(summary["chance_top1"], color="k", lw=0.8, ls="--", label="chance")
    ax.set_xticks(range(len(table)), [n.replace(" (", "\n(") for n in table], fontsize=7)
    ax.set_ylabel("held-out top-1")
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="A prepared labeled store (synthetic-ieeg).")
    parser.add_argument(
        "--pretrain-store", type=Path, help="A prepared unlabeled store (synthetic-ieeg-speech)."
    )
    parser.add_argument(
        "--pretrain-on",
        choices=["speech", "labeled", "both"],
        default="both",
        help="Where du-in-vqvae/mae pre-train: the unlabeled store, the labeled training trials, "
        "or each (two du-in-cls (mae) rows).",
    )
    parser.add_argument("--work", type=Path, default=Path("bench/results/duin_train_work"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU).")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="trainer.seed values.")
    parser.add_argument("--baselines", nargs="*", default=["eegnet", "shallow-fbcsp"])
    parser.add_argument("--set", dest="sets", action="append", default=[], help="For every run.")
    parser.add_argument("--prepare-set", nargs="*", default=[])
    parser.add_argument("--out", type=Path, default=Path("bench/results/duin_train.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    store, pretrain = args.store, args.pretrain_store
    if store is None:
        store = args.work / "store"
        run_prepare("synthetic-ieeg", store, None, None, args.prepare_set)
    if pretrain is None and args.pretrain_on != "labeled":
        pretrain = args.work / "store-speech"
        run_prepare("synthetic-ieeg-speech", pretrain, None, None, args.prepare_set)
    per_seed: dict[int, dict] = {}
    for seed in args.seeds:
        work = args.work / f"seed-{seed}"
        common = [f"trainer.seed={seed}", *args.sets]
        runs: dict = {}
        if args.pretrain_on in ("speech", "both"):
            pretrain_and_finetune("speech", pretrain, store, work, common, runs)
        if args.pretrain_on in ("labeled", "both"):
            pretrain_and_finetune("labeled", store, store, work, common, runs)
        runs["du-in-cls (scratch)"] = train_and_score(
            "du-in-cls", store, work / "cls-scratch", common
        )
        for name in args.baselines:
            runs[name] = train_and_score(name, store, work / name, common)
        per_seed[seed] = runs
    summary = summarize(per_seed)
    peak = matmul_peak()
    throughput = {}
    work, tag = args.work / f"seed-{args.seeds[0]}", "speech" if pretrain else "labeled"
    for stage, folder, data in (
        ("vqvae", f"vqvae-{tag}", pretrain or store),
        ("mae", f"mae-{tag}", pretrain or store),
        ("cls", f"cls-mae-{tag}", store),
    ):
        run = work / folder
        batch_size = json.loads((run / "config.json").read_text())["settings"]["trainer"][
            "batch_size"
        ]
        numbers = step_throughput(run, data, batch_size)
        name = f"du-in-{stage} ({tag})" if stage != "cls" else f"du-in-cls (mae, {tag})"
        trainer_rate = per_seed[args.seeds[0]][name]["trainer_samples_per_second"]
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
        "pretrain_store": str(TensorStore.open(pretrain).path) if pretrain else None,
        "dataset": opened.dataset,
        "seeds": args.seeds,
        "matmul_peak_flops": round(peak),
        "summary": summary,
        "runs": {str(seed): runs for seed, runs in per_seed.items()},
        "throughput": throughput,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    plot(summary, args.out.with_suffix(".png"))
    print(json.dumps({"summary": summary, "throughput": throughput}, indent=2))


if __name__ == "__main__":
    main()
