"""Folders a command writes: it replaces or deletes only a folder it made, and it says so before any work.

A learner points ``--output_dir`` at the wrong place sooner or later: the folder of their own photos,
the shipped ``data/toy-sd``, the repository's root. Every command that writes a folder therefore

- refuses, in one line and before loading anything, an output inside the course's ``data/`` (the
  shipped models and photos; only the tools that build those models may write there), an output
  equal to or inside one of its input folders, and a non-empty folder it did not make;
- marks what it makes with a small ``.made-by.json`` naming the command, so that the next run of the
  same command may replace it, and no other command may;
- builds a folder it replaces whole beside the old one and swaps it in only when complete, so that a
  crash or a full disk leaves the old folder as it was.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from helpers.core.atomic import write_text_atomic
from helpers.core.errors import UsageError
from helpers.core.paths import DATA

MARK = ".made-by.json"


def _shown(path: str | Path) -> str:
    return str(path) or "."


def is_inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies below it (both resolved)."""
    path, folder = Path(path).expanduser().resolve(), Path(folder).expanduser().resolve()
    return path == folder or folder in path.parents


def made_by(folder: str | Path) -> str | None:
    """The command that made ``folder`` (its mark), or None for a folder no command of the course marked."""
    try:
        return json.loads((Path(folder) / MARK).read_text())["made_by"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def mark(folder: str | Path, tool: str) -> None:
    """Record that ``tool`` made ``folder``: the next run of ``tool`` may replace it, no other command may."""
    note = f"Made by `python -m {tool}`. The course's commands replace or delete only folders they made."
    write_text_atomic(Path(folder) / MARK, json.dumps({"made_by": tool, "note": note}, indent=2) + "\n")


def _entries(folder: Path) -> list[str]:
    """What a folder holds, sorted, less a mark being written (another process of the same run claiming it)."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(f".{MARK}."))


def check_output(
    path: str | Path,
    tool: str,
    flag: str = "--output_dir",
    inputs: Mapping[str, str | Path | None] | None = None,
    shipped_ok: bool = False,
) -> Path:
    """The resolved output folder, after the checks that keep a learner's files: nothing is written here.

    ``inputs`` maps each input folder's flag to its value (the instance photos, the class images, the
    images to upscale); ``shipped_ok`` lets the tools that build the shipped models write under ``data/``.
    """
    given = _shown(path)
    out = Path(path).expanduser().resolve()
    if not shipped_ok and is_inside(out, DATA):
        raise UsageError(
            f"{flag} {given} is inside the course's data/ folder, which holds the shipped models and photos: "
            f"write to a folder of your own, for example outputs/{out.name}"
        )
    for name, folder in (inputs or {}).items():
        if folder is not None and is_inside(out, Path(folder)):
            where = "is" if out == Path(folder).expanduser().resolve() else "is inside"
            raise UsageError(
                f"{flag} {given} {where} {name} {_shown(folder)}: the output would mix with the images there; "
                "pass another folder"
            )
    if out.exists() and not out.is_dir():
        raise UsageError(f"{flag} {given} is a file, not a folder: pass a folder")
    found = _entries(out)
    if found:
        owner = made_by(out)
        if owner is None:
            listing = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
            raise UsageError(
                f"{flag} {given} already holds files that python -m {tool} did not make ({listing}): "
                "pass a new or empty folder; nothing was changed"
            )
        if owner != tool:
            raise UsageError(
                f"{flag} {given} was made by python -m {owner}, not python -m {tool}: pass another folder; "
                "nothing was changed"
            )
    return out


def claim_output(
    path: str | Path,
    tool: str,
    flag: str = "--output_dir",
    inputs: Mapping[str, str | Path | None] | None = None,
    shipped_ok: bool = False,
) -> Path:
    """``check_output``, then the folder made (when missing) and marked as ``tool``'s."""
    out = check_output(path, tool, flag, inputs, shipped_ok)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create {flag} {_shown(path)}: {err.strerror}") from None
    mark(out, tool)
    return out


def disk_full(err: OSError, target: Path) -> UsageError | None:
    """The one line for a disk that filled while ``target`` was written (None for other errors)."""
    if err.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    return UsageError(
        f"the disk filled up while {target} was being written; what was there before is left as it was: "
        "free some space and run the command again"
    )


def _swap(new: Path, target: Path) -> None:
    """Put ``new`` where ``target`` is; the old folder is deleted only once the new one is in place."""
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    had = target.exists()
    if had:
        os.replace(target, old)
    try:
        os.replace(new, target)
    except OSError:
        if had:  # the old folder goes back where it was, not left hidden under another name
            os.replace(old, target)
        raise
    if had:
        shutil.rmtree(old)


@contextmanager
def building(target: str | Path, tool: str, shipped_ok: bool = False) -> Iterator[Path]:
    """A new hidden folder beside ``target`` to write into; when the block ends it is marked as ``tool``'s
    and swapped in for ``target`` whole. An error (a full disk included) removes it and leaves ``target``
    as it was. ``target`` is checked as ``check_output`` does, so only ``tool``'s own folder is replaced."""
    target = check_output(target, tool, shipped_ok=shipped_ok)
    target.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.build-"))
    os.chmod(build, 0o755)  # mkdtemp makes folders private; this one becomes an ordinary output
    try:
        yield build
        mark(build, tool)
        _swap(build, target)
    except OSError as err:
        shutil.rmtree(build, ignore_errors=True)
        raise disk_full(err, target) or err
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise


@contextmanager
def staged(folder: str | Path) -> Iterator[Path]:
    """A hidden stage inside ``folder`` whose files and subfolders, once all are written, replace their
    namesakes in ``folder`` (a trainer's final model beside its checkpoints and logs). A crash or a full
    disk while writing leaves the earlier ones whole."""
    folder = Path(folder)
    stage = Path(tempfile.mkdtemp(dir=folder, prefix=".final-"))
    try:
        yield stage
        for entry in sorted(stage.iterdir()):
            if entry.is_dir():
                _swap(entry, folder / entry.name)
            else:
                os.replace(entry, folder / entry.name)
    except OSError as err:
        raise disk_full(err, folder) or err
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def remove_output(path: str | Path, tool: str | None = None) -> None:
    """Delete a folder that a course command made (``tool``'s, when given); a missing folder is left
    missing, and anything else is refused. Notebooks clear their runs with it before training again."""
    folder = Path(path)
    if not folder.exists():
        return
    owner = made_by(folder)
    if owner is None or (tool is not None and owner != tool):
        maker = f"python -m {tool}" if tool else "a course command"
        raise UsageError(f"{folder} was not made by {maker}, so it is not deleted: remove it yourself if you mean to")
    shutil.rmtree(folder)
