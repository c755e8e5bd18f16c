"""A grid's results: one table of finished cells (CSV, Parquet, Markdown), figures of each main
metric per subject and run, and an estimate of the unfinished cells' time and memory."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mindzoo.atomic import reclaim_stale, temp_sibling
from mindzoo.grid.jobs import read_result
from mindzoo.grid.spec import GridPlan

ID_COLUMNS = ("run", "model", "store", "subject", "backend")
COST_COLUMNS = ("wall_s", "peak_rss_mb")
_MAIN = re.compile(
    r"^(two_way_id|retrieval_top1|feature_corr|noise_ceiling_median|accuracy|balanced_accuracy"
    r"|top\d*_accuracy|loss|real\.[^.]+|shuffled\.[^.]+)(\..+)?$"
)
MAX_FIGURES = 8


def gather(plan: GridPlan) -> pd.DataFrame:
    """The rows of the plan's finished cells, in plan order (identity columns first)."""
    rows = [row for cell in plan.cells if (row := read_result(cells_dir(plan), cell.key))]
    if not rows:
        return pd.DataFrame(columns=[*ID_COLUMNS, "key", *COST_COLUMNS])
    frame = pd.DataFrame(rows)
    first = [c for c in (*ID_COLUMNS, "key") if c in frame]
    metrics = sorted(c for c in frame if c not in first and c not in COST_COLUMNS)
    return frame[[*first, *metrics, *[c for c in COST_COLUMNS if c in frame]]]


def cells_dir(plan: GridPlan) -> Path:
    """``OUT/cells``: one directory per finished cell."""
    return plan.out / "cells"


def main_metrics(frame: pd.DataFrame) -> list[str]:
    """The metric columns worth a figure (identification, retrieval, accuracy, image metrics)."""
    return [
        c
        for c in frame.columns
        if _MAIN.match(c) and not c.startswith("chance") and frame[c].notna().any()
    ]


def write_results(
    plan: GridPlan, frame: pd.DataFrame, failures: list[dict[str, Any]]
) -> dict[str, Path]:
    """``results.csv``, ``results.parquet``, ``results.md`` and ``figures/*.png`` under OUT."""
    out = plan.out
    paths = {
        "csv": out / "results.csv",
        "parquet": out / "results.parquet",
        "md": out / "results.md",
    }
    reclaim_stale(out)
    for kind, path in paths.items():
        tmp = temp_sibling(path)
        if kind == "csv":
            frame.to_csv(tmp, index=False)
        elif kind == "parquet":
            frame.to_parquet(tmp, index=False)
        else:
            tmp.write_text(_markdown(plan, frame, failures, _figures(out, frame)))
        tmp.replace(path)
    return paths


def _markdown(
    plan: GridPlan, frame: pd.DataFrame, failures: list[dict[str, Any]], figures: list[Path]
) -> str:
    lines = [f"# Grid {plan.spec.name}", ""]
    lines.append(f"{len(frame)} of {len(plan.cells)} cells finished; {len(failures)} failed.")
    lines.append("")
    columns = [c for c in ID_COLUMNS if c in frame] + main_metrics(frame)
    columns += [c for c in COST_COLUMNS if c in frame]
    if len(frame):
        lines.append("| " + " | ".join(columns) + " |")
        lines.append("|" + "---|" * len(columns))
        for _, row in frame.iterrows():
            lines.append("| " + " | ".join(_cell_text(row[c]) for c in columns) + " |")
        lines.append("")
    if failures:
        lines += ["## Failed cells", ""]
        lines += [f"- {f['name']}: {f['error']} (log: {f['log']})" for f in failures]
        lines.append("")
    for figure in figures:
        lines += [f"![{figure.stem}](figures/{figure.name})", ""]
    return "\n".join(lines)


def _cell_text(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def _figures(out: Path, frame: pd.DataFrame) -> list[Path]:
    """One grouped bar chart per main metric: subjects on x, one bar per run (and backend)."""
    if not len(frame):
        return []
    from matplotlib.figure import Figure

    folder = out / "figures"
    folder.mkdir(exist_ok=True)
    labels = frame["run"] + np.where(frame["backend"] == "none", "", " / " + frame["backend"])
    written = []
    for metric in main_metrics(frame)[:MAX_FIGURES]:
        table = (
            frame.assign(series=labels)
            .dropna(subset=[metric])
            .pivot_table(index="subject", columns="series", values=metric, aggfunc="mean")
        )
        if table.empty:
            continue
        figure = Figure(figsize=(1.2 + 0.9 * len(table.index) * max(1, len(table.columns)) / 2, 3))
        ax = figure.subplots()
        width = 0.8 / len(table.columns)
        x = np.arange(len(table.index))
        for i, series in enumerate(table.columns):
            ax.bar(x + i * width - 0.4 + width / 2, table[series].to_numpy(), width, label=series)
        ax.set_xticks(x, table.index, rotation=30, ha="right")
        ax.set_ylabel(metric)
        ax.set_title(metric)
        ax.legend(fontsize="small", frameon=False)
        figure.tight_layout()
        path = folder / f"{re.sub(r'[^A-Za-z0-9._-]', '_', metric)}.png"
        figure.savefig(path, dpi=100)
        written.append(path)
    return written


def estimate(plan: GridPlan, parallel: int) -> dict[str, Any]:
    """Wall time and peak memory of the unfinished cells, from the finished ones (per backend:
    their mean time; memory: their maximum). Train tasks are not in the estimate."""
    frame = gather(plan)
    todo = [c for c in plan.cells if read_result(cells_dir(plan), c.key) is None]
    result: dict[str, Any] = {
        "cells": len(plan.cells),
        "finished": len(plan.cells) - len(todo),
        "todo": len(todo),
    }
    if not len(frame) or not todo:
        return {**result, "job_seconds": None, "wall_seconds": None, "peak_rss_mb": None}
    per_backend = frame.groupby("backend")["wall_s"].mean()
    overall = float(frame["wall_s"].mean())
    seconds = sum(float(per_backend.get(c.backend, overall)) for c in todo)
    return {
        **result,
        "job_seconds": round(seconds, 1),
        "wall_seconds": round(seconds / max(1, min(parallel, len(todo))), 1),
        "peak_rss_mb": round(float(frame["peak_rss_mb"].max()), 1),
        "from_cells": int(len(frame)),
    }
