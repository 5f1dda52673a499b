"""Numbers a learner passes to a command or a settings dataclass: one that cannot work is one line.

argparse's ``type=float`` takes "inf" and "nan", and nothing stops a negative step count: such a
value trains a model of NaNs, saves noise, or fails deep inside torch with a traceback. Every
command checks its numbers with these before any model loads; each failure names the flag, the
value and the fix.
"""

from __future__ import annotations

import math

from helpers.core.errors import UsageError

SEEDS = 2**32  # numpy's seed range, which diffusers' set_seed (and so its training scripts) takes


def _refuse(flag: str, value: float, rule: str, fix: str) -> None:
    raise UsageError(f"{flag} must be {rule} (got {value}): {fix}")


def finite(flag: str, value: float | None, fix: str | None = None) -> None:
    """Refuse inf and nan; None (a flag left out) passes."""
    if value is not None and not math.isfinite(value):
        _refuse(flag, value, "a finite number", fix or "pass an ordinary number such as 1.0")


def at_least(flag: str, value: float | None, low: float, fix: str | None = None) -> None:
    """Refuse ``value`` unless it is a finite number of at least ``low``; None (a flag left out) passes."""
    if value is None or (math.isfinite(value) and value >= low):
        return
    rule = f"at least {low}" if isinstance(value, int) else f"a finite number of at least {low}"
    _refuse(flag, value, rule, fix or f"pass {low} or more")


def positive(flag: str, value: float | None, fix: str | None = None) -> None:
    """Refuse ``value`` unless it is a finite number above 0; None (a flag left out) passes."""
    if value is None or (math.isfinite(value) and value > 0):
        return
    _refuse(flag, value, "a finite number above 0", fix or "pass a positive number")


def fraction(flag: str, value: float, fix: str | None = None) -> None:
    """Refuse ``value`` unless it lies between 0 and 1 (NaN does not)."""
    if not 0 <= value <= 1:
        _refuse(flag, value, "a fraction between 0 and 1", fix or "pass a number from 0 to 1")


def between(flag: str, value: float, low: float, high: float, fix: str | None = None) -> None:
    """Refuse ``value`` unless it lies from ``low`` to ``high`` (NaN does not)."""
    if not low <= value <= high:
        _refuse(flag, value, f"between {low:g} and {high:g}", fix or f"pass a number from {low:g} to {high:g}")


def seed_in_range(flag: str, value: int) -> None:
    """Refuse a seed outside 0 .. 2**32 - 1, the range numpy and diffusers' ``set_seed`` take."""
    if not 0 <= value < SEEDS:
        _refuse(flag, value, f"between 0 and {SEEDS - 1}", "pass 0 or another seed in that range")
