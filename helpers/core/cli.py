"""Command-line plumbing shared by every `python -m helpers.<tool>`: bad input ends in one line.

A learner who mistypes a path should read what is wrong and how to fix it, not a 40-line
traceback. Tools raise `UsageError` (or let a `FileNotFoundError` escape); `run_main` prints it as
a single `error: ...` line on stderr and exits with status 2. Any other exception is a bug and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from collections.abc import Callable

from helpers.core.errors import UsageError


def run_main(main: Callable[[], None]) -> None:
    try:
        main()
    except (UsageError, FileNotFoundError, NotADirectoryError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def dataclass_parser(config: type, prog: str, description: str) -> argparse.ArgumentParser:
    """One ``--flag`` per field of a settings dataclass, so the flags and the Python API never drift apart.

    A field without a default is a required flag; a bool is a switch, except ``progress`` which
    becomes ``--no_progress``; a field's ``help`` metadata is its flag's help.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    for f in dataclasses.fields(config):
        flag, help = f"--{f.name}", f.metadata.get("help")
        required = f.default is dataclasses.MISSING
        if f.type in ("bool", bool):
            if f.name == "progress":
                parser.add_argument("--no_progress", dest="progress", action="store_false", help="hide progress bars")
            else:
                parser.add_argument(flag, action="store_true", help=help)
            continue
        kind = {"int": int, "float": float, "int | None": int, "float | None": float}.get(str(f.type), str)
        parser.add_argument(flag, type=kind, required=required, default=None if required else f.default, help=help)
    return parser


def settings_command(module: str, settings) -> str:
    """The ``python -m module --flag value ...`` call that gives these settings (defaults left out),
    for model cards: what a learner would type to make the same output again."""
    words = ["python", "-m", module]
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if f.name in ("progress", "hub_token") or value == f.default:  # never a secret in a card
            continue
        words += [f"--{f.name}"] if value is True else [f"--{f.name}", str(value)]
    return shlex.join(words)


def wrapped_command(module: str, flags: list[str], width: int = 100) -> str:
    """``python -m module flags`` as a README shows a long command: a line broken with a backslash before a
    flag that would pass ``width``, each flag kept with its value."""
    units: list[str] = []
    for word in flags:
        if units and not word.startswith("--") and units[-1].startswith("--") and " " not in units[-1]:
            units[-1] += " " + shlex.quote(word)
        else:
            units.append(shlex.quote(word))
    lines = [f"python -m {module}"]
    for unit in units:
        if len(lines[-1]) + 1 + len(unit) + 2 > width:
            lines[-1] += " \\"
            lines.append("    " + unit)
        else:
            lines[-1] += " " + unit
    return "\n".join(lines)


def train_main(config: type, train: Callable, prog: str, description: str, argv: list[str] | None = None) -> None:
    """A trainer's command line: flags from its settings dataclass, then the result as JSON (no loss history)."""
    import json

    from helpers.core.runtime import configure_cpu

    settings = config(**vars(dataclass_parser(config, prog, description).parse_args(argv)))
    configure_cpu()
    result = train(settings)
    summary = {k: v for k, v in dataclasses.asdict(result).items() if k != "history"}
    if result.history:
        summary["final_loss"] = result.history[-1]["loss"]
    print(json.dumps(summary, indent=2))
