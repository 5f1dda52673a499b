"""Every number of `python -m helpers.dreambooth` that cannot work is one line, before any model loads."""

import dataclasses

import pytest

from helpers.core.errors import UsageError
from helpers.dreambooth import cli, trainer
from helpers.dreambooth.trainer import TrainConfig

# flag -> a value that cannot work; written --flag=value, so that a negative one is not read as a flag
BAD = [
    ("max_train_steps", "0"),
    ("train_batch_size", "0"),
    ("gradient_accumulation_steps", "0"),
    ("learning_rate", "inf"),
    ("learning_rate", "nan"),
    ("learning_rate", "-1e-4"),
    ("learning_rate", "0"),
    ("lr_warmup_steps", "-1"),
    ("adam_weight_decay", "-0.01"),
    ("adam_weight_decay", "nan"),
    ("max_grad_norm", "-1"),
    ("max_grad_norm", "inf"),
    ("checkpointing_steps", "-1"),
    ("checkpoints_total_limit", "0"),
    ("logging_steps", "0"),
    ("seed", "-1"),
    ("seed", str(2**32)),
    ("resolution", "0"),
    ("prior_loss_weight", "-1"),
    ("prior_loss_weight", "nan"),
    ("num_class_images", "0"),
    ("class_guidance_scale", "0.5"),
    ("class_guidance_scale", "nan"),
    ("text_encoder_lr", "inf"),
    ("text_encoder_lr", "0"),
    ("lora_rank", "0"),
    ("lora_alpha", "0"),
    ("lora_alpha", "nan"),
    ("snr_gamma", "0"),
    ("snr_gamma", "inf"),
    ("num_validation_images", "0"),
    ("validation_steps", "0"),
    ("sample_batch_size", "0"),
    ("logit_mean", "nan"),
    ("logit_std", "0"),
    ("logit_std", "inf"),
    ("mode_scale", "inf"),
    ("precondition_outputs", "2"),
    ("max_sequence_length", "-1"),
]
NUMERIC = ("int", "float", "int | None", "float | None")


@pytest.fixture
def no_model(monkeypatch):
    """A model load fails the test at once: every check must come before it."""

    def load_parts(*args, **kwargs):
        raise AssertionError("a model loaded before the settings were checked")

    monkeypatch.setattr(trainer, "load_parts", load_parts)


def test_every_numeric_flag_has_a_bad_value_below():
    numeric = {f.name for f in dataclasses.fields(TrainConfig) if str(f.type) in NUMERIC}
    assert numeric == {name for name, _ in BAD}


@pytest.mark.parametrize("name, value", BAD)
def test_a_number_that_cannot_work_is_one_line_naming_the_flag_and_value(
    name, value, tmp_path, no_model, one_line_error
):
    argv = [
        "--instance_data_dir=data/subjects/toy_dog",
        "--instance_prompt=a photo of sks dog",
        f"--output_dir={tmp_path / 'out'}",
        f"--{name}={value}",
    ]
    if name == "num_class_images":
        argv += ["--with_prior_preservation", "--class_prompt=a photo of dog", f"--class_data_dir={tmp_path / 'c'}"]
    line = one_line_error(cli.main, argv)
    shown = str(int(value)) if value.lstrip("-").isdigit() else str(float(value))
    assert f"--{name}" in line and shown in line
    assert not (tmp_path / "out").exists()


def test_a_learning_rate_is_refused_with_the_fix():
    config = TrainConfig(
        output_dir="o", instance_data_dir="i", instance_prompt="a photo of sks dog", learning_rate=-1e-4
    )
    with pytest.raises(UsageError, match=r"^--learning_rate must be a finite number above 0 \(got -0.0001\): .*5e-06"):
        config.check()
