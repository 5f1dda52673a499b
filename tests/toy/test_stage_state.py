"""A pretraining stage killed part way and started again ends where an uninterrupted run ends."""

import random
from pathlib import Path

import pytest
import torch

from helpers.core.errors import UsageError
from helpers.toy.stage_state import STATE, StageState, load_tensors

SETTINGS = {"steps": 6, "seed": 0}


class Killed(Exception):
    pass


def _run(folder, kill_after: int | None = None) -> torch.nn.Module:
    """Six steps of a tiny model on batches drawn from both generators, saving after every step."""
    torch.manual_seed(0)
    rng = random.Random(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    state = StageState(
        folder, SETTINGS, {"model": model, "optimizer": opt, "schedule": sched}, rng=rng, every_seconds=0
    )
    for step in range(state.resume(), SETTINGS["steps"]):
        if step == kill_after:
            raise Killed
        x = torch.randn(4, 3) * rng.random()
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        state.after_step(step + 1)
    return model


def test_a_killed_stage_resumed_ends_with_the_uninterrupted_weights(tmp_path):
    whole = _run(tmp_path / "whole")
    with pytest.raises(Killed):
        _run(tmp_path / "killed", kill_after=4)
    assert torch.load(tmp_path / "killed" / STATE, weights_only=True)["step"] == 4
    resumed = _run(tmp_path / "killed")
    assert torch.equal(resumed.weight, whole.weight) and torch.equal(resumed.bias, whole.bias)


def test_a_state_from_other_settings_is_refused_in_one_line(tmp_path):
    with pytest.raises(Killed):
        _run(tmp_path, kill_after=2)
    state = StageState(tmp_path, {"steps": 7, "seed": 0}, {"model": torch.nn.Linear(3, 1)})
    with pytest.raises(UsageError, match=r"other settings .* delete it to start again") as err:
        state.resume()
    assert "\n" not in str(err.value)


def test_the_wall_time_of_a_resumed_stage_counts_both_pieces(tmp_path):
    model = torch.nn.Linear(1, 1)
    first = StageState(tmp_path, SETTINGS, {"model": model}, started=0.0)  # "started at the epoch": a long run
    first.after_step(1)
    first.save()
    second = StageState(tmp_path, SETTINGS, {"model": model})
    assert second.resume() == 1
    assert second.seconds() >= torch.load(tmp_path / STATE, weights_only=True)["elapsed"] > 10**9


def _touch(path: str) -> dict:
    """What a hostile pickle runs when it is loaded: here, only a file that says it ran."""
    Path(path).touch()
    return {}


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return _touch, (str(self.marker),)


def test_a_state_is_plain_tensors_and_numbers_and_a_pickled_object_is_refused_unrun(tmp_path):
    state = StageState(tmp_path, SETTINGS, {"model": torch.nn.Linear(3, 1)}, rng=random.Random(0))
    state.after_step(3)
    state.save()
    saved = torch.load(tmp_path / STATE, weights_only=True)  # what resume() reads: no arbitrary objects
    assert saved["step"] == 3 and set(saved["objects"]["model"]) == {"weight", "bias"}
    marker = tmp_path / "ran"
    saved["objects"]["model"] = _Payload(marker)
    torch.save(saved, tmp_path / STATE)
    with pytest.raises(UsageError, match=r"state.pt holds objects other than tensors.* delete it to start") as err:
        StageState(tmp_path, SETTINGS, {"model": torch.nn.Linear(3, 1)}).resume()
    assert "\n" not in str(err.value) and not marker.exists()
    (tmp_path / "cut.pt").write_bytes((tmp_path / STATE).read_bytes()[:100])
    with pytest.raises(UsageError, match=r"cut.pt cannot be read \(.*\): delete it to start again"):
        load_tensors(tmp_path / "cut.pt")
