"""Atomic writes: a file is either the old one or the complete new one, never half of each.

A learner who interrupts a long training run (or a Colab runtime that disconnects) must not find a
truncated checkpoint or cache. Every write goes to a temporary file in the same folder, is flushed
to disk, and is then renamed over the target, which POSIX makes atomic.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file


def _replace(tmp: Path, target: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)  # mkstemp makes files private; these are ordinary outputs
    os.replace(tmp, target)


def _temp_beside(path: Path) -> Path:
    """A new empty temporary file in ``path``'s folder, so that the final rename stays on one filesystem."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    return Path(tmp)


def write_text_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    tmp = _temp_beside(path)
    tmp.write_text(text, encoding="utf-8")
    _replace(tmp, path)


def save_safetensors_atomic(tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    path = Path(path)
    tmp = _temp_beside(path)
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp))
    _replace(tmp, path)


def save_torch_atomic(obj, path: str | Path) -> None:
    """``torch.save`` that leaves either the old file or the complete new one (training states, caches)."""
    path = Path(path)
    tmp = _temp_beside(path)
    torch.save(obj, tmp)
    _replace(tmp, path)


def replace_dir_atomic(build: Path, target: Path) -> None:
    """Swap a fully written folder into place; the old folder is removed only afterwards."""
    target = Path(target)
    old = target.with_name(f".{target.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(build, target)
    if old.exists():
        shutil.rmtree(old)
