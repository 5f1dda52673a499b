"""Atomic writes: a file is either the old one or the complete new one, never half of each.

A learner who interrupts a long training run (or a Colab runtime that disconnects) must not find a
truncated checkpoint or cache. Every write goes to a temporary file in the same folder, is flushed
to disk, and is then renamed over the target, which POSIX makes atomic.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file


def _replace(tmp: Path, target: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)  # mkstemp makes files private; these are ordinary outputs
    os.replace(tmp, target)


@contextmanager
def _temp_beside(path: Path) -> Iterator[Path]:
    """A new empty temporary file in ``path``'s folder (so that the final rename stays on one
    filesystem), moved onto ``path`` when the block completes and removed when it fails."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    with _temp_beside(Path(path)) as tmp:
        tmp.write_text(text, encoding="utf-8")


def save_safetensors_atomic(tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    with _temp_beside(Path(path)) as tmp:
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp))


def save_torch_atomic(obj, path: str | Path) -> None:
    """``torch.save`` that leaves either the old file or the complete new one (training states, caches)."""
    with _temp_beside(Path(path)) as tmp:
        torch.save(obj, tmp)


def save_image_atomic(image: Image.Image, path: str | Path) -> None:
    """A PNG (or whatever the suffix names) that a reader never sees half written."""
    path = Path(path)
    with _temp_beside(path) as tmp:
        image.save(tmp, format=Image.registered_extensions()[path.suffix.lower()])
