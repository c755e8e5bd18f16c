"""The one way CLI modules make a rich console: long lines are never wrapped.

Outside a terminal rich wraps at 80 columns, which splits paths and the ``next: braindecode-cli
...`` hints over lines that cannot be copied or grepped. ``soft_wrap`` leaves each printed line
whole (a terminal still wraps it visually); tables outside a terminal get ``$COLUMNS`` or
:data:`PIPE_WIDTH` columns instead of 80, so their cells are not cut either.
"""

from __future__ import annotations

import os
import sys

from rich.console import Console

PIPE_WIDTH = 160


def make_console(stderr: bool = False) -> Console:
    """A console on stdout (or stderr) that does not wrap or crop long lines."""
    stream = sys.stderr if stderr else sys.stdout
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        terminal = False
    width = None if terminal or "COLUMNS" in os.environ else PIPE_WIDTH
    return Console(stderr=stderr, soft_wrap=True, width=width)
