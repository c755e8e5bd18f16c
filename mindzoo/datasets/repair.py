"""`verify --repair`: set damaged store versions aside so that `prepare` can rebuild them.

Nothing is deleted: a damaged version (unreadable manifest, checksum mismatch, missing or
unexpected files, schema problems) is moved to ``STORE/quarantine/<version>-<UTC time>``, where a
user can inspect or remove it. ``CURRENT`` is pointed at the newest intact version left, or
removed when none is left, so no command reads a damaged version afterwards. Local stores only.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from mindzoo.atomic import write_text
from mindzoo.datasets.remote import CURRENT, MANIFEST, is_url
from mindzoo.datasets.store import VerifyReport, verify_store
from mindzoo.errors import UserInputError

QUARANTINE = "quarantine"


@dataclass
class RepairPlan:
    """The versions of one store directory, checked: ``damaged`` is what a repair moves."""

    store_dir: Path
    reports: list[VerifyReport]

    @property
    def damaged(self) -> list[VerifyReport]:
        return [report for report in self.reports if not report.ok]

    @property
    def intact(self) -> list[Path]:
        return [Path(report.path) for report in self.reports if report.ok]


def store_directory(path: Path | str) -> Path:
    """The store directory of ``path`` (a store directory or one of its version directories)."""
    if is_url(path):
        raise UserInputError(f"{path}: --repair works on local stores only; repair a local copy")
    path = Path(path)
    if path.parent.name == "versions" and (path / MANIFEST).is_file():
        return path.parent.parent
    if not (path / "versions").is_dir():
        raise UserInputError(
            f"{path} is not a store directory (no versions/); pass the --out directory of "
            "`braindecode-cli prepare`"
        )
    return path


def plan_repair(path: Path | str) -> RepairPlan:
    """Verify every finished version of the store at ``path`` (hashes every file)."""
    store_dir = store_directory(path)
    versions = sorted(
        p for p in (store_dir / "versions").iterdir() if p.is_dir() and (p / MANIFEST).is_file()
    )
    return RepairPlan(store_dir, [verify_store(version) for version in versions])


def apply_repair(plan: RepairPlan) -> list[Path]:
    """Move the damaged versions of ``plan`` to quarantine and fix ``CURRENT``; returns the new
    locations."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    quarantine = plan.store_dir / QUARANTINE
    quarantine.mkdir(exist_ok=True)
    moved = []
    for report in plan.damaged:
        target = quarantine / f"{Path(report.path).name}-{stamp}"
        os.replace(report.path, target)
        moved.append(target)
    current = plan.store_dir / CURRENT
    name = current.read_text().strip() if current.is_file() else None
    if name is not None and not (plan.store_dir / "versions" / name / MANIFEST).is_file():
        newest = sorted(plan.intact, key=lambda p: (p / MANIFEST).stat().st_mtime)
        if newest:
            write_text(current, newest[-1].name + "\n")
        else:
            current.unlink()
    return moved
