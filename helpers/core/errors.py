"""The one error a learner's bad input raises: its message names the problem and the fix.

``helpers.core.cli.run_main`` prints it as a single ``error: ...`` line; a notebook shows it as it is.
Every module may raise it without depending on the command-line plumbing.
"""


class UsageError(Exception):
    """Bad input from the user: the message names the problem and the fix."""


def first_line(err: BaseException, limit: int = 160) -> str:
    """An exception as a phrase for a one-line message: its first line, cut at ``limit`` characters, or its
    type's name when it says nothing."""
    text = str(err).strip()
    return text.splitlines()[0][:limit] if text else type(err).__name__
