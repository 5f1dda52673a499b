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


def prior_config(tmp, **kw) -> TrainConfig:
    """``toy_config`` with prior preservation: 3 class images of "a photo of dog" drawn into ``tmp/class``,
    batches of 2 photos and 2 class images, the output in ``tmp/out``."""
    prior = dict(
        with_prior_preservation=True,
        class_prompt="a photo of dog",
        class_data_dir=str(tmp / "class"),
        num_class_images=3,
        train_batch_size=2,
    )
    return toy_config(tmp / "out", **prior | kw)
