"""The DreamBooth settings the toy trainer tests start from: the toy subject, a few quiet steps, no
checkpoints; each test file overrides what it is about."""

from helpers.core.paths import ROOT
from helpers.dreambooth.trainer import TrainConfig

SUBJECT = str(ROOT / "data" / "subjects" / "toy_dog")
BASE = dict(
    instance_data_dir=SUBJECT,
    instance_prompt="a photo of sks dog",
    max_train_steps=6,
    learning_rate=1e-4,
    progress=False,
    checkpointing_steps=0,
    seed=0,
)


def toy_config(out, **kw) -> TrainConfig:
    """``BASE`` writing to ``out``, with ``kw`` on top."""
    return TrainConfig(**{**BASE, "output_dir": str(out), **kw})
