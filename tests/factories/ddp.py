"""`run_ddp`: run a training script under torch.distributed.run with 1 and 2 CPU processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]  # tests/, so the scripts can import factories


def run_ddp(script_text: str, store_path: Path, tmp_path: Path, port_base: int) -> dict[int, dict]:
    """Run `script_text STORE OUT` under torch.distributed.run with 1 and 2 CPU processes.

    The script writes OUT.json; returns {world size: that JSON}.
    """
    script = tmp_path / "ddp_train.py"
    script.write_text(script_text)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
    results = {}
    for world in (1, 2):
        out = str(tmp_path / f"world{world}")
        launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world)]
        launch += ["--master_port", str(port_base + world), str(script), str(store_path), out]
        proc = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[world] = json.loads(Path(out + ".json").read_text())
    return results
