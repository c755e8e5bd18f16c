"""The `braindecode-cli` application: one Typer app, one thin module per command."""

from __future__ import annotations

import sys

import typer

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
from mindzoo.cli.console import make_console
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

err_console = make_console(stderr=True)


def _version(value: bool) -> None:
    if value:
        from mindzoo import __version__

        print(f"mindzoo {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_version, help="Print the version and exit."
    ),
) -> None:
    """mindzoo: prepare brain datasets, train decoders, evaluate them."""


def _click_exceptions() -> tuple[type[BaseException], ...]:
    """Click's exception class, and that of the copy of click typer may ship (``typer._click``,
    which typer's own parser raises)."""
    import click

    classes: list[type[BaseException]] = [click.ClickException]
    try:
        from typer._click.exceptions import ClickException as TyperClickException

        classes.append(TyperClickException)
    except ImportError:
        pass
    return tuple(classes)


def usage_line(exc: BaseException) -> str:
    """A click usage error as one line: the message and where to read the options."""
    message = " ".join(str(exc.format_message()).split())  # type: ignore[attr-defined]
    context = getattr(exc, "ctx", None)
    command = context.command_path if context is not None else "braindecode-cli"
    return f"{message} (see `{command} --help`)"


def main() -> None:
    """Console entry point: user errors and usage errors become one line on stderr and exit
    status 2."""
    try:
        # standalone_mode=False: click returns typer.Exit codes instead of exiting
        status = app(standalone_mode=False, prog_name="braindecode-cli")
    except UserInputError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except Exception as exc:
        if isinstance(exc, _click_exceptions()):
            if str(exc.format_message()).strip():  # no arguments: the help is already shown
                err_console.print(
                    f"[bold red]error:[/] {usage_line(exc)}", highlight=False, soft_wrap=True
                )
            sys.exit(2)
        raise
    sys.exit(status if isinstance(status, int) else 0)
