"""`braindecode-cli datasets [--info NAME]`: the catalog, or what one entry holds."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from mindzoo.cli.console import make_console
from mindzoo.datasets.catalog import DatasetSpec, get_dataset, list_datasets

console = make_console()

SOURCE_KINDS = {
    "synthetic": "generated on your machine",
    "local": "a directory on disk (--source PATH; a DataLad dataset or URL is cloned)",
    "datalad": "a DataLad dataset, cloned into STORE/raw and fetched selectively",
    "nsd-mirror": "a local mirror of the NSD release (--source PATH)",
}


def describe(spec: DatasetSpec) -> list[tuple[str, str]]:
    """(field, text) rows of ``datasets --info``, in the order a user needs them."""
    source = f"{spec.source}: {SOURCE_KINDS[spec.source]}"
    if spec.location:
        source += f"; default location {spec.location}"
    rows = [
        ("name", spec.name),
        ("description", spec.description),
        ("modality", spec.modality),
        ("source", source),
        ("licence", spec.licence),
        ("access", spec.access),
        ("subjects", spec.info.subjects),
        ("size per subject", spec.info.size_per_subject),
        ("splits", spec.info.splits),
        ("stimuli", spec.info.stimuli),
        ("prepare", spec.info.prepare),
    ]
    pipeline = spec.settings.get("pipeline") or {}
    if pipeline:
        settings = ", ".join(
            f"pipeline.{key}={json.dumps(value)}" for key, value in pipeline.items()
        )
        rows.append(("entry settings", settings))
    if spec.info.citation:
        rows.append(("citation", spec.info.citation))
    return rows


def register(app: typer.Typer) -> None:
    @app.command()
    def datasets(
        info: str | None = typer.Option(
            None, metavar="NAME", help="Print what entry NAME holds and what prepare does."
        ),
    ) -> None:
        """List the datasets `prepare` knows, or describe one with --info NAME."""
        if info is not None:
            # one unwrapped line per field: the terminal wraps it, grep and copy-paste see it whole
            from rich.markup import escape  # "regions=[vSMC,STG]" is text, not markup

            for field, text in describe(get_dataset(info)):
                console.print(
                    f"[bold]{field}:[/] {escape(' '.join(text.split()))}",
                    soft_wrap=True,
                    highlight=False,
                )
            return
        from rich.markup import escape

        table = Table(title="mindzoo datasets (details: datasets --info NAME)")
        for column in ("name", "modality", "source", "licence", "description"):
            table.add_column(column)
        for spec in list_datasets().values():
            cells = (spec.name, spec.modality, spec.source, spec.licence, spec.description)
            table.add_row(*(escape(cell) for cell in cells))
        console.print(table)
