"""Numbers of the ControlNet commands that cannot work are one line, before any model loads or file is written."""

import dataclasses

import pytest

from helpers.control import controlgpt, dataset, trainer
from helpers.control.trainer import ControlNetConfig
from helpers.training.settings import TrainerSettings

# the ControlNet trainer's own numbers (the shared ones are tests/dreambooth/test_dreambooth_numbers.py's)
BAD = [
    ("max_train_samples", "0"),
    ("proportion_empty_prompts", "nan"),
    ("proportion_empty_prompts", "1.5"),
    ("validation_steps", "0"),
    ("validation_layouts", "-1"),
]
NUMERIC = ("int", "float", "int | None", "float | None")


def _fail(*args, **kwargs):
    raise AssertionError("work began before the numbers were checked")


def test_every_numeric_flag_of_its_own_has_a_bad_value_below():
    shared = {f.name for f in dataclasses.fields(TrainerSettings)}
    numeric = {f.name for f in dataclasses.fields(ControlNetConfig) if str(f.type) in NUMERIC} - shared
    assert numeric == {name for name, _ in BAD}


@pytest.mark.parametrize("name, value", BAD + [("learning_rate", "inf"), ("seed", "-1")])
def test_controlnet_numbers_are_one_line(name, value, tmp_path, monkeypatch, one_line_error):
    monkeypatch.setattr(trainer, "load_parts", _fail)
    argv = [f"--train_data_dir={tmp_path / 'data'}", f"--output_dir={tmp_path / 'out'}", f"--{name}={value}"]
    line = one_line_error(trainer.main, argv)
    assert f"--{name}" in line and f"got {value}" in line
    assert not (tmp_path / "out").exists()


DRAW = ["draw", "--prompt", "a dog on the left of a cat", "--output_dir", "o"]


@pytest.mark.parametrize(
    "argv, name, value",
    [
        (["evaluate", "--count", "0"], "--count", "0"),
        (["evaluate", "--count=-5"], "--count", "-5"),
        (["evaluate", "--controlnet_conditioning_scale", "nan"], "--controlnet_conditioning_scale", "nan"),
        ([*DRAW, "--controlnet_conditioning_scale", "inf"], "--controlnet_conditioning_scale", "inf"),
        ([*DRAW, "--seed=-1"], "--seed", "-1"),
    ],
)
def test_controlgpt_numbers_are_one_line(argv, name, value, monkeypatch, one_line_error):
    monkeypatch.setattr(controlgpt, "evaluate", _fail)
    monkeypatch.setattr(controlgpt, "draw_prompts", _fail)
    line = one_line_error(controlgpt.main, argv)
    assert name in line and f"got {value}" in line


def test_control_data_seed_is_one_line(tmp_path, monkeypatch, one_line_error):
    monkeypatch.setattr(dataset, "write_dataset", _fail)
    line = one_line_error(dataset.main, ["--output", str(tmp_path / "d"), "--seed=-1"])
    assert "--seed" in line and "got -1" in line
