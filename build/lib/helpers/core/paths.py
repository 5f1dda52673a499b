"""Where things are, defined once: the repository, its data folder, and the outputs folder.

The outputs folder is the one setting notebooks and ``make course`` share: ``helpers.course.runner``
runs every notebook with ``COURSE_OUTPUTS`` set to its ``--output``, and whatever a notebook
writes (figures, fine-tunes, class images) goes below ``outputs()``. Without it, ``outputs/``
at the repository's root.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data"


def outputs() -> Path:
    """``$COURSE_OUTPUTS``, or ``outputs/`` at the repository's root."""
    return Path(os.environ.get("COURSE_OUTPUTS", ROOT / "outputs"))
