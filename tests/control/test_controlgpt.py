"""ControlGPT's evaluation: three methods on the same held-out prompts, scored by the locator."""

import json

import numpy as np
import pytest

from helpers.control import controlgpt, planner, tikz
from helpers.control import dataset as control_data
from helpers.control.controlnet import held_out_samples, true_layout
from helpers.control.planner import RuleBasedPlanner
from helpers.control.trainer import ControlNetConfig, train_controlnet
from helpers.core.errors import UsageError
from helpers.toy import relations


@pytest.fixture(scope="module")
def tiny_controlnet(tmp_path_factory):
    root = tmp_path_factory.mktemp("cgpt")
    data = control_data.write_dataset(root / "data", count=8, progress=False)
    train_controlnet(
        ControlNetConfig(
            train_data_dir=str(data),
            output_dir=str(root / "cn"),
            max_train_steps=2,
            train_batch_size=2,
            progress=False,
            checkpointing_steps=0,
        )
    )
    return root / "cn"


def test_held_out_samples_are_held_out_and_repeatable():
    samples = held_out_samples(12, seed=4)
    assert all((s.first.cls, s.second.cls) in relations.HELD_OUT_PAIRS for s in samples)
    assert [s.prompt for s in samples] == [s.prompt for s in held_out_samples(12, seed=4)]
    assert [s.prompt for s in samples] != [s.prompt for s in held_out_samples(12, seed=5)]


def test_compare_draws_the_same_prompts_three_ways(tiny_controlnet):
    outcomes = controlgpt.compare(seed=1, count=2, controlnet=tiny_controlnet, steps=3)
    assert list(outcomes) == list(controlgpt.METHODS) == list(controlgpt.METHOD_LABELS)  # each has a reader's name
    samples = held_out_samples(2, seed=1)
    assert outcomes["plain"].sketches is None
    truth = outcomes["controlnet_true_layout"].sketches
    assert all(np.array_equal(np.asarray(a), np.asarray(true_layout(s))) for a, s in zip(truth, samples))
    planned = [tikz.render(RuleBasedPlanner()(s.prompt), 64, labels="glyph") for s in samples]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(outcomes["controlgpt"].sketches, planned))
    for outcome in outcomes.values():
        assert len(outcome.images) == 2 and outcome.images[0].size == (64, 64)
        assert outcome.scores["prompts"] == 2
        assert 0 <= outcome.scores["relation_accuracy"] <= outcome.scores["object_accuracy"] <= 1
        assert len(outcome.found) == 2
    assert outcomes["plain"].plans is None
    assert all(planner.follows_prompt(p.drawing, s.prompt) for p, s in zip(outcomes["controlgpt"].plans, samples))


def test_evaluate_prints_one_json_object(tiny_controlnet, run_tool):
    done = run_tool("controlgpt", "evaluate", "--seed", "2", "--count", "2", "--controlnet", str(tiny_controlnet))
    assert done.returncode == 0, done.stderr
    table = json.loads(done.stdout)
    assert table["seed"] == 2 and table["planner"] == RuleBasedPlanner.name
    for method in controlgpt.METHODS:
        assert set(table[method]) == {"object_accuracy", "relation_accuracy", "prompts"}
        assert table[method]["prompts"] == 2


def test_draw_writes_code_sketch_and_image(tiny_controlnet, tmp_path):
    out = controlgpt.draw_prompts(["a red dog above a blue cup"], tmp_path / "out", controlnet=tiny_controlnet, steps=2)
    assert sorted(p.name for p in out.iterdir()) == [".made-by.json", "000-sketch.png", "000.png", "000.tex"]
    assert tikz.parse((out / "000.tex").read_text()).labels[0][0] == "dog"


def test_bad_input_is_one_line(tmp_path, run_tool, monkeypatch):
    with pytest.raises(UsageError, match="--count must be a positive"):
        controlgpt.compare(count=0)
    with pytest.raises(UsageError, match="--planner must be rules, local or chat"):
        controlgpt.make_planner("gpt")
    monkeypatch.delenv("CONTROLGPT_BASE_URL", raising=False)
    with pytest.raises(UsageError, match="CONTROLGPT_BASE_URL"):
        controlgpt.make_planner("chat")
    done = run_tool("controlgpt", "evaluate", "--controlnet", str(tmp_path))
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        f"error: no ControlNet in {str(tmp_path)!r} (no config.json): train one with "
        "`python -m helpers.controlnet --train_data_dir DIR --output_dir DIR`"
    ]
