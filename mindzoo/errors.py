"""The one exception type for bad user input.

Raise :class:`UserInputError` with a single line that names the offending file or value and
says how to fix it. The CLI prints that line (no traceback) and exits with status 2.
"""


class UserInputError(Exception):
    """Bad input from the user: a file, a value, a name. The message is one line with the fix."""


class DamagedFileError(UserInputError):
    """A file mindzoo wrote no longer matches the checksum written with it (or is unreadable):
    the message names the file and how to re-create or check it. Exit status 2, like bad input.
    ``problem`` is what is wrong without the advice (what ``verify`` lists); default the message."""

    def __init__(self, message: str, problem: str | None = None) -> None:
        super().__init__(message)
        self.problem = problem or message
