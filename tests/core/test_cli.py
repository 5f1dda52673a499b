"""`generate` and `evaluate` as a learner runs them: good input works, bad input gets one line."""

import json
import shlex

import pytest

from helpers.core.cli import wrapped_command


def _one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_generate_then_evaluate(tmp_path, run_tool):
    out = tmp_path / "imgs"
    gen = run_tool(
        "generate",
        "--model",
        "toy",
        "--prompt",
        "a photo of a red dog",
        "--num_images",
        "2",
        "--seed",
        "0",
        "--num_inference_steps",
        "10",
        "--output_dir",
        str(out),
    )
    assert gen.returncode == 0, gen.stderr
    assert sorted(p.name for p in out.iterdir()) == [".made-by.json", "00000.png", "00001.png", "generation.json"]
    assert json.loads((out / "generation.json").read_text())["num_inference_steps"] == 10
    ev = run_tool("evaluate", "--images", str(out), "--prompt", "a photo of a red dog")
    assert ev.returncode == 0, ev.stderr
    report = json.loads(ev.stdout)
    assert report["num_images"] == 2 and 0 <= report["prompt_fidelity"] <= 1
    assert set(report) >= {"class_accuracy", "colour_accuracy", "div"}


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--model", "no/such/folder"], ["does not exist", "--model toy"]),
        (["--model", "./missing-model"], ["does not exist"]),
        (["--prompt", "  "], ["prompt is empty"]),
        (["--num_images", "0"], ["--num_images must be at least 1"]),
    ],
)
def test_generate_bad_input(tmp_path, run_tool, args, fragments):
    base = {"--model": "toy", "--prompt": "a photo of a dog", "--num_images": "1", "--output_dir": str(tmp_path / "o")}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    _one_line_error(run_tool("generate", *[x for kv in base.items() for x in kv]), *fragments)


def test_generate_model_folder_that_is_not_a_pipeline(tmp_path, run_tool):
    _one_line_error(
        run_tool("generate", "--model", str(tmp_path), "--prompt", "a dog", "--output_dir", str(tmp_path / "o")),
        "not a diffusers pipeline",
    )


def test_evaluate_bad_input(tmp_path, run_tool):
    _one_line_error(run_tool("evaluate", "--images", str(tmp_path / "missing"), "--prompt", "a dog"), "does not exist")
    _one_line_error(run_tool("evaluate", "--images", str(tmp_path), "--prompt", "a dog"), "holds no images")
    (tmp_path / "x.png").write_bytes(b"\x89PNG broken")
    _one_line_error(run_tool("evaluate", "--images", str(tmp_path), "--prompt", "a dog"), "cannot read image", "x.png")
    _one_line_error(run_tool("evaluate", "--images", str(tmp_path), "--prompt", ""), "prompt is empty")
    _one_line_error(
        run_tool("evaluate", "--images", str(tmp_path), "--prompt", "a photo of a zebra"), "names no toy class"
    )


def test_a_wrapped_command_reads_back_as_the_same_words():
    flags = ["--output_dir", "my outputs", "--use_8bit_adam", "--learning_rate", "1e-5"] * 4
    text = wrapped_command("helpers.controlnet", flags, width=60)
    assert all(len(line) <= 60 for line in text.splitlines()) and len(text.splitlines()) > 1
    assert shlex.split(text.replace("\\\n", " ")) == ["python", "-m", "helpers.controlnet", *flags]
    assert "--output_dir 'my outputs'" in text  # a flag and its value stay on one line
