"""The `braindecode-cli` application: one Typer app, one thin module per command."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from mindzoo.cli import (
    adapt,
    datasets,
    evaluate,
    models,
    prepare,
    quickstart,
    reconstruct,
    train,
    verify,
)
from mindzoo.errors import UserInputError

app = typer.Typer(
    name="braindecode-cli",
    help="mindzoo: prepare brain datasets, train decoders, evaluate them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for module in (quickstart, datasets, models, prepare, verify, train, adapt, evaluate, reconstruct):
    module.register(app)

err_console = Console(stderr=True)


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit status 2."""
    try:
        status = app(standalone_mode=False)  # click returns typer.Exit codes in this mode
    except UserInputError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except Exception as exc:  # click usage errors carry their own exit code
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    sys.exit(status if isinstance(status, int) else 0)
