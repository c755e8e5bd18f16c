"""Spike models on synthetic-spikes: held-out likelihood, generation, behaviour and connectivity.

All models on one store, one split and the same windows, in one run:

1. likelihood and generation (test trials): spike-homogeneous, spike-psth, spike-glm and
   neuroformer (its default preset; ``--seeds`` trainer seeds) -> bits/spike against the
   homogeneous rate fitted on the training windows, PSTH correlation of closed-loop generated vs
   recorded activity (and the recorded split-half ceiling), connectivity AUROC and direction
   accuracy against the simulator's coupling graph (models that have a coupling score);
2. few-shot behaviour: neuroformer pre-trained on all training trials (no behaviour), then
   fine-tuned with a behaviour head on ``--fraction`` of the training trials
   (``--set init=RUN data.behaviour=[running_speed] data.train_fraction=F``), against
   spike-ridge fitted on the same trials (same ``data.split_seed``) -> test R^2 and Pearson r;
   both behaviour read-outs (``--readouts``): the probe (ridge on the frozen features, the
   default) and the official fine-tune of the whole model.

    python bench/spike_models.py [--store STORE] [--work DIR] [--seeds 0 1 2] [--fraction 0.1]
                                 [--neuroformer-set K=V ...] [--out bench/results/spike_models.json]

Without ``--store``, synthetic-spikes (defaults) is prepared under ``--work``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from mindzoo.evaluation.run import evaluate_run
from mindzoo.pipelines.prepare import prepare_dataset
from mindzoo.training.run import train_model

BEHAVIOUR = "running_speed"
FINETUNE = ["trainer.lr=0.0005", "trainer.epochs=10"]
"""Fine-tune trainer settings (val R^2 0.12 against 0.08 with a 10x behaviour weight)."""
KEYS = (
    "bits_per_spike",
    "psth_corr",
    "psth_corr_recorded_split_half",
    "generated_rate_ratio",
    "coupling_auroc",
    "coupling_direction_accuracy",
    "behaviour_r2",
    "behaviour_pearson",
)


def run(name: str, store: Path, out: Path, sets: list[str]) -> dict:
    """Train ``name`` into ``out`` and evaluate it (a finished run and its evaluation are
    reused, so an interrupted bench resumes); mean metrics + training time."""
    start = time.perf_counter()
    if not (out / "metrics.json").is_file():
        train_model(name, store, out, overrides=sets, overwrite=True, progress=False)
        shutil.rmtree(out / "eval", ignore_errors=True)
    trained = time.perf_counter() - start
    done = out / "eval" / "metrics.json"
    metrics = json.loads(done.read_text()) if done.is_file() else evaluate_run(out, out / "eval")
    mean = {k: v for k, v in metrics["mean"].items() if k in KEYS}
    print(f"{name:28s} {json.dumps({k: round(v, 4) for k, v in mean.items()})}", flush=True)
    training = json.loads((out / "metrics.json").read_text()).get("training") or {}
    seconds = training.get("train_seconds", trained)  # the trainer's own clock when it ran
    return {"settings": sets, "train_s": round(seconds, 1), **mean}


def spread(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path)
    parser.add_argument("--work", type=Path, default=Path("bench/work/spikes"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--neuroformer-set", nargs="*", default=[])
    parser.add_argument("--readouts", nargs="+", default=["probe", "finetune"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results/spike_models.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    store = args.store
    if store is None:
        store = args.work / "store"
        prepare_dataset("synthetic-spikes", store, progress=False)
    runs = args.work / "runs"
    results: dict = {"baselines": {}, "neuroformer": {}, "behaviour": {}}
    for name in ("spike-homogeneous", "spike-psth", "spike-glm"):
        results["baselines"][name] = run(name, store, runs / name, [])
    nf = args.neuroformer_set
    for seed in args.seeds:
        sets = [*nf, f"trainer.seed={seed}"]
        results["neuroformer"][seed] = run("neuroformer", store, runs / f"nf-{seed}", sets)
        few = [f"data.behaviour=[{BEHAVIOUR}]", f"data.train_fraction={args.fraction}"]
        tuned = {}
        for readout in args.readouts:
            tuned[readout] = run(
                "neuroformer",
                store,
                runs / f"nf-{seed}-behaviour-{readout}",
                [
                    *sets,
                    f"init={runs / f'nf-{seed}'}",
                    *few,
                    f"model.behaviour_readout={readout}",
                    *(FINETUNE if readout == "finetune" else []),
                ],
            )
        ridge = run("spike-ridge", store, runs / f"ridge-{seed}", [*few])
        results["behaviour"][seed] = {
            **{f"neuroformer-{r}": v for r, v in tuned.items()},
            "spike-ridge": ridge,
        }
    nf_runs = list(results["neuroformer"].values())
    summary = {
        key: spread([r[key] for r in nf_runs]) for key in KEYS if all(key in r for r in nf_runs)
    }
    beh = list(results["behaviour"].values())
    for readout in args.readouts:
        summary[f"behaviour_r2_neuroformer_{readout}"] = spread(
            [b[f"neuroformer-{readout}"]["behaviour_r2"] for b in beh]
        )
    summary["behaviour_r2_ridge"] = spread([b["spike-ridge"]["behaviour_r2"] for b in beh])
    psth = results["baselines"]["spike-psth"]["bits_per_spike"]
    summary["checks"] = {
        "neuroformer bits/spike > 0 (beats the homogeneous rate) in every seed": all(
            r["bits_per_spike"] > 0 for r in nf_runs
        ),
        "neuroformer bits/spike > spike-psth in every seed": all(
            r["bits_per_spike"] > psth for r in nf_runs
        ),
        **{
            f"neuroformer ({r}) behaviour R^2 > spike-ridge on {args.fraction:.0%} of the "
            "trials, every seed": all(
                b[f"neuroformer-{r}"]["behaviour_r2"] > b["spike-ridge"]["behaviour_r2"]
                for b in beh
            )
            for r in args.readouts
        },
    }
    results["summary"] = summary
    results["machine"] = {"platform": platform.platform(), "threads": args.threads}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
