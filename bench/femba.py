"""FEMBA against a transformer of matched size as the recording gets longer, and the parallel
selective scan against the sequential loop.

Per model and recording length (seconds at 256 Hz, 22 channels): training-step throughput
(forward + backward of a classifier, windows per second and recording-seconds per second,
median of ``--repeats`` after one warm-up) and peak memory (the process's peak resident set
size, minus the resident size after building the model, so it counts activations, gradients
and workspace). Each measurement runs in a fresh subprocess, so peaks do not carry over.

- ``femba-tiny``: :class:`mindzoo.models.femba.FEMBAClassifier`, preset tiny (linear in
  length);
- ``transformer``: the same patch embedding and learned positions, a post-norm
  ``nn.TransformerEncoder`` (d_model 385, 7 heads, 4 layers) with its feed-forward width solved
  so the model has femba-tiny's parameter count at 5 s, mean over tokens, linear (attention is
  quadratic in length; torch's CPU attention kernel keeps memory linear, time is not).

Learned positions make both models grow by ``tokens x 385`` parameters with the length.
``--scan`` times one Mamba block of femba-tiny's size (d_model 385, expand 4), forward +
backward, with the parallel scan and with the sequential loop.

    python bench/femba.py --seconds 5 30 300 --batch 2 [--out bench/results/femba.json]

Measured 2026-12-06 on the shared 2-core CPU dev machine (1 thread, batch 2, repeats 2):

    length  model        params  step s  recording s/s  peak over model MB
    5 s     femba-tiny   8.33 M    0.51           19.4                 142
    5 s     transformer  8.33 M    0.15           65.3                  74
    30 s    femba-tiny   8.49 M    3.51           17.1                 528
    30 s    transformer  8.49 M    0.97           62.0                 177
    5 min   femba-tiny  10.15 M   34.7            17.3                4364
    5 min   transformer 10.15 M   28.4            21.1                1257

    one Mamba block (d_model 385, expand 4), fwd + bwd, batch 2:
    80 tokens: parallel 0.153 s, sequential 0.528 s (3.5x);
    480 tokens: parallel 0.636 s, sequential 55.0 s (86x)

FEMBA's throughput is flat in length (linear time); the transformer's falls 3x from 30 s to
5 min (quadratic attention). On this CPU FEMBA-tiny is still slower per recording-second up to
5 min and needs more activation memory (expand 4: four 1540-wide Mambas per token).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SFREQ = 256
CHANNELS = 22


def _rss_mb() -> float:
    """Current resident set size in MB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 1e6


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # KB on Linux


def transformer(n_times: int, target_params: int, n_layers: int = 4, n_heads: int = 7) -> Any:
    """A transformer classifier on FEMBA-tiny's tokens with ``target_params`` parameters at
    5 s (its feed-forward width solved for)."""
    import torch
    from torch import nn

    from mindzoo.models.femba import PatchEmbed

    d_model, embed_dim = 385, 35

    class Transformer(nn.Module):
        def __init__(self, d_ff: int) -> None:
            super().__init__()
            self.patch_embed = PatchEmbed(embed_dim, (2, 16))
            self.pos_embed = nn.Parameter(torch.zeros(1, n_times // 16, d_model))
            layer = nn.TransformerEncoderLayer(d_model, n_heads, d_ff, 0.0, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
            self.head = nn.Linear(d_model, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.encoder(self.patch_embed(x) + self.pos_embed).mean(1))

    def count(d_ff: int) -> int:
        per_layer = 4 * d_model * d_model + 4 * d_model + 2 * d_model * d_ff + d_ff + 5 * d_model
        patch = embed_dim * 32 + embed_dim + 80 * d_model
        return patch + n_layers * per_layer + 2 * d_model + 2

    fixed, slope = count(0), count(1) - count(0)
    return Transformer(max(1, round((target_params - fixed) / slope)))


def femba_tiny(n_times: int) -> Any:
    from mindzoo.datasets.ephys_views import RecordingInfo
    from mindzoo.models.femba import FEMBAClassifier, FEMBAConfig

    info = RecordingInfo({"sub-01": CHANNELS}, n_times=n_times, sfreq=float(SFREQ), n_classes=2)
    return FEMBAClassifier(FEMBAConfig(preset="tiny", scan="parallel"), info)


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement (run in its own process): see the module docstring."""
    import torch

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    if spec["what"] == "scan":
        from mindzoo.models.mamba_scan import Mamba

        model: Any = Mamba(385, expand=4, scan=spec["scan"])
        x = torch.randn(spec["batch"], spec["tokens"], 385)

        def step() -> None:
            model(x).square().mean().backward()

    else:
        n_times = int(spec["seconds"] * SFREQ)
        if spec["what"] == "femba-tiny":
            model = femba_tiny(n_times)
        else:
            model = transformer(n_times, spec["target_params"])
        x = torch.randn(spec["batch"], CHANNELS, n_times)
        y = torch.randint(0, 2, (spec["batch"],))

        def step() -> None:
            logits = model(x)
            logits = logits["logits"] if isinstance(logits, dict) else logits
            torch.nn.functional.cross_entropy(logits, y).backward()

    params = sum(p.numel() for p in model.parameters())
    model.train()
    base = _rss_mb()
    times = []
    for i in range(spec["repeats"] + 1):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        step()
        if i:  # the first is a warm-up
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    out = {**spec, "parameters": params, "step_s": seconds, "steps": times}
    out["samples_per_s"] = spec["batch"] / seconds
    if spec["what"] != "scan":
        out["recording_s_per_s"] = spec["batch"] * spec["seconds"] / seconds
    out["peak_rss_mb"] = _peak_mb()
    out["peak_over_model_mb"] = _peak_mb() - base
    return out


def run_child(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        return {**spec, "error": (proc.stderr.strip().splitlines() or ["killed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, nargs="+", default=[5, 30, 300])
    parser.add_argument("--batch", type=int, default=2, help="Windows per training step.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads.")
    parser.add_argument(
        "--scan-tokens",
        type=int,
        nargs="+",
        default=[80, 480],
        help="Sequence lengths (tokens, 16 samples each) of the scan comparison; [] skips it.",
    )
    parser.add_argument("--timeout", type=float, default=900, help="Seconds per measurement.")
    parser.add_argument("--out", type=Path, default=Path("bench/results/femba.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    from mindzoo.models.femba import FEMBAConfig, femba_parameter_count

    target = femba_parameter_count(FEMBAConfig(preset="tiny"), CHANNELS, 5 * SFREQ, "cls")
    common = {"batch": args.batch, "repeats": args.repeats, "threads": args.threads}
    models = []
    for seconds in args.seconds:
        for what in ("femba-tiny", "transformer"):
            spec = {**common, "what": what, "seconds": seconds, "target_params": target}
            models.append(run_child(spec, args.timeout))
            print(json.dumps({k: v for k, v in models[-1].items() if k != "steps"}), flush=True)
    scans = []
    for tokens in args.scan_tokens:
        for scan in ("parallel", "sequential"):
            spec = {**common, "what": "scan", "scan": scan, "tokens": tokens}
            scans.append(run_child(spec, args.timeout))
            print(json.dumps({k: v for k, v in scans[-1].items() if k != "steps"}), flush=True)
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
        "sfreq": SFREQ,
        "channels": CHANNELS,
        "models": models,
        "scan": scans,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
