"""`braindecode-cli models`: the zoo."""

from __future__ import annotations

import typer
from rich.table import Table

from mindzoo.cli.console import make_console

console = make_console()


def register(app: typer.Typer) -> None:
    @app.command()
    def models() -> None:
        """List the models `train` knows, with their parameter counts where fixed."""
        from mindzoo.models import count_parameters, create_model, list_models
        from mindzoo.models.base import REFERENCE_N_VOXELS, REFERENCE_TARGET_SHAPES

        voxels = sum(REFERENCE_N_VOXELS.values())
        targets = ", ".join(f"{k} {list(v)}" for k, v in REFERENCE_TARGET_SHAPES.items())
        table = Table(
            title="mindzoo models",
            caption=(
                f"fMRI decoders counted for one subject of {voxels:,} voxels -> {targets}; "
                "ephys models for one subject of 10 channels, 3 s at 1000 Hz, 61 classes (FEMBA: "
                "22 channels, 5 s at 256 Hz, 2 classes); diffusion for a 1280-d condition"
            ),
        )
        for column in ("name", "parameters", "description"):
            table.add_column(column)
        for info in list_models():
            count = None
            if info.reference is not None:  # default config; data-sized models have none
                count = count_parameters(create_model(info.name))
            table.add_row(info.name, f"{count:,}" if count else "data-dependent", info.description)
        console.print(table)
