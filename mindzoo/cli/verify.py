"""`braindecode-cli verify STORE [--repair]`: re-hash every file and check the schema; with
``--repair``, move damaged versions to ``STORE/quarantine/`` (after asking) so `prepare` rebuilds."""

from __future__ import annotations

import sys

import typer

from mindzoo.cli.console import make_console
from mindzoo.datasets.store import verify_store
from mindzoo.errors import UserInputError

console = make_console()


def _repair(store: str, yes: bool) -> None:
    from mindzoo.datasets.repair import apply_repair, plan_repair

    plan = plan_repair(store)
    for report in plan.reports:
        for problem in report.problems:
            console.print(f"[red]damaged:[/] {report.path}: {problem}", highlight=False)
    if not plan.damaged:
        console.print(f"ok: {plan.store_dir}: {len(plan.reports)} version(s) intact, nothing to do")
        return
    names = ", ".join(str(report.path) for report in plan.damaged)
    if not yes:
        if not sys.stdin.isatty():
            raise UserInputError(
                f"{plan.store_dir}: {len(plan.damaged)} damaged version(s) ({names}); re-run with "
                "--yes to move them to quarantine/ without asking"
            )
        if not typer.confirm(f"Move {names} to {plan.store_dir / 'quarantine'}?", default=False):
            console.print("nothing moved")
            raise typer.Exit(1)
    for target in apply_repair(plan):
        console.print(f"moved to {target}", highlight=False)
    console.print(
        f"next: braindecode-cli prepare DATASET --out {plan.store_dir} rebuilds what was moved",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    @app.command()
    def verify(
        store: str = typer.Argument(..., help="Store directory or version, or its URL (s3://...)."),
        repair: bool = typer.Option(
            False,
            "--repair",
            help="Check every version; move damaged ones to STORE/quarantine/ (asks first).",
        ),
        yes: bool = typer.Option(False, "--yes", "-y", help="With --repair: do not ask."),
    ) -> None:
        """Check a store's checksums and schema; exit 1 when anything is wrong."""
        if repair:
            _repair(store, yes)
            return
        report = verify_store(store)
        if report.ok:
            console.print(
                f"ok: {report.path} ({report.n_files} files, {report.n_bytes / 1e6:.1f} MB verified)"
            )
            return
        for problem in report.problems:
            console.print(f"[red]corrupt:[/] {report.path}: {problem}", highlight=False)
        raise typer.Exit(1)
