"""A toy model's judged adherence: the share of images whose judged class, colour and position are the prompt's."""

import random
from types import SimpleNamespace

import pytest
import torch

from helpers.evaluation.adherence import adherence_by_steps, judged_adherence
from helpers.toy import world

PROMPTS = [world.prompt_for("dog", "red"), world.prompt_for("car", "blue", "left")]


class RenderingPipe:
    """Stands in for a pipeline: draws what each prompt asks (or ``swap`` the class for another), so that
    the measure's answer is known; records the keyword arguments of every call."""

    device = torch.device("cpu")

    def __init__(self, swap: dict[str, str] | None = None):
        self.swap, self.calls = swap or {}, []

    def __call__(self, prompts, generator, **kwargs):
        self.calls.append(kwargs)
        wanted = world.parse_prompt(prompts[0])
        cls = self.swap.get(wanted["class"], wanted["class"])
        images = []
        for k in range(len(prompts)):
            rng = random.Random(k)
            placed, _, _ = world.place(
                world.random_instance(rng, cls, wanted["colour"]), rng, "big", wanted["position"]
            )
            images.append(world.render(world.Scene((placed,), "plain"), seed=k))
        return SimpleNamespace(images=images)


def test_a_model_that_draws_what_it_is_asked_scores_one_and_its_kwargs_reach_the_pipeline(judge):
    pipe = RenderingPipe()
    scores = judged_adherence(pipe, judge, PROMPTS, 4, num_inference_steps=3, max_sequence_length=0)
    assert scores == pytest.approx({"class_accuracy": 1.0, "colour_accuracy": 1.0, "position_accuracy": 1.0})
    assert all(call["num_inference_steps"] == 3 and call["max_sequence_length"] == 0 for call in pipe.calls)


def test_the_wrong_class_lowers_only_the_class_accuracy(judge):
    scores = judged_adherence(RenderingPipe(swap={"dog": "house"}), judge, PROMPTS, 4)
    assert scores["class_accuracy"] == pytest.approx(0.5)  # the dogs are houses, the cars are cars
    assert scores["colour_accuracy"] == pytest.approx(1.0)


def test_by_steps_asks_each_step_count_on_the_same_prompts(judge):
    pipe = RenderingPipe()
    result = adherence_by_steps(pipe, judge, PROMPTS[:1], [2, 5], 2, guidance_scale=1.0)
    assert list(result) == [2, 5] and result[5]["class_accuracy"] == pytest.approx(1.0)
    assert [call["num_inference_steps"] for call in pipe.calls] == [2, 5]
