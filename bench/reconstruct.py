"""The embedded diffusion backend on CPU: seconds per 64x64 image, and quality vs. steps.

1. Speed: seconds per generated 64x64 image (classifier-free guidance, batch ``--batch``, after
   a warm-up batch) at each step count; the target is < 1 s at the default step count
   (``GenerationSettings.steps``).
2. Quality vs. number of DDIM steps: PixCorr, SSIM and efficientnet-lite0 two-way identification
   (MindEye2 definitions, :mod:`mindzoo.evaluation.image_metrics`) of the test images
   reconstructed from ``--run``'s predictions for one subject (default: its first), or, without
   ``--run``, from the test images' true features (the backend's ceiling); plus the permutation
   control (conditions shuffled across test items) at the default step count.

    python bench/reconstruct.py --store STORE [--weights DIR] [--run RUN_DIR] [--subject sub-01]
                                [--steps 5,10,15,25,50] [--threads 1]
                                [--out bench/results/reconstruct.json]

Without ``--weights`` the store's cached default model is used (trained first when missing:
`train diffusion`, a few minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file

from mindzoo.datasets.store import TensorStore
from mindzoo.evaluation.image_metrics import reconstruction_metrics
from mindzoo.reconstruction import GenerationSettings, load_backend
from mindzoo.reconstruction.run import derangement
from mindzoo.training.run import train_model

COLUMNS = ("PixCorr", "SSIM", "efficientnet-lite0 2-way")


def test_conditions(
    store: TensorStore, backend, run: Path | None, subject: str | None
) -> tuple[np.ndarray, np.ndarray, str]:
    """(conditions [n, d], stimulus indices [n], where they come from)."""
    if run is None:
        stim = np.flatnonzero(np.asarray(store.stimulus_splits) == "test")
        features = store.features(*backend.condition).get_orthogonal_selection((stim,))
        return np.asarray(features, np.float32).reshape(len(stim), -1), stim, "true features"
    predictions = load_file(str(run / "predictions.safetensors"))
    config = json.loads((run / "config.json").read_text())
    subject = subject or config["subjects"][0]
    return (
        predictions[f"{subject}/test_pred"],
        predictions[f"{subject}/test_stimulus_index"],
        f"{run} {subject} predictions",
    )


def seconds_per_image(
    backend, conditions: np.ndarray, settings: GenerationSettings
) -> tuple[float, float]:
    """(wall, CPU) seconds per image of one batch after a warm-up batch.

    CPU time (this process, all threads) is what the image costs on an idle machine with the
    same thread count; wall time also counts waiting for cores other processes hold.
    """
    backend.generate(conditions[: settings.batch_size], settings)  # warm-up
    start, cpu = time.perf_counter(), time.process_time()
    backend.generate(conditions[: settings.batch_size], settings)
    n = min(settings.batch_size, len(conditions))
    return (time.perf_counter() - start) / n, (time.process_time() - cpu) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--run", type=Path)
    parser.add_argument("--subject")
    parser.add_argument("--steps", default="5,10,15,25,50")
    parser.add_argument("--guidance", type=float, default=GenerationSettings.guidance)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/results/reconstruct.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    store = TensorStore.open(args.store)
    weights = args.weights or train_model("diffusion", args.store, None)
    backend = load_backend("embedded", weights)
    conditions, stim, source = test_conditions(store, backend, args.run, args.subject)
    truths = np.asarray(store.images().get_orthogonal_selection((stim,)))
    steps_list = sorted({int(s) for s in args.steps.split(",")} | {GenerationSettings.steps})

    rows = {}
    for steps in steps_list:
        settings = GenerationSettings(steps=steps, guidance=args.guidance, batch_size=args.batch)
        speed, cpu = seconds_per_image(backend, conditions, settings)
        images = backend.generate(conditions, settings)
        scores = reconstruction_metrics(images, truths)
        rows[steps] = {
            "seconds_per_image": round(speed, 4),
            "cpu_seconds_per_image": round(cpu, 4),
        } | {c: round(scores[c], 4) for c in COLUMNS}
        print(
            f"steps {steps:3d}: {speed:.3f} s/image ({cpu:.3f} CPU s)  "
            + "  ".join(f"{c} {scores[c]:.3f}" for c in COLUMNS)
        )
    default = GenerationSettings(guidance=args.guidance, batch_size=args.batch)
    perm = derangement(len(conditions), default.seed + 1)
    shuffled = reconstruction_metrics(backend.generate(conditions[perm], default), truths)
    print("shuffled control: " + "  ".join(f"{c} {shuffled[c]:.3f}" for c in COLUMNS))

    config = json.loads((Path(weights) / "config.json").read_text())
    result = {
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": args.threads,
        "store": str(store.path),
        "weights": str(weights),
        "model": config["model"],
        "trainer": config.get("trainer"),
        "conditions": source,
        "n_images": len(conditions),
        "image_size": config["model"]["image_size"],
        "guidance": args.guidance,
        "batch": args.batch,
        "default_steps": GenerationSettings.steps,
        "seconds_per_image_at_default_steps": rows[GenerationSettings.steps]["seconds_per_image"],
        "cpu_seconds_per_image_at_default_steps": rows[GenerationSettings.steps][
            "cpu_seconds_per_image"
        ],
        "load_average_1min": round(os.getloadavg()[0], 2),
        "target_seconds_per_image": 1.0,
        "by_steps": rows,
        "shuffled_control_at_default_steps": {c: round(shuffled[c], 4) for c in COLUMNS},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
