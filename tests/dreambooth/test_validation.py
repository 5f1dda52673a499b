"""Samples during training (--validation_prompt every --validation_steps) and TensorBoard (--report_to)."""

import gc
import weakref

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image
from toy_dreambooth import toy_config

from helpers.core.errors import UsageError
from helpers.core.paths import ROOT
from helpers.diffusion.generate import generate_images
from helpers.dreambooth import trainer as trainer_mod
from helpers.dreambooth.trainer import VALIDATION_INFERENCE_STEPS, TrainConfig, Trainer, train, validation_grid
from helpers.training import trackers

PROMPT = "a photo of sks dog on the beach"


def _config(out, **kw) -> TrainConfig:
    settings = dict(max_train_steps=4, validation_prompt=PROMPT, validation_steps=2, num_validation_images=2)
    return toy_config(out, **(settings | kw))


def test_a_grid_per_validation_step_drawn_from_the_weights_of_that_step(tmp_path):
    result = train(_config(tmp_path, max_train_steps=5))
    assert result.validation_grids == [str(validation_grid(tmp_path, s)) for s in (2, 4, 5)]  # 5: after the last
    assert 0 < result.validation_seconds < result.seconds + result.validation_seconds
    last = Image.open(validation_grid(tmp_path, 5))
    assert last.size == (2 * 64, 64)
    saved = StableDiffusionPipeline.from_pretrained(tmp_path)
    again = generate_images(saved, PROMPT, 2, seed=0, num_inference_steps=VALIDATION_INFERENCE_STEPS)
    expected = np.concatenate([np.asarray(im) for im in again], axis=1)
    assert np.abs(np.asarray(last).astype(int) - expected).max() <= 1  # the saved model, same seeds
    first = np.asarray(Image.open(validation_grid(tmp_path, 2)))
    assert not np.array_equal(first, np.asarray(last))  # drawn from the weights of their own step


def test_validation_runs_in_eval_mode_without_gradients_and_training_goes_on_in_train_mode(tmp_path):
    trainer = Trainer(_config(tmp_path, train_text_encoder=True))
    seen = set()
    trainer.unet.register_forward_pre_hook(lambda m, a: seen.add((m.training, torch.is_grad_enabled())))
    trainer.text_encoder.register_forward_pre_hook(lambda m, a: seen.add((m.training, torch.is_grad_enabled())))
    trainer.train()
    assert seen == {(True, True), (False, False)}  # training forwards, validation forwards
    assert all(p.grad is None for p in trainer.unet.parameters())  # validation left no gradients behind


def test_the_validation_pipeline_is_gone_once_drawn(tmp_path, monkeypatch):
    pipes = []
    real = trainer_mod.Trainer._live_pipeline

    def recorded(self):
        pipe = real(self)
        pipes.append(weakref.ref(pipe))
        return pipe

    monkeypatch.setattr(trainer_mod.Trainer, "_live_pipeline", recorded)
    gc.collect()
    gc.disable()
    try:
        train(_config(tmp_path))
        assert len(pipes) == 2 and all(p() is None for p in pipes)  # no pipeline (nor GPU memory) held on to
    finally:
        gc.enable()


def test_an_sd_shaped_run_in_bf16_draws_its_validation_samples(sd_folders, tmp_path):
    result = train(
        _config(
            tmp_path,
            pretrained_model_name_or_path=str(sd_folders.fp16),
            instance_data_dir=str(ROOT / "data" / "dreambooth" / "dog"),
            mixed_precision="bf16",
            max_train_steps=2,
            num_validation_images=1,
        )
    )
    assert [Image.open(p).size for p in result.validation_grids] == [(64, 64)]


def test_tensorboard_holds_the_losses_the_learning_rate_and_the_validation_grids(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = train(_config(tmp_path, report_to="tensorboard", logging_steps=1))
    [events] = {p.parent for p in (tmp_path / "logs" / "dreambooth").glob("events.out.tfevents.*")}
    acc = EventAccumulator(str(events), size_guidance={"images": 0, "scalars": 0}).Reload()
    tags = acc.Tags()
    assert {"loss", "instance_loss", "prior_loss", "lr"} <= set(tags["scalars"])
    assert [e.step for e in acc.Scalars("loss")] == [1, 2, 3, 4]
    assert [e.value for e in acc.Scalars("loss")] == pytest.approx([h["loss"] for h in result.history])
    assert [e.value for e in acc.Scalars("lr")] == pytest.approx([1e-4] * 4)
    grids = acc.Images("validation")
    assert [(e.step, e.width, e.height) for e in grids] == [(2, 128, 64), (4, 128, 64)]  # both samples, side by side


def test_bad_validation_and_tracker_settings_are_one_line_each(tmp_path, monkeypatch):
    monkeypatch.setattr(trackers, "_available", lambda name: name == "tensorboard")  # wandb not installed
    with pytest.raises(UsageError, match=r"--validation_steps and --num_validation_images must be at least 1"):
        train(_config(tmp_path, validation_steps=0))
    with pytest.raises(UsageError, match=r"--report_to wandb needs the wandb package: pip install wandb$"):
        train(_config(tmp_path, report_to="wandb"))
    with pytest.raises(UsageError, match=r"--report_to 'tensorbord' is not a tracker: choose none, all or one of"):
        train(_config(tmp_path, report_to="tensorbord"))
    assert not tmp_path.joinpath("logs").exists()
