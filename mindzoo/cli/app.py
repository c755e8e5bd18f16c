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


def _option_value(name: str) -> str | None:
    """The value given to option ``name`` on the command line (``--out X`` or ``--out=X``)."""
    args = sys.argv[1:]
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    return None


def disk_error_line(exc: BaseException) -> str | None:
    """A full disk or quota, or a read-only file system, behind ``exc`` as one line naming the
    place written to (the file the error names, or ``--out`` where that is a hidden temporary
    or lock or no file is named); None for any other error."""
    import errno
    import os

    from mindzoo.atomic import disk_errno

    code = disk_errno(exc)
    if code is None:
        return None
    named: str | None = None
    cause: BaseException | None = exc
    while cause is not None and named is None:
        named = getattr(cause, "filename", None) if isinstance(cause, OSError) else None
        cause = cause.__cause__ or cause.__context__
    if named is None or os.path.basename(str(named)).startswith("."):
        named = _option_value("--out") or named
    where = f" writing {named}" if named else ""
    advice = (
        "choose a writable --out"
        if code == errno.EROFS
        else "free some space there (or choose another --out) and run the command again"
    )
    return f"{os.strerror(code).lower()}{where}; {advice}"


def out_error_line(exc: BaseException) -> str | None:
    """An OS error (permission, missing or not-a-directory parent) while creating ``--out``, a
    folder above it, a temporary beside them or a file inside it, as one line naming ``--out``;
    None for any other error (those are bugs and keep their traceback)."""
    import os

    out = _option_value("--out")
    if out is None or "://" in out:
        return None
    target = os.path.abspath(out)
    cause: BaseException | None = exc
    while cause is not None:
        named = getattr(cause, "filename", None) if isinstance(cause, OSError) else None
        if named is not None:
            path = os.path.abspath(str(named))
            parent = os.path.dirname(path)
            hidden = os.path.basename(path).startswith(".")
            if (
                path == target
                or target.startswith(path + os.sep)
                or path.startswith(target + os.sep)
                or (hidden and (parent == target or target.startswith(parent + os.sep)))
            ):
                reason = cause.strerror or type(cause).__name__  # type: ignore[union-attr]
                return f"--out {out} cannot be written: {reason} ({named}); choose a writable --out"
        cause = cause.__cause__ or cause.__context__
    return None


def main() -> None:
    """Console entry point: user errors, usage errors and a full or read-only disk become one
    line on stderr and exit status 2."""
    try:
        # standalone_mode=False: click returns typer.Exit codes instead of exiting
        status = app(standalone_mode=False, prog_name="braindecode-cli")
    except UserInputError as exc:
        from rich.markup import escape  # "[trial, channel, time]" is text, not markup

        err_console.print(
            f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True
        )
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort as exc:
        if isinstance(exc.__cause__, EOFError):  # click turns any EOFError into an Abort
            from rich.markup import escape

            line = f"a file or input ended early ({exc.__cause__ or 'EOFError'}); it is truncated"
            err_console.print(
                f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True
            )
            sys.exit(2)
        err_console.print("aborted")
        sys.exit(130)
    except Exception as exc:
        if isinstance(exc, _click_exceptions()):
            if str(exc.format_message()).strip():  # no arguments: the help is already shown
                err_console.print(
                    f"[bold red]error:[/] {usage_line(exc)}", highlight=False, soft_wrap=True
                )
            sys.exit(2)
        disk = disk_error_line(exc) or out_error_line(exc)
        if disk is not None:
            from rich.markup import escape

            err_console.print(
                f"[bold red]error:[/] {escape(disk)}", highlight=False, soft_wrap=True
            )
            sys.exit(2)
        raise
    sys.exit(status if isinstance(status, int) else 0)
