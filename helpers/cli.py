"""Command-line plumbing shared by every `python -m helpers.<tool>`: bad input ends in one line.

A learner who mistypes a path should read what is wrong and how to fix it, not a 40-line
traceback. Tools raise `UsageError` (or let a `FileNotFoundError` escape); `run_main` prints it as
a single `error: ...` line on stderr and exits with status 2. Any other exception is a bug and
keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class UsageError(Exception):
    """Bad input from the user: the message names the problem and the fix."""


def run_main(main: Callable[[], None]) -> None:
    try:
        main()
    except (UsageError, FileNotFoundError, NotADirectoryError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
