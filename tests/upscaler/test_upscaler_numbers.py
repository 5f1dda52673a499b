"""Numbers of `python -m helpers.upscaler` that cannot work are one line, before any model loads."""

import pytest

from helpers.core.errors import UsageError
from helpers.upscaler import cli
from helpers.upscaler.training import FinetuneConfig, finetune


@pytest.fixture
def no_work(monkeypatch):
    """Building, loading or training an upscaler fails the test at once (and never touches data/)."""

    def fail(*args, **kwargs):
        raise AssertionError("work began before the numbers were checked")

    for name in ("build_upscaler", "load_upscaler", "pretrain", "finetune", "load_image_folder"):
        monkeypatch.setattr(cli, name, fail)


@pytest.mark.parametrize(
    "command, name, value",
    [
        ("pretrain", "max_train_steps", "0"),
        ("pretrain", "learning_rate", "inf"),
        ("pretrain", "learning_rate", "nan"),
        ("pretrain", "learning_rate", "-1e-3"),
        ("pretrain", "train_batch_size", "0"),
        ("pretrain", "seed", "-1"),
        ("finetune", "max_train_steps", "-2"),
        ("finetune", "learning_rate", "0"),
        ("finetune", "train_batch_size", "0"),
        ("finetune", "augment", "-0.5"),
        ("finetune", "augment", "nan"),
        ("finetune", "checkpointing_steps", "-1"),
        ("finetune", "checkpoints_total_limit", "0"),
        ("finetune", "seed", str(2**32)),
        ("upscale", "num_inference_steps", "0"),
        ("upscale", "seed", "-3"),
    ],
)
def test_a_number_that_cannot_work_is_one_line(command, name, value, tmp_path, no_work, one_line_error):
    folders = {
        "pretrain": [f"--output={tmp_path / 'out'}"],
        "finetune": [f"--instance_data_dir={tmp_path}", f"--output_dir={tmp_path / 'out'}"],
        "upscale": [f"--images={tmp_path}", f"--output_dir={tmp_path / 'out'}"],
    }[command]
    line = one_line_error(cli.main, [command, *folders, f"--{name}={value}"])
    shown = str(int(value)) if value.lstrip("-").isdigit() else str(float(value))
    assert f"--{name}" in line and f"got {shown}" in line


@pytest.mark.parametrize("crop", [0, 60, 256])
def test_a_crop_the_photos_cannot_give_is_one_line(crop):
    with pytest.raises(UsageError, match=f"crop must be a multiple of 8 from 8 to 128 \\(got {crop}\\)"):
        FinetuneConfig(output_dir="o", crop=crop).check()


def test_the_python_finetune_checks_its_config_first(tmp_path):
    with pytest.raises(UsageError, match=r"--learning_rate must be a finite number above 0 \(got inf\)"):
        finetune(None, [], FinetuneConfig(output_dir=str(tmp_path / "out"), learning_rate=float("inf")))
    assert not (tmp_path / "out").exists()
