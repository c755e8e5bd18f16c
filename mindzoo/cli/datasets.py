"""`braindecode-cli datasets`: the catalog."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from mindzoo.datasets.catalog import list_datasets

console = Console()


def register(app: typer.Typer) -> None:
    @app.command()
    def datasets() -> None:
        """List the datasets `prepare` knows."""
        table = Table(title="mindzoo datasets")
        for column in ("name", "modality", "source", "licence", "description"):
            table.add_column(column)
        for spec in list_datasets().values():
            table.add_row(spec.name, spec.modality, spec.source, spec.licence, spec.description)
        console.print(table)
