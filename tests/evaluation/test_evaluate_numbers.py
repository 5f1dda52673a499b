"""Numbers of `python -m helpers.evaluate --model ...` that cannot work are one line, before any model loads."""

import pytest

from helpers.evaluation import evaluate

MODEL = ["--model", "toy", "--subject_dir", "data/subjects/toy_dog"]
PROMPTS = ["--instance_prompt", "a photo of sks dog", "--class_prompt", "a photo of dog"]


@pytest.mark.parametrize(
    "flags, name, value",
    [
        (["--num_samples", "1"], "--num_samples", "1"),
        (["--num_inference_steps", "0"], "--num_inference_steps", "0"),
        (["--num_inference_steps=-3"], "--num_inference_steps", "-3"),
        (["--seeds", "0", "-1"], "--seeds", "-1"),
    ],
)
def test_a_number_that_cannot_work_is_one_line(flags, name, value, monkeypatch, one_line_error):
    def fail(*args, **kwargs):
        raise AssertionError("a model loaded before the numbers were checked")

    monkeypatch.setattr(evaluate, "load_pipeline", fail)
    line = one_line_error(evaluate.main, [*MODEL, *PROMPTS, *flags])
    assert name in line and f"got {value}" in line
