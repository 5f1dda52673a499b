"""The shared training loop on a one-layer model and a made-up loss: resume, pruning and history in
milliseconds, without a pipeline."""

import dataclasses
import json

import pytest
import torch

from helpers.control.trainer import ControlNetConfig
from helpers.dreambooth.trainer import TrainConfig
from helpers.training.loop import checkpoints, fit, make_accelerator, step_generator
from helpers.training.settings import TrainerSettings


class Killed(Exception):
    pass


def _run(output_dir, steps=6, kill_at=None, **settings):
    """``fit`` on a linear model; the loss of step s is a fixed function of (seed, s)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    cfg = TrainerSettings(
        output_dir=str(output_dir),
        max_train_steps=steps,
        learning_rate=0.05,
        checkpointing_steps=2,
        logging_steps=1,
        progress=False,
        **settings,
    )
    acc = make_accelerator(output_dir, 1, "no")
    prepared = []

    def step_loss(step, micro):
        if step == kill_at:
            raise Killed
        gen = step_generator(cfg.seed, step, micro, 0)
        x, y = torch.randn(4, 3, generator=gen), torch.randn(4, 1, generator=gen)
        loss = ((prepared[0](x) - y) ** 2).mean()
        return loss, {"half": loss / 2}

    report = fit(
        acc,
        cfg,
        output_dir,
        [model],
        [{"params": list(model.parameters()), "lr": 0.05}],
        step_loss,
        "test",
        prepared.extend,
    )
    return prepared[0], report


def test_a_run_killed_and_resumed_from_latest_ends_as_an_uninterrupted_one(tmp_path):
    whole, report = _run(tmp_path / "whole")
    assert [h["step"] for h in report["history"]] == [1, 2, 3, 4, 5, 6]
    assert all(abs(h["half"] - h["loss"] / 2) < 1e-6 for h in report["history"])
    with pytest.raises(Killed):
        _run(tmp_path / "killed", kill_at=4)  # steps 0-3 done: checkpoint-2 and checkpoint-4 saved
    assert [p.name for p in checkpoints(tmp_path / "killed")] == ["checkpoint-2", "checkpoint-4"]
    resumed, again = _run(tmp_path / "killed", resume_from_checkpoint="latest")
    assert torch.equal(whole.weight, resumed.weight) and torch.equal(whole.bias, resumed.bias)
    assert again["history"] == report["history"]  # the history before the kill is kept, not logged twice
    saved = json.loads((tmp_path / "killed" / "loss_history.json").read_text())
    assert [h["step"] for h in saved] == [1, 2, 3, 4, 5, 6]


def test_checkpoints_beyond_the_limit_are_pruned_oldest_first(tmp_path):
    _run(tmp_path, steps=9, checkpoints_total_limit=2)
    assert [p.name for p in checkpoints(tmp_path)] == ["checkpoint-6", "checkpoint-8"]


def test_the_report_counts_the_steps_this_run_made(tmp_path):
    _, report = _run(tmp_path, steps=2)
    assert report["steps"] == 2 and report["trainable_parameters"] == 4 and report["peak_memory_bytes"] is None
    assert report["steps_per_second"] > 0 and report["optimizer_state_bytes"] > 0


@pytest.mark.parametrize("config", [TrainConfig, ControlNetConfig])
def test_both_trainers_take_the_shared_flags_from_one_base(config):
    shared = {f.name for f in dataclasses.fields(TrainerSettings)}
    assert shared <= {f.name for f in dataclasses.fields(config)}
    redeclared = shared & set(vars(config)["__annotations__"])
    assert redeclared <= {"train_batch_size", "learning_rate", "max_train_steps"}  # other defaults, same flag
