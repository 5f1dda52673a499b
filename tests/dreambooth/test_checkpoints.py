"""Checkpoints that behave as those of diffusers' train_dreambooth.py, tried with the flags of its own
tests: a checkpoint at the last step, "checkpoint-N" names under --output_dir, the total limit,
`--scale_lr`, and a checkpoint-N/unet that from_pretrained loads."""

import shutil

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file
from toy_dreambooth import SUBJECT, toy_config
from transformers import CLIPTextModel

from helpers.core.cli import dataclass_parser
from helpers.core.errors import UsageError
from helpers.dreambooth import trainer as trainer_module
from helpers.dreambooth.trainer import TrainConfig, Trainer, train
from helpers.training.loop import TrainingDiverged, checkpoints


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


def test_a_new_run_into_a_folder_with_checkpoints_is_refused_before_loading_the_model(tmp_path, monkeypatch):
    train(_config(tmp_path))  # checkpoint-2 and checkpoint-4

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(trainer_module, "load_parts", never)
    with pytest.raises(UsageError, match="up to checkpoint-4.*--resume_from_checkpoint latest, or pass another"):
        train(_config(tmp_path, max_train_steps=2, checkpoints_total_limit=1))
    assert [p.name for p in checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-4"]


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory):
    """A 2-step run whose only checkpoint is checkpoint-2; tests damage a copy of it."""
    out = tmp_path_factory.mktemp("two") / "run"
    train(_config(out, max_train_steps=2))
    return out


@pytest.mark.parametrize("damaged", ["optimizer.bin", "unet/diffusion_pytorch_model.safetensors"])
def test_a_truncated_checkpoint_file_is_one_line_naming_it(two_steps, tmp_path, damaged):
    out = tmp_path / "run"
    shutil.copytree(two_steps, out)
    path = out / "checkpoint-2" / damaged
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UsageError, match=rf"^cannot resume from .*checkpoint-2: {damaged} is damaged \(.*\); there "
                       "is none before it: start again in a new --output_dir$"):  # fmt: skip
        train(_config(out, resume_from_checkpoint="latest"))


def test_a_loss_that_turns_nan_stops_the_run_keeps_the_last_checkpoint_and_saves_no_model(tmp_path, monkeypatch):
    real = Trainer._step_loss

    def nan_at_step_3(self, step, micro):
        loss, parts = real(self, step, micro)
        return (loss * float("nan") if step == 2 else loss), parts

    monkeypatch.setattr(Trainer, "_step_loss", nan_at_step_3)
    with pytest.raises(TrainingDiverged, match="^the loss turned nan at step 3: .*; lower --learning_rate and resume "
                       "from the last good checkpoint with --resume_from_checkpoint checkpoint-2$"):  # fmt: skip
        train(_config(tmp_path))  # losses are read at steps 2 and 4 (checkpoints), not at 3
    assert not (tmp_path / "model_index.json").exists() and not (tmp_path / "unet").exists()
    assert [p.name for p in checkpoints(tmp_path)] == ["checkpoint-2"]
    unet = UNet2DConditionModel.from_pretrained(tmp_path, subfolder="checkpoint-2/unet")
    assert all(torch.isfinite(v).all() for v in unet.state_dict().values())
    monkeypatch.setattr(Trainer, "_step_loss", real)
    result = train(_config(tmp_path, learning_rate=1e-5, resume_from_checkpoint="checkpoint-2"))  # the fix it names
    assert [h["lr"] for h in result.history] == [1e-4, 1e-4, 1e-5, 1e-5]
