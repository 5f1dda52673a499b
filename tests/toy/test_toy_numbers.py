"""Numbers of `python -m helpers.pretrain` and `python -m helpers.locator` that cannot work are one line,
before any stage starts."""

import pytest

from helpers.toy import locator, pretrain

PRETRAIN_BAD = [
    ("seed", "-1"),
    ("judge_steps", "0"),
    ("vae_steps", "0"),
    ("vae_batch_size", "0"),
    ("vae_learning_rate", "inf"),
    ("vae_mse_weight", "nan"),
    ("unet_steps", "-5"),
    ("unet_batch_size", "0"),
    ("dataset_size", "10"),
    ("learning_rate", "-1e-3"),
    ("layout_fraction", "1.5"),
    ("text_encoder_lr", "0"),
    ("object_weight", "-1"),
    ("weight_decay", "inf"),
    ("flow_steps", "0"),
    ("flow_batch_size", "-1"),
    ("logit_mean", "nan"),
    ("logit_std", "0"),
    ("mode_scale", "2.5"),
]


def _fail(*args, **kwargs):
    raise AssertionError("a stage started before the numbers were checked")


def test_every_numeric_flag_of_pretrain_has_a_bad_value_below():
    args = vars(pretrain._parse(["vae"]))
    numeric = {k for k, v in args.items() if type(v) in (int, float)} | {"text_encoder_lr"}  # default None
    assert numeric == {name for name, _ in PRETRAIN_BAD}


@pytest.mark.parametrize("name, value", PRETRAIN_BAD)
def test_a_pretrain_number_that_cannot_work_is_one_line(name, value, tmp_path, monkeypatch, one_line_error):
    for stage in ("_judge_stage", "_vae_stage", "_unet_stage"):
        monkeypatch.setattr(pretrain, stage, _fail)
    line = one_line_error(pretrain.main, ["all", f"--output={tmp_path / 'toy-sd'}", f"--{name}={value}"])
    shown = str(int(value)) if value.lstrip("-").isdigit() else str(float(value))
    assert f"--{name}" in line and f"got {shown}" in line
    assert not (tmp_path / "toy-sd").exists()


@pytest.mark.parametrize("name, value", [("steps", "0"), ("batch_size", "0"), ("seed", "-1")])
def test_a_locator_number_that_cannot_work_is_one_line(name, value, tmp_path, monkeypatch, one_line_error):
    monkeypatch.setattr(locator, "train_locator", _fail)
    line = one_line_error(locator.main, [f"--output={tmp_path / 'loc'}", f"--{name}={value}"])
    assert f"--{name}" in line and f"got {value}" in line
