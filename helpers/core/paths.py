"""Where things are, defined once: the repository, its data folder, and the outputs folder.

``make course`` (``helpers.course.runner``) passes two settings to the notebooks it runs, and this
is where both are documented:

- ``COURSE_OUTPUTS``: its ``--output``. Whatever a notebook writes (figures, fine-tunes, class
  images) goes below ``outputs()``; without it, ``outputs/`` at the repository's root.
- ``COURSE_PROFILE``: ``toy`` unless already set. ``helpers.diffusion.profiles.choose_profile``
  reads it when a notebook's ``PROFILE`` is ``None``.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data"


def outputs() -> Path:
    """``$COURSE_OUTPUTS``, or ``outputs/`` at the repository's root."""
    return Path(os.environ.get("COURSE_OUTPUTS", ROOT / "outputs"))
