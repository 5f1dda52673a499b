"""`python -m helpers.pretrain flow`: the toy flow model's resumable stages, their card and their folders."""

import json

import pytest
from diffusers import StableDiffusion3Pipeline

from helpers.core.folders import made_by
from helpers.toy import flow_model, flow_pretrain, pretrain

TINY = ["--flow_steps", "2", "--flow_batch_size", "4", "--dataset_size", "8"]
WEIGHTS = "transformer/diffusion_pytorch_model.safetensors"


def _fail(*args, **kwargs):
    raise AssertionError("a flow stage started before its flags and folders were checked")


def _flow(out, *more: str) -> None:
    pretrain.main(["flow", "--output", str(out), *TINY, *more])


def _stages(out) -> tuple[list[dict], list[dict]]:
    """The toy SD's stages at the head of ``out``'s stages.json, and the flow stages after them."""
    toy_sd = json.loads((flow_model.TOY_SD / pretrain.STAGES).read_text())
    stages = json.loads((out / pretrain.STAGES).read_text())
    return stages[: len(toy_sd)], stages[len(toy_sd) :]


def _sample(out):
    pipe = flow_model.load_pipeline(out)
    assert isinstance(pipe, StableDiffusion3Pipeline) and pipe.text_encoder_3 is None
    return pipe(
        "a photo of a red dog",
        num_inference_steps=1,
        height=64,
        width=64,
        max_sequence_length=flow_model.MAX_SEQUENCE_LENGTH,
        output_type="np",
    ).images


def test_a_flow_stage_writes_a_carded_pipeline_is_skipped_once_done_and_continues(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(flow_pretrain, "layout_indices", lambda captions: list(range(len(captions))))  # 8 scenes
    out = tmp_path / "toy-flow"
    _flow(out)
    head, own = _stages(out)
    assert head == json.loads((flow_model.TOY_SD / pretrain.STAGES).read_text())
    assert [s["stage"] for s in own] == ["flow transformer"]
    assert own[0]["command"] == f"python -m helpers.pretrain flow --output {out} " + " ".join(TINY)
    assert made_by(out) == pretrain.TOOL and not flow_pretrain.flow_stage_dir(out).exists()
    card = (out / "README.md").read_text()
    assert f"`{own[0]['command']}`" in card and "max_sequence_length=0" in card and "load_pipeline" in card
    assert "StableDiffusion3Pipeline" in card and "3.5 M parameters" in card and "| VAE |" not in card
    assert _sample(out).shape == (1, 64, 64, 3)
    weights = (out / WEIGHTS).read_bytes()

    capsys.readouterr()
    _flow(out)
    assert "already holds the stage" in capsys.readouterr().out
    assert (out / WEIGHTS).read_bytes() == weights

    _flow(out, "--init_from", str(out), "--seed", "1", "--weight_decay", "0", "--layout_fraction", "0.5")
    head, own = _stages(out)
    assert [(s["report"]["seed"], s["report"]["layout_fraction"]) for s in own] == [(0, 0.0), (1, 0.5)]
    assert own[1]["report"]["init_from"] == str(out) and (out / WEIGHTS).read_bytes() != weights
    card = (out / "README.md").read_text()
    assert all(f"`{s['command']}`" in card for s in own)
    assert "50% layout batches" in card and "continued from the row above" in card


@pytest.mark.parametrize(
    "name, value",
    [
        ("flow_steps", "0"),
        ("flow_batch_size", "0"),
        ("dataset_size", "2"),
        ("learning_rate", "inf"),
        ("weight_decay", "-1"),
        ("logit_mean", "nan"),
        ("logit_std", "-1"),
        ("mode_scale", "-1.5"),
        ("layout_fraction", "2"),
        ("object_weight", "nan"),
    ],
)
def test_a_flow_number_that_cannot_work_is_one_line(name, value, tmp_path, monkeypatch, one_line_error):
    monkeypatch.setattr(pretrain, "train_flow", _fail)
    line = one_line_error(pretrain.main, ["flow", "--output", str(tmp_path / "flow"), *TINY, f"--{name}={value}"])
    assert f"--{name}" in line and "got" in line
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["toy-flow", "toy-flow-flow-stage"])
def test_a_folder_of_the_learners_own_is_refused_before_any_work(name, tmp_path, monkeypatch, one_line_error):
    monkeypatch.setattr(pretrain, "train_flow", _fail)
    (tmp_path / name).mkdir()
    (tmp_path / name / "notes.txt").write_text("mine\n")
    line = one_line_error(pretrain.main, ["flow", "--output", str(tmp_path / "toy-flow"), *TINY])
    assert "did not make" in line and name in line
    assert (tmp_path / name / "notes.txt").read_text() == "mine\n" and sorted(p.name for p in tmp_path.iterdir()) == [
        name
    ]


def test_inputs_that_are_no_toy_sd_or_flow_model_are_one_line(tmp_path, monkeypatch, one_line_error):
    monkeypatch.setattr(pretrain, "train_flow", _fail)
    out = str(tmp_path / "flow")
    line = one_line_error(pretrain.main, ["flow", "--output", f"{tmp_path}/sd/flow", "--toy_sd", f"{tmp_path}/sd"])
    assert "inside --toy_sd" in line
    (tmp_path / "empty").mkdir()
    line = one_line_error(pretrain.main, ["flow", "--output", out, "--toy_sd", str(tmp_path / "empty")])
    assert "holds no toy SD" in line
    line = one_line_error(pretrain.main, ["flow", "--output", out, "--init_from", str(flow_model.TOY_SD)])
    assert "holds no toy flow model" in line
    other = tmp_path / "other"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    (other / pretrain.STAGES).write_text("[]")
    line = one_line_error(pretrain.main, ["flow", "--output", out, "--init_from", str(other)])
    assert "trained on another toy SD" in line and not (tmp_path / "flow").exists()
