"""Colab: the notebooks' first cell, written from one place, and outputs that survive a runtime reset.

    python -m helpers.colab                                      (rewrite cell 1 of every notebook)
    python -m helpers.colab --repo https://github.com/YOU/course  (the same, cloning your fork)
    python -m helpers.colab --check                              (fail if a notebook's cell differs)

Every notebook starts with a cell that clones the course on Colab and installs it. It runs before
the package is installed, so it cannot import anything from here: it is written out in full in each
notebook, and this module is the one place its text (and the clone URL) is kept.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from helpers.core.atomic import write_text_atomic
from helpers.core.errors import UsageError
from helpers.core.paths import ROOT, outputs
from helpers.course.runner import notebooks

COURSE_REPO = "https://github.com/dreambooth-from-the-inside/course"
DRIVE = Path("/content/drive")
DRIVE_OUTPUTS = DRIVE / "MyDrive" / "dreambooth-course" / "outputs"

_HEADER = (
    "# Colab only: fetch the course and install what Colab lacks (torch, matplotlib and ipywidgets are there already)."
)
_BODY = """COURSE_DIR = "/content/course"
import os
import subprocess
import sys

IN_COLAB = "google.colab" in sys.modules
if IN_COLAB:
    if not os.path.isdir(COURSE_DIR):  # a re-run keeps the clone it has
        clone = subprocess.run(
            ["git", "clone", "--depth", "1", COURSE_REPO, COURSE_DIR], capture_output=True, text=True
        )
        if clone.returncode:
            why = clone.stderr.strip().rsplit("\\n", 1)[-1]
            raise SystemExit(
                f"could not clone {COURSE_REPO} ({why}): check the URL (a fork must be public)"
                " and that the runtime has internet"
            )
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", COURSE_DIR], check=True)
    sys.path.insert(0, COURSE_DIR)"""


def setup_cell(repo: str = COURSE_REPO) -> str:
    """The source of every notebook's Colab cell, cloning ``repo``: a failed clone is one line naming
    the fix instead of a CalledProcessError traceback, and a re-run reuses the clone instead of failing."""
    fork = "# Your fork: change the next line, or run python -m helpers.colab --repo URL"
    return f"{_HEADER}\n{fork}\nCOURSE_REPO = {json.dumps(repo)}\n{_BODY}"


def output_root(on_drive: bool = False) -> Path:
    """Where a notebook writes its runs: the outputs folder (``helpers.core.paths.outputs``), or Google
    Drive when asked for.

    A Colab runtime reset loses every folder of the runtime; on Drive a killed DreamBooth run keeps its
    checkpoints, so the next runtime goes on with ``--resume_from_checkpoint latest``.
    """
    if not on_drive:
        return outputs()
    if "google.colab" not in sys.modules:
        raise UsageError(
            "OUTPUTS_ON_DRIVE = True needs Google Drive, which is only there on Colab: "
            "set OUTPUTS_ON_DRIVE = False in the config cell"
        )
    from google.colab import drive

    drive.mount(str(DRIVE))
    return DRIVE_OUTPUTS


def _colab_cell(nb: dict, path: Path) -> dict:
    """Cell 1, refusing to overwrite a notebook whose cell 1 is something else."""
    cells = nb["cells"]
    if len(cells) < 2 or cells[1]["cell_type"] != "code" or not "".join(cells[1]["source"]).startswith("# Colab only"):
        raise UsageError(
            f"{path}: cell 1 is not the Colab setup cell (a code cell starting '# Colab only'); "
            "put the cell there first"
        )
    return cells[1]


def _with_source(cell: dict, source: str) -> dict:
    """The cell holding ``source``, clean as committed notebooks must be; its id and metadata kept."""
    return {**cell, "source": source.splitlines(keepends=True), "outputs": [], "execution_count": None}


def _stale(path: Path, source: str) -> bool:
    cell = _colab_cell(json.loads(path.read_text(encoding="utf-8")), path)
    return _with_source(cell, source) != cell


def _rewrite(path: Path, source: str) -> None:
    nb = json.loads(path.read_text(encoding="utf-8"))
    nb["cells"][1] = _with_source(_colab_cell(nb, path), source)
    write_text_atomic(path, json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m helpers.colab", description=__doc__.split("\n")[0])
    parser.add_argument("--repo", default=COURSE_REPO, help="the git URL the notebooks clone on Colab")
    parser.add_argument("--check", action="store_true", help="change nothing; fail if a notebook's cell differs")
    parser.add_argument("--notebooks", type=Path, default=ROOT / "notebooks", help="the folder of NN_*.ipynb")
    args = parser.parse_args(argv)
    found = notebooks(args.notebooks)
    if not found:
        raise UsageError(f"no NN_*.ipynb notebooks in {args.notebooks}: pass their folder with --notebooks")
    source = setup_cell(args.repo)
    stale = [path for path in found if _stale(path, source)]  # every notebook checked before any is written
    if args.check:
        if stale:
            repo = "" if args.repo == COURSE_REPO else f" --repo {args.repo}"
            raise UsageError(
                f"the Colab cell of {', '.join(p.name for p in stale)} differs from helpers.course.colab's: "
                f"run python -m helpers.colab{repo}"
            )
        print(f"all {len(found)} notebooks clone {args.repo}")
        return
    for path in stale:
        _rewrite(path, source)
    print(f"rewrote the Colab cell of {len(stale)} of {len(found)} notebooks: they clone {args.repo}")
