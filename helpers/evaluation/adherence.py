"""How often a toy model draws what its prompts ask, read by the toy judge.

One measure for every toy model, so that the toy SD and the toy flow model are compared on the same
prompts, seeds and judge (``benchmarks/toy_model.py``, notebook 11): the share of images whose judged
class, colour and, where the prompt names one, position are the prompt's.
"""

from __future__ import annotations

import statistics

from helpers.diffusion.generate import generate_images
from helpers.evaluation.metrics import prompt_fidelity
from helpers.toy.judge import Judge, judge_images
from helpers.toy.world import parse_prompt


def judged_adherence(pipe, judge: Judge, prompts: list[str], n: int, seed: int = 0, **sampling) -> dict[str, float]:
    """Mean over ``prompts`` of the share of ``n`` images (seeds ``seed``..``seed + n - 1``) whose judged
    class and colour match the prompt, and position over the prompts that name one; ``sampling`` goes to
    ``generate_images`` (steps, guidance scale, a profile's ``pipeline_kwargs``)."""
    rows = []
    for prompt in prompts:
        verdict = judge_images(judge, generate_images(pipe, prompt, n, seed=seed, **sampling))
        wanted = parse_prompt(prompt)
        row = {k: v for k, v in prompt_fidelity(verdict, wanted).items() if k in ("class_accuracy", "colour_accuracy")}
        if wanted["position"]:
            row["position_accuracy"] = sum(p == wanted["position"] for p in verdict.labels["position"]) / n
        rows.append(row)
    keys = dict.fromkeys(key for row in rows for key in row)  # position only over the prompts that name one
    return {key: statistics.mean(row[key] for row in rows if key in row) for key in keys}


def adherence_by_steps(
    pipe, judge: Judge, prompts: list[str], step_counts: list[int], n: int, seed: int = 0, **sampling
) -> dict[int, dict[str, float]]:
    """``judged_adherence`` at each number of sampling steps, on the same prompts and seeds: what a
    model gives up when it is sampled in fewer steps."""
    return {
        steps: judged_adherence(pipe, judge, prompts, n, seed, num_inference_steps=steps, **sampling)
        for steps in step_counts
    }
