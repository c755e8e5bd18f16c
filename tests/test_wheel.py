"""The wheel is complete: built from the checkout and installed into a fresh venv, its
`braindecode-cli datasets` and `models` list the whole catalog and zoo.

The venv does not see the checkout. The system site-packages hold the editable install's
finder (a ``.pth`` that imports the checkout), so the venv is not made with
``--system-site-packages``; instead a ``.pth`` in its site-packages names the system
site-packages directory: that path is appended to ``sys.path`` (the third-party packages), but
the ``.pth`` files inside it are not processed, so the editable finder stays inactive.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import yaml

from mindzoo.models import list_models

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "mindzoo" / "configs"
# What the build needs none of (and what a build leaves behind: a stale build/lib would leak
# deleted modules into the wheel).
_NOT_COPIED = {".git", "build", "dist", "runs", "stores", "mindzoo-quickstart", "__pycache__"}


def _ignore(folder: str, names: list[str]) -> set[str]:
    return {n for n in names if n in _NOT_COPIED or n.endswith(".egg-info") or n.startswith(".")}


def _run(args: list[str | Path], cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _first_column(table: str) -> set[str]:
    """The non-empty first cells of a rich table's body rows (box drawing or ASCII)."""
    cells = set()
    for line in table.splitlines():
        parts = re.split(r"[│┃|]", line)
        if len(parts) > 2 and not parts[0].strip():
            cells.add(parts[1].strip())
    return cells - {""}


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def test_wheel_installs_the_presets_and_lists_everything(tmp_path: Path) -> None:
    # build from a clean copy: the checkout stays untouched (no build/, no egg-info update)
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=_ignore)
    wheels = tmp_path / "wheels"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", wheels, source],
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("mindzoo-*.whl")

    presets = {p.relative_to(ROOT).as_posix() for p in CONFIGS.rglob("*.yaml")}
    assert {p.split("/")[2] for p in presets} >= {"datasets", "models"}
    with zipfile.ZipFile(wheel) as archive:
        shipped = {n for n in archive.namelist() if n.endswith(".yaml")}
    assert shipped == presets

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path)
    python = _venv_python(venv)
    _run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", wheel],
        tmp_path,
    )
    site = Path(
        _run(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp_path
        ).strip()
    )
    system = dict.fromkeys(sysconfig.get_path(k) for k in ("purelib", "platlib"))
    (site / "_system_packages.pth").write_text("".join(f"{p}\n" for p in system))

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["COLUMNS"] = "400"  # one line per row: names are never wrapped
    where = _run(
        [
            python,
            "-c",
            "import mindzoo, mindzoo.config as c; print(mindzoo.__file__); print(c.configs_dir())",
        ],
        tmp_path,
        env,
    ).splitlines()
    for path in map(Path, where):
        assert path.resolve().is_relative_to(site.resolve()), where
        assert not path.resolve().is_relative_to(ROOT), where

    cli = python.with_name("braindecode-cli.exe" if os.name == "nt" else "braindecode-cli")
    datasets = _first_column(_run([cli, "datasets"], tmp_path, env))
    expected = {
        yaml.safe_load(p.read_text())["name"] for p in (CONFIGS / "datasets").glob("*.yaml")
    }
    assert expected and expected <= datasets, expected - datasets
    models = _first_column(_run([cli, "models"], tmp_path, env))
    names = {info.name for info in list_models()}
    assert names and names <= models, names - models
