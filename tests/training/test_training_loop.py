"""The shared training loop on a one-layer model and a made-up loss: resume, pruning and history in
milliseconds, without a pipeline."""

import dataclasses
import json
import math

import pytest
import torch

from helpers.control.trainer import ControlNetConfig
from helpers.core.errors import UsageError
from helpers.dreambooth.trainer import TrainConfig
from helpers.training.loop import (
    Hooks,
    TrainingDiverged,
    checkpoints,
    fit,
    make_accelerator,
    resolve_resume,
    run_loop,
    step_generator,
)
from helpers.training.settings import LoopSettings, TrainerSettings


class Killed(Exception):
    pass


def _run(output_dir, steps=6, kill_at=None, blow_up_at=None, **settings):
    """``fit`` on a linear model; the loss of step s is a fixed function of (seed, s), infinite from
    step ``blow_up_at`` (0-based) on."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    cfg = TrainerSettings(
        output_dir=str(output_dir),
        max_train_steps=steps,
        progress=False,
        **(dict(learning_rate=0.05, checkpointing_steps=2, logging_steps=1) | settings),
    )
    acc = make_accelerator(output_dir, 1, "no")
    prepared = []

    def step_loss(step, micro):
        if step == kill_at:
            raise Killed
        gen = step_generator(cfg.seed, step, micro, 0)
        x, y = torch.randn(4, 3, generator=gen), torch.randn(4, 1, generator=gen)
        loss = ((prepared[0](x) - y) ** 2).mean() * (math.inf if blow_up_at is not None and step >= blow_up_at else 1)
        return loss, {"half": loss / 2}

    report = fit(
        acc,
        cfg,
        output_dir,
        [model],
        [{"params": list(model.parameters()), "lr": cfg.learning_rate}],
        step_loss,
        Hooks("test", prepared.extend),
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


def test_a_new_run_in_a_folder_with_checkpoints_is_refused_and_the_folder_kept(tmp_path):
    _run(tmp_path, steps=4)  # checkpoint-2 and checkpoint-4
    refused = r"holds the checkpoints of an earlier run \(up to checkpoint-4\): continue it with "
    with pytest.raises(UsageError, match=refused + "--resume_from_checkpoint latest, or pass another --output_dir$"):
        resolve_resume(tmp_path, None)  # what the trainers call before loading any model
    with pytest.raises(UsageError, match=refused):
        _run(tmp_path, steps=2, checkpoints_total_limit=1)  # it used to delete its own checkpoint-2
    assert [p.name for p in checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-4"]


def test_pruning_after_resuming_an_earlier_checkpoint_keeps_the_one_just_written(tmp_path):
    _run(tmp_path, steps=6)  # checkpoint-2, -4 and -6: the branch that the next run abandons
    _run(tmp_path, steps=4, resume_from_checkpoint="checkpoint-2", checkpoints_total_limit=1)
    assert [p.name for p in checkpoints(tmp_path)] == ["checkpoint-4", "checkpoint-6"]


def test_a_checkpoint_beyond_max_train_steps_is_one_line_before_it_is_loaded(tmp_path, monkeypatch):
    from accelerate import Accelerator

    _run(tmp_path, steps=4)

    def never(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded")

    monkeypatch.setattr(Accelerator, "load_state", never)
    beyond = "checkpoint-4 is beyond --max_train_steps 3: pass --max_train_steps 4 or more to train on from it, or "
    with pytest.raises(UsageError, match=beyond + "resume from checkpoint-2$"):
        _run(tmp_path, steps=3, resume_from_checkpoint="latest")
    with pytest.raises(UsageError, match="beyond --max_train_steps 1: .* or start again in a new --output_dir$"):
        _run(tmp_path, steps=1, resume_from_checkpoint="checkpoint-2")


def test_the_loop_refuses_a_start_beyond_its_last_step_for_callers_that_resume_themselves(tmp_path):
    _run(tmp_path, steps=4)  # the upscaler's fine-tune calls resume() and run_loop() without the step limit
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, 1.0)
    acc = make_accelerator(tmp_path, 1, "no")
    with pytest.raises(UsageError, match="checkpoint-4 is beyond --max_train_steps 2"):
        settings = LoopSettings(output_dir=str(tmp_path), max_train_steps=2, progress=False)
        run_loop(acc, tmp_path, [model], optimizer, scheduler, None, settings, start_step=4)


def test_a_truncated_optimizer_state_names_the_file_and_the_checkpoint_before_it(tmp_path):
    _run(tmp_path, steps=4)
    state = tmp_path / "checkpoint-4" / "optimizer.bin"
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(UsageError, match=r"^cannot resume from .*checkpoint-4: optimizer.bin is damaged \(.*\); resume "
                       r"from checkpoint-2 instead \(--resume_from_checkpoint checkpoint-2\)$"):  # fmt: skip
        _run(tmp_path, steps=6, resume_from_checkpoint="latest")
    _run(tmp_path, steps=6, resume_from_checkpoint="checkpoint-2")  # which works


def test_a_loss_that_turns_infinite_stops_at_its_step_before_any_later_checkpoint(tmp_path):
    with pytest.raises(TrainingDiverged, match="^the loss turned inf at step 3: .* lower --learning_rate and start "
                       r"again \(no checkpoint was saved before it\)$"):  # fmt: skip
        _run(tmp_path, steps=6, blow_up_at=2, checkpointing_steps=4, logging_steps=10)  # read at step 4
    assert checkpoints(tmp_path) == [] and not (tmp_path / "loss_history.json").exists()
    with pytest.raises(TrainingDiverged, match="at step 5: .* --resume_from_checkpoint checkpoint-4$"):
        _run(tmp_path / "later", steps=6, blow_up_at=4, checkpointing_steps=2, logging_steps=10)
    assert [p.name for p in checkpoints(tmp_path / "later")] == ["checkpoint-2", "checkpoint-4"]


def test_a_resumed_run_trains_at_its_own_learning_rate_not_the_checkpoints(tmp_path):
    _, whole = _run(tmp_path / "whole")
    _run(tmp_path / "lowered", steps=4)
    _, lowered = _run(tmp_path / "lowered", resume_from_checkpoint="latest", learning_rate=0.001)
    assert [h["lr"] for h in lowered["history"]] == [0.05] * 4 + [0.001] * 2
    assert [h["loss"] for h in lowered["history"][:5]] == [h["loss"] for h in whole["history"][:5]]
    assert lowered["history"][5]["loss"] != whole["history"][5]["loss"]  # step 6 took the smaller step


def test_after_a_resume_the_report_counts_the_models_steps_and_the_speed_of_this_run(tmp_path):
    _run(tmp_path, steps=4)
    _, report = _run(tmp_path, resume_from_checkpoint="latest")
    assert report["steps"] == 6 and report["steps_per_second"] == pytest.approx(2 / report["seconds"])
    _, again = _run(tmp_path, resume_from_checkpoint="latest")  # at the last step: nothing left to run
    assert again["steps"] == 6 and again["steps_per_second"] == 0.0
    assert [h["step"] for h in again["history"]] == [1, 2, 3, 4, 5, 6]
