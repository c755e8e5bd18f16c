"""`braindecode-cli verify STORE`: re-hash every file and check the schema."""

from __future__ import annotations

import typer

from mindzoo.cli.console import make_console
from mindzoo.datasets.store import verify_store

console = make_console()


def register(app: typer.Typer) -> None:
    @app.command()
    def verify(
        store: str = typer.Argument(..., help="Store directory or version, or its URL (s3://...)."),
    ) -> None:
        """Check a store's checksums and schema; exit 1 when anything is wrong."""
        report = verify_store(store)
        if report.ok:
            console.print(
                f"ok: {report.path} ({report.n_files} files, {report.n_bytes / 1e6:.1f} MB verified)"
            )
            return
        for problem in report.problems:
            console.print(f"[red]corrupt:[/] {report.path}: {problem}", highlight=False)
        raise typer.Exit(1)
