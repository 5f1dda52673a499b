"""Process-wide settings chosen once, so that every tool and notebook behaves the same."""

from __future__ import annotations

import logging
import os
import random
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


def configure_cpu() -> None:
    """Flush denormals to zero: late in training, tiny gradients otherwise slow CPU maths several-fold."""
    torch.set_flush_denormal(True)
    # bitsandbytes logs that its optional 4-bit CPU kernels are missing; the course uses none of them.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*kernels-community.*")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.formatwarning = one_line_warning
    quiet_loading()


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    """A warning as "UserWarning: message": the file, line and source line a warning normally shows
    point into the helpers, not at the learner's cell or command."""
    return f"{category.__name__}: {message}\n"


def quiet_loading() -> None:
    """No per-file "Loading weights" bars: a notebook's progress bars are for its own long loops."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()


def release_device_memory() -> None:
    """Give cached GPU memory back once a run's models are gone, so that the next fine-tune in the same
    notebook starts from an empty GPU (a no-op on a CPU)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextmanager
def parked(*models, device: str) -> Iterator[None]:
    """Move what a block does not need (pipelines, scorers: anything with ``.to``) to the CPU while it
    runs, and back to ``device`` after. On a T4, SD 1.5's fp16 pipeline (2.1 GB) and the DINO/CLIP scorers
    (0.7 GB) left on the GPU take about 3 GB that a fine-tune beside them needs; on the toy profile
    nothing moves (everything is on the CPU already)."""
    for model in models:
        model.to("cpu")
    release_device_memory()
    try:
        yield
    finally:
        for model in models:
            model.to(device)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; returns a CPU generator for pipelines."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator("cpu").manual_seed(seed)


def versions() -> dict[str, str]:
    """Versions of what the course depends on ("missing" where a package is not installed)."""
    import importlib.metadata as md
    import platform

    out = {"python": platform.python_version()}
    for pkg in ("torch", "diffusers", "transformers", "accelerate", "bitsandbytes", "safetensors", "peft"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "missing"
    out["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return out
