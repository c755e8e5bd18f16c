"""What one grid job runs: train one config (:func:`train_task`) or score one cell
(:func:`score_cell`). Both are top-level functions of plain arguments, so they travel to a pool
worker or a Slurm node, and both leave either a finished result or nothing: a killed job loses
only itself.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from mindzoo.atomic import atomic_directory
from mindzoo.evaluation.run import evaluate_run
from mindzoo.executors import peak_rss_mb
from mindzoo.reconstruction.base import GenerationSettings
from mindzoo.reconstruction.run import reconstruct_run
from mindzoo.training.run import train_model

RESULT = "result.json"


def train_finished(run_dir: Path) -> bool:
    """A run whose ``metrics.json`` exists (train writes it last)."""
    return (Path(run_dir) / "metrics.json").is_file()


def train_task(task: dict[str, Any]) -> dict[str, Any]:
    """Train one :class:`~mindzoo.grid.spec.TrainTask` (as a dict) unless already finished;
    a run left unfinished by a killed job is trained again from the start."""
    run_dir = Path(task["run_dir"])
    if train_finished(run_dir):
        return {"run_dir": str(run_dir), "skipped": True}
    start = time.perf_counter()
    train_model(
        task["model"],
        task["store_path"],
        run_dir,
        task["subjects"] or None,
        task["sets"],
        overwrite=True,
        progress=False,
    )
    return {"run_dir": str(run_dir), "skipped": False, "seconds": time.perf_counter() - start}


def cell_dir(cells_dir: Path, key: str) -> Path:
    """Where a cell's result lives (``CELLS/<key>/result.json``)."""
    return Path(cells_dir) / key


def read_result(cells_dir: Path, key: str) -> dict[str, Any] | None:
    """A finished cell's row, or None."""
    path = cell_dir(cells_dir, key) / RESULT
    return json.loads(path.read_text()) if path.is_file() else None


def _numbers(prefix: str, values: dict[str, Any]) -> dict[str, float]:
    """Flatten nested metric dicts into ``prefix + dotted key`` -> number (others dropped)."""
    flat: dict[str, float] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_numbers(f"{name}.", value))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def score_cell(cell: dict[str, Any], cells_dir: str) -> dict[str, Any]:
    """Score one :class:`~mindzoo.grid.spec.Cell` (as a dict); its row, also written atomically
    to ``CELLS/<key>/result.json`` (with the evaluation's or reconstruction's own outputs)."""
    start = time.perf_counter()
    target = cell_dir(Path(cells_dir), cell["key"])
    row: dict[str, Any] = {
        k: cell[k] for k in ("key", "run", "model", "store", "subject", "backend")
    }
    with atomic_directory(target) as tmp:
        if cell["backend"] == "none":
            metrics = evaluate_run(Path(cell["run_dir"]), tmp / "eval", subjects=[cell["subject"]])
            row.update(_numbers("", metrics["subjects"][cell["subject"]]))
        else:
            generation = dict(cell["reconstruct"])
            weights = generation.pop("weights", {}).get(cell["backend"])
            recon = reconstruct_run(
                Path(cell["run_dir"]),
                cell["store_path"],
                tmp / "reconstruct",
                backend=cell["backend"],
                weights=Path(weights) if weights else None,
                subjects=[cell["subject"]],
                settings=GenerationSettings(**generation),
                progress=False,
            )
            row.update(_numbers("", recon["subjects"][cell["subject"]]))
        row["wall_s"] = round(time.perf_counter() - start, 3)
        row["peak_rss_mb"] = round(peak_rss_mb(), 1)
        (tmp / RESULT).write_text(json.dumps(row, indent=2, sort_keys=True))
    return row
