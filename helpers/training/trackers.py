"""Experiment trackers (``--report_to``), through accelerate as diffusers' training scripts use them.

``--report_to tensorboard`` writes event files under ``<output_dir>/logs``: the losses and the
learning rate at every step, and the validation grids, which ``tensorboard --logdir
<output_dir>/logs`` (or ``%tensorboard --logdir ...`` in a notebook) shows as curves and images.
A tracker that is not installed is one line with the pip command, before anything is trained.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from helpers.core.errors import UsageError

LOGS = "logs"  # diffusers' --logging_dir default, under --output_dir
# accelerate's tracker names, and the package each needs
PACKAGES = {
    "tensorboard": "tensorboard",
    "wandb": "wandb",
    "comet_ml": "comet-ml",
    "mlflow": "mlflow",
    "aim": "aim",
    "clearml": "clearml",
    "dvclive": "dvclive",
}


def _available(name: str) -> bool:
    from accelerate import utils

    return getattr(utils, f"is_{name}_available")()


def check_report_to(report_to: str) -> None:
    """Fail in one line when ``--report_to`` names an unknown tracker or one whose package is missing."""
    if report_to in ("none", "all"):
        return
    if report_to not in PACKAGES:
        choices = ", ".join(PACKAGES)
        raise UsageError(f"--report_to {report_to!r} is not a tracker: choose none, all or one of {choices}")
    if not _available(report_to):
        package = PACKAGES[report_to]
        raise UsageError(f"--report_to {report_to} needs the {package} package: pip install {package}")


def log_with(report_to: str) -> str | None:
    """accelerate's ``log_with`` for a ``--report_to`` value."""
    return None if report_to == "none" else report_to


def logging_dir(output_dir: Path) -> Path:
    return Path(output_dir) / LOGS


def start(accelerator, project: str, settings: dict) -> None:
    """Open the run's trackers with its settings as hyperparameters (plain values only: TensorBoard
    refuses None and lists)."""
    if accelerator.log_with and accelerator.is_main_process:
        config = {k: v for k, v in settings.items() if isinstance(v, (bool, int, float, str))}
        accelerator.init_trackers(project, config=config)


def log_images(accelerator, tag: str, images: list[Image.Image], step: int) -> None:
    """Validation samples to every tracker that shows images (TensorBoard and W&B, as diffusers logs them)."""
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            stacked = np.stack([np.asarray(im.convert("RGB")) for im in images])
            tracker.writer.add_images(tag, stacked, step, dataformats="NHWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({tag: [wandb.Image(im) for im in images]}, step=step)
