"""Neuroformer speed on CPU: training and generation tokens/s and peak RSS as units grow, and
ours vs the official Neuroformer model class at the same configuration and input shapes.

1. For each ``--units`` count a store of random Poisson spikes (``--rate`` Hz per unit, 16x16
   frames) is generated under ``--work``; our default ``neuroformer`` config trains
   (fwd + bwd + AdamW step, batch ``--batch``) for ``--iters`` steps -> target tokens/s (median
   over steps), then
   generates ``--gen-windows`` windows -> generated tokens/s; peak RSS after each (the process's
   high-water mark, so it only grows).
2. With ``--official-root PATH`` (an extracted a-antoniades/Neuroformer checkout), its
   ``neuroformer/model_neuroformer.py:Neuroformer`` is imported from that path (bench time only;
   missing unrelated imports -- timm, torchvision, torchmetrics, omegaconf -- are stubbed, the
   per-row precision/recall metrics then return 0) and built with the same sizes (our default
   with encoder = state blocks and frame = stimulus blocks, which the official ties together),
   fed the same windows padded to its fixed block sizes; fwd + bwd iterations of the two
   alternate in one process -> samples/s of each and the ratio per unit count, median ratio.

    python bench/spikes.py [--units 100 500 2000] [--official-root PATH] [--out bench/results/spikes.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
import types
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mindzoo.datasets.spike_store import SpikeSubject
from mindzoo.datasets.spike_views import SpikeDataConfig, SpikeWindows
from mindzoo.datasets.store import StoreWriter, TensorStore
from mindzoo.models import count_parameters
from mindzoo.models.neuroformer import Neuroformer, NeuroformerConfig


def make_store(root: Path, n_units: int, rate: float, seconds: float, seed: int = 0) -> Path:
    """A one-subject spikes store: Poisson spikes at ``rate`` Hz per unit over ``seconds`` s in
    1 s train trials, 8 random 16x16 images shown 1 s each."""
    path = root / f"units-{n_units}"
    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    n = rng.poisson(rate * n_units * seconds)
    times = np.sort(rng.uniform(0, seconds, n))
    n_trials = int(seconds)
    trials = pd.DataFrame(
        {
            "start": np.arange(n_trials, dtype=float),
            "stop": np.arange(n_trials, dtype=float) + 1,
            "stimulus_index": np.arange(n_trials) % 8,
            "session": 0,
            "run": 0,
            "repetition": 0,
            "split": "train",
        }
    )
    units = pd.DataFrame(
        {"id": np.arange(n_units).astype(str), "electrode_group": "g", "location": "V1"}
    ).assign(quality="good")
    subject = SpikeSubject(
        times=times,
        units=rng.integers(0, n_units, n).astype(np.int32),
        unit_table=units,
        trials=trials,
        t_start=0.0,
        t_stop=seconds,
        frame_times=np.arange(n_trials, dtype=float),
        frame_index=np.arange(n_trials) % 8,
    )
    with StoreWriter(path, "bench") as writer:
        images = rng.integers(0, 255, (8, 16, 16, 3), dtype=np.uint8)
        writer.write_stimuli(images, [f"s{i}" for i in range(8)], ["x"] * 8, ["train"] * 8)
        writer.write_spikes("mouse", subject)
        writer.commit({"dataset": "bench", "modality": "spikes"})
    return path


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_ours(view: SpikeWindows, cfg: NeuroformerConfig, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    model = Neuroformer(cfg, view.info).train()
    opt = torch.optim.AdamW(model.optimizer_groups(model.parameters()), lr=1e-4)
    rng = np.random.default_rng(0)
    batches = [
        view.batch(np.sort(rng.choice(len(view), args.batch, replace=False)).tolist())
        for _ in range(args.iters + 1)
    ]
    rates, tokens = [], 0
    for k, batch in enumerate(batches):
        t0 = time.perf_counter()
        loss, _ = model.training_step(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if k:  # the first step warms up
            n = int((batch.length - 1).sum())
            rates.append(n / (time.perf_counter() - t0))
            tokens += n
    # median over steps: this machine's CPUs are shared, single steps stall now and then
    train = {"tokens_per_s": statistics.median(rates), "steps": args.iters, "tokens": tokens}
    model.eval()
    batch = view.batch(range(args.gen_windows))
    t0 = time.perf_counter()
    draws = model.sample(batch, torch.Generator().manual_seed(0))
    gen_s = time.perf_counter() - t0
    generated = sum(len(u) + 1 for _, u in draws)  # + EOS
    return {
        "parameters": count_parameters(model),
        "mean_tokens_per_window": float((batch.length - 2).float().mean()),
        "train": train,
        "generate": {"tokens_per_s": generated / gen_s, "tokens": generated, "seconds": gen_s},
        "peak_rss_mb": peak_rss_mb(),
    }


# ------------------------------------------------------------------ the official model class
def _stub_unrelated_imports() -> list[str]:
    """Stub the official module's imports that the model class does not need (for CPU)."""
    stubbed = []

    def stub(name: str, **attrs: object) -> None:
        try:
            __import__(name)
        except ImportError:
            module = types.ModuleType(name)
            module.__dict__.update(attrs)
            sys.modules[name] = module
            stubbed.append(name)

    zero = lambda *a, **k: torch.zeros(())  # noqa: E731
    stub("timm", create_model=None)
    stub("torchvision")
    stub("torchvision.models")
    stub("torchvision.models.video", r3d_18=None)
    stub("torchmetrics")
    stub("torchmetrics.functional", precision=zero, recall=zero, f1_score=zero)
    if "torchmetrics" in stubbed:
        sys.modules["torchmetrics"].functional = sys.modules["torchmetrics.functional"]
    stub("omegaconf")
    stub("omegaconf.dictconfig", DictConfig=dict)
    return stubbed


def official_model(root: Path, cfg: NeuroformerConfig, n_units: int, data: SpikeDataConfig, info):
    """The official ``Neuroformer`` built with ``cfg``'s sizes (namespace config as its yaml)."""
    sys.path.insert(0, str(root / "neuroformer"))
    from model_neuroformer import Neuroformer as Official  # noqa: PLC0415

    ns = types.SimpleNamespace

    dropout = ns(**{k: cfg.dropout for k in "attn embd pos resid temp b id im".split()})
    config = ns(
        dropout=dropout,
        block_size=ns(id=data.max_tokens + 1, prev_id=data.max_prev_tokens, frame=0, behavior=0),
        layers=ns(
            state_history=cfg.n_history_layers,
            state=cfg.n_state_layers,
            stimulus=cfg.n_stimulus_layers,
        ),
        sparse=ns(p=None, mask=False, topk=None, topk_frame=None, topk_id=None, topk_prev_id=None),
        frame_encoder=ns(
            conv_layer=True,
            kernel_size=list(cfg.frame_kernel),
            n_embd=cfg.n_embd,
            n_embd_frames=64,
            resnet_backbone=False,
        ),
        contrastive=ns(contrastive=cfg.contrastive, vars=["id", "frames"], clip_temp=0.5),
        mlp_only=False,
        gru_only=False,
        gru2_only=False,
        class_weights=None,
        n_head=cfg.n_head,
        n_embd=cfg.n_embd,
        pos_emb=True,
        temp_emb=True,
        wave_emb=cfg.dt_embedding == "sinusoid",
        vit_encoder=True,
    )
    id_vocab = {**{i: i for i in range(n_units)}, "EOS": n_units, "SOS": n_units + 1}
    id_vocab["PAD"] = n_units + 2
    n_dt = info.n_dt
    dt_vocab = {**{i: i for i in range(n_dt)}, "EOS": n_dt, "SOS": n_dt + 1, "PAD": n_dt + 2}
    tokenizer = ns(
        ID_vocab_size=n_units + 3, dt_vocab_size=n_dt + 3, stoi={"ID": id_vocab, "dt": dt_vocab}
    )
    return Official(config, tokenizer)


def official_inputs(batch, data: SpikeDataConfig) -> tuple[dict, dict]:
    """Our batch in the official layout: inputs ``id``/``dt`` = tokens[:-1] (block_size.id),
    targets tokens[1:], past tokens, frames [B, 1, t, h, w], pad = PAD count per row."""
    x = {
        "id": batch.id[:, :-1],
        "dt": batch.dt[:, :-1].float(),
        "id_prev": batch.prev_id,
        "dt_prev": batch.prev_dt.float(),
        "frames": batch.frames.transpose(1, 2),
        "pad": (data.max_tokens + 1 - (batch.length - 1)).clamp_min(1),
    }
    y = {"id": batch.id[:, 1:], "dt": batch.dt[:, 1:]}
    return x, y


def bench_vs_official(view: SpikeWindows, cfg: NeuroformerConfig, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    ours = Neuroformer(cfg, view.info).train()
    theirs = official_model(
        args.official_root, cfg, view.info.units["mouse"], view.config, view.info
    )
    theirs.train()
    rng = np.random.default_rng(1)
    times = {"ours": [], "official": []}
    for k in range(args.compare_iters + 1):
        batch = view.batch(np.sort(rng.choice(len(view), args.batch, replace=False)).tolist())
        x, y = official_inputs(batch, view.config)
        for name in ("ours", "official"):
            t0 = time.perf_counter()
            if name == "ours":
                loss = ours.training_step(batch)[0]
            else:
                _, _, losses = theirs(dict(x), {k: v.clone() for k, v in y.items()})
                loss = sum(v for v in losses.values())
            loss.backward()
            if k:
                times[name].append(time.perf_counter() - t0)
    ours_sps = args.batch / statistics.median(times["ours"])
    theirs_sps = args.batch / statistics.median(times["official"])
    return {
        "parameters": {"ours": count_parameters(ours), "official": count_parameters(theirs)},
        "samples_per_s": {"ours": ours_sps, "official": theirs_sps},
        "ratio_ours_over_official": ours_sps / theirs_sps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, nargs="+", default=[100, 500, 2000])
    parser.add_argument("--rate", type=float, default=5.0, help="Hz per unit")
    parser.add_argument("--seconds", type=float, default=60.0, help="recording length (s)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--iters", type=int, default=10, help="timed training steps")
    parser.add_argument("--gen-windows", type=int, default=8)
    parser.add_argument("--compare-iters", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--official-root", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=Path("/tmp/mindzoo-bench-spikes"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/spikes.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = NeuroformerConfig()
    matched = cfg.model_copy(
        update={"n_encoder_layers": cfg.n_state_layers, "n_frame_layers": cfg.n_stimulus_layers}
    )
    data = SpikeDataConfig()
    stubbed = _stub_unrelated_imports() if args.official_root else []
    results = {
        "platform": platform.platform(),
        "torch": torch.__version__,
        "threads": args.threads,
        "config": cfg.model_dump(),
        "rate_hz": args.rate,
        "batch": args.batch,
        "units": {},
        "vs_official": {},
        "official_stubbed_imports": stubbed,
    }
    for n_units in args.units:
        view = SpikeWindows(
            TensorStore.open(make_store(args.work, n_units, args.rate, args.seconds)),
            ["mouse"],
            "train",
            data,
        )
        row = bench_ours(view, cfg, args)
        results["units"][n_units] = row
        print(
            f"{n_units:5d} units: {row['mean_tokens_per_window']:.0f} tokens/window, train "
            f"{row['train']['tokens_per_s']:.0f} tok/s, generate "
            f"{row['generate']['tokens_per_s']:.0f} tok/s, peak RSS {row['peak_rss_mb']:.0f} MB",
            flush=True,
        )
        if args.official_root:
            cmp = bench_vs_official(view, matched, args)
            results["vs_official"][n_units] = cmp
            sps = cmp["samples_per_s"]
            print(
                f"       vs official ({cmp['parameters']}): ours {sps['ours']:.1f} "
                f"samples/s, official {sps['official']:.1f}, ratio "
                f"{cmp['ratio_ours_over_official']:.2f}",
                flush=True,
            )
    if results["vs_official"]:
        ratios = [r["ratio_ours_over_official"] for r in results["vs_official"].values()]
        results["median_ratio"] = statistics.median(ratios)
        results["matched_config"] = matched.model_dump()
        print(f"median ratio ours/official: {results['median_ratio']:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
