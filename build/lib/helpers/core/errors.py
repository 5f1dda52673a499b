"""The one error a learner's bad input raises: its message names the problem and the fix.

``helpers.core.cli.run_main`` prints it as a single ``error: ...`` line; a notebook shows it as it is.
Every module may raise it without depending on the command-line plumbing.
"""


class UsageError(Exception):
    """Bad input from the user: the message names the problem and the fix."""
