"""Checkpoints that behave as those of diffusers' train_dreambooth.py, tried with the flags of its own
tests: a checkpoint at the last step, "checkpoint-N" names under --output_dir, the total limit,
`--scale_lr`, and a checkpoint-N/unet that from_pretrained loads."""

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file
from toy_dreambooth import SUBJECT, toy_config
from transformers import CLIPTextModel

from helpers.core.cli import dataclass_parser
from helpers.core.errors import UsageError
from helpers.dreambooth.trainer import TrainConfig, train
from helpers.training.loop import checkpoints


def _config(out, **kw) -> TrainConfig:
    return toy_config(out, **(dict(max_train_steps=4, checkpointing_steps=2) | kw))


def _unet(folder) -> dict:
    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_last_step_is_checkpointed_and_a_run_continues_from_it_to_more_steps(tmp_path):
    train(_config(tmp_path / "once", max_train_steps=8, train_text_encoder=True))
    short = tmp_path / "short"
    train(_config(short, train_text_encoder=True))
    assert [p.name for p in checkpoints(short)] == ["checkpoint-2", "checkpoint-4"]
    # "train 400 steps, look, continue to 800": named as in diffusers, relative to --output_dir
    result = train(_config(short, max_train_steps=8, train_text_encoder=True, resume_from_checkpoint="checkpoint-4"))
    assert [h["step"] for h in result.history] == list(range(1, 9))
    assert _equal(_unet(tmp_path / "once"), _unet(short))  # as if it had run 8 steps at once


def test_a_checkpoint_holds_a_unet_and_text_encoder_that_from_pretrained_loads(tmp_path):
    train(_config(tmp_path, train_text_encoder=True, checkpointing_steps=4))
    unet = UNet2DConditionModel.from_pretrained(tmp_path, subfolder="checkpoint-4/unet")
    saved = _unet(tmp_path)  # the 4-step run's final UNet is the step-4 checkpoint's
    assert all(torch.equal(v, saved[k]) for k, v in unet.state_dict().items())
    text_encoder = CLIPTextModel.from_pretrained(tmp_path / "checkpoint-4", subfolder="text_encoder")
    final = CLIPTextModel.from_pretrained(tmp_path, subfolder="text_encoder")
    assert _equal(text_encoder.state_dict(), final.state_dict())
    assert not list((tmp_path / "checkpoint-4").glob("model*.safetensors"))  # no second copy of the weights


def test_checkpoints_total_limit_two_after_six_steps_leaves_four_and_six(tmp_path):
    train(_config(tmp_path, max_train_steps=6, checkpoints_total_limit=2))
    assert [p.name for p in checkpoints(tmp_path)] == ["checkpoint-4", "checkpoint-6"]


def test_scale_lr_multiplies_by_the_samples_of_one_optimizer_step(tmp_path):
    settings = vars(dataclass_parser(TrainConfig, "t", "").parse_args(
        ["--instance_data_dir", SUBJECT, "--instance_prompt", "a photo of sks dog", "--output_dir", str(tmp_path),
         "--scale_lr", "--train_batch_size", "2", "--gradient_accumulation_steps", "2", "--max_train_steps", "2",
         "--learning_rate", "1e-5", "--checkpointing_steps", "0", "--no_progress"]
    ))  # fmt: skip
    result = train(TrainConfig(**settings))
    assert [h["lr"] for h in result.history] == pytest.approx([1e-5 * 2 * 2] * 2)


def test_resume_names_that_are_not_this_runs_checkpoints_are_one_line_before_loading(tmp_path):
    train(_config(tmp_path / "a", max_train_steps=2))
    with pytest.raises(UsageError, match=r"no such checkpoint in .*a \(it has checkpoint-2\)$"):
        train(_config(tmp_path / "a", max_train_steps=4, resume_from_checkpoint="checkpoint-7"))
    with pytest.raises(UsageError, match="is not in --output_dir .*pass that folder as --output_dir$"):
        train(_config(tmp_path / "b", resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2")))
    assert not (tmp_path / "b").exists()  # nothing started
