"""A notebook's settings table: a row per setting, a column per place the notebook runs.

A notebook's config cell holds its sizes in one table, ``SETTINGS``. The rows that configure a trainer
are named as its settings are (``TrainConfig``'s fields, which are ``python -m helpers.dreambooth``'s
flags), so that a row goes into the trainer as it is; the other rows are the notebook's own (how many
samples to score). The columns are the profiles ("toy", "sd15", ...) and ``CI``: the smallest sizes at
which the notebook's real-model branch still runs every line, which the course's CI uses on a tiny
model of the hub's shape (``tests/real_branch.py``). A row without a "ci" entry keeps the profile's value.
"""

from __future__ import annotations

import dataclasses

from helpers.core.errors import UsageError

CI = "ci"


def column(settings: dict[str, dict], profile: str, sizes: str | None = None) -> dict:
    """The values a notebook runs with: ``profile``'s column of ``settings``, or with ``sizes="ci"`` the
    CI column where a row has one."""
    if sizes not in (None, CI):
        raise UsageError(f'SIZES must be None (the profile\'s column) or "{CI}" (got {sizes!r})')
    missing = [name for name, row in settings.items() if profile not in row]
    if missing:
        raise UsageError(f"SETTINGS has no {profile!r} value for {', '.join(missing)}: add one to each row")
    return {name: row[sizes] if sizes in row else row[profile] for name, row in settings.items()}


def fields_of(cls: type, values: dict) -> dict:
    """The ``values`` that are settings of the dataclass ``cls`` (the other rows are the notebook's own)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {name: value for name, value in values.items() if name in names}
