"""ControlGPT: a planner writes the layout as TikZ, the reader draws it, a ControlNet paints it.

ControlGPT (Zhang et al., 2023, arXiv 2305.18583) gets spatial prompts right that text-to-image
models get wrong ("a red dog to the left of a blue cup") by splitting the work: GPT-4 writes TikZ
for the layout, the TikZ is rendered to a sketch, and a ControlNet trained on sketches turns sketch
and prompt into the image. Object names and positions ground the sketch: here each object's box is
filled with its colour and its name is drawn at its centre as a code square (`tikz.glyph`).

    python -m helpers.controlgpt evaluate --seed 0
    python -m helpers.controlgpt draw --prompt "a red dog to the left of a blue cup" --output_dir outputs/cgpt

``evaluate`` compares, on prompts of class pairs the ControlNet never saw together, plain
text-to-image, the ControlNet given each scene's true layout, and the full ControlGPT path, in the
manner of VISOR: object accuracy (both objects found) and relation accuracy (found and in the
stated relation), read by the toy locator.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from helpers.control import tikz
from helpers.control.controlnet import (
    CONDITIONING_SCALE,
    GUIDANCE_SCALE,
    draw,
    held_out_samples,
    load_controlnet_pipeline,
    true_layout,
)
from helpers.control.planner import ChatPlanner, LocalPlanner, Plan, Planner, RuleBasedPlanner, plan
from helpers.core.errors import UsageError
from helpers.core.folders import building, check_output
from helpers.core.numbers import at_least, finite, seed_in_range
from helpers.diffusion.profiles import TOY_CONTROLNET, TOY_LOCATOR, choose_profile, load_pipeline

if TYPE_CHECKING:
    from helpers.toy.locator import Found

METHODS = ("plain", "controlnet_true_layout", "controlgpt")
# The methods as a reader names them, for tables and figures (the keys stay the JSON's)
METHOD_LABELS = {
    "plain": "plain text-to-image",
    "controlnet_true_layout": "ControlNet, true layout",
    "controlgpt": "ControlGPT",
}
SIZE = 64
TOOL = "helpers.controlgpt"


@dataclass
class Outcome:
    """One method's images on the evaluation prompts, what the locator found in each, and its scores."""

    images: list[Image.Image]
    sketches: list[Image.Image] | None
    scores: dict[str, float]
    found: list[list[Found]]
    plans: list[Plan] | None = None  # the planner's accepted answers, for ControlGPT


def planned_sketch(planner: Planner, prompt: str, size: int = SIZE) -> tuple[Plan, Image.Image]:
    """The planner's TikZ for ``prompt`` (retried with the reader's errors) and the sketch it draws."""
    accepted = plan(planner, prompt)
    return accepted, tikz.render(accepted.drawing, size, labels="glyph")


def make_planner(name: str | None = None) -> Planner:
    """``rules`` (offline, not an LLM), ``local`` (an open LLM on this machine, ``planner.LOCAL_MODEL``) or
    ``chat`` (the endpoint in CONTROLGPT_BASE_URL); None: ``local`` where the course would pick a real model (a
    CUDA GPU and the hub, ``choose_profile``), else ``rules``."""
    if name is None:
        name = "local" if not choose_profile().is_toy else "rules"
    if name == "rules":
        return RuleBasedPlanner()
    if name == "local":
        return LocalPlanner()
    if name == "chat":
        return ChatPlanner()
    raise UsageError(f"--planner must be rules, local or chat, not {name!r}")


def compare(
    seed: int = 0,
    count: int = 48,
    controlnet: str | Path = TOY_CONTROLNET,
    planner: Planner | None = None,
    **draw_kwargs,
) -> dict[str, Outcome]:
    """The three methods on the same held-out prompts, with the same sampling seeds."""
    from helpers.toy.locator import load_locator, locate, score_relations

    if count < 1:
        raise UsageError(f"--count must be a positive number of prompts, got {count}")
    planner = planner or RuleBasedPlanner()
    samples = held_out_samples(count, seed)
    prompts = [s.prompt for s in samples]
    base = load_pipeline("toy")
    guided = load_controlnet_pipeline(controlnet)
    locator = load_locator(TOY_LOCATOR)
    plans = [planned_sketch(planner, p) for p in prompts]
    layouts = {
        "plain": None,
        "controlnet_true_layout": [true_layout(s, SIZE) for s in samples],
        "controlgpt": [sketch for _, sketch in plans],
    }
    outcomes = {}
    for method, sketches in layouts.items():
        images = draw(guided if sketches else base, prompts, sketches, seed, **draw_kwargs)
        found = locate(locator, images)
        outcomes[method] = Outcome(
            images,
            sketches,
            score_relations(found, samples),
            found,
            [accepted for accepted, _ in plans] if method == "controlgpt" else None,
        )
    return outcomes


def evaluate(
    seed: int = 0,
    count: int = 48,
    controlnet: str | Path = TOY_CONTROLNET,
    planner: Planner | None = None,
    **draw_kwargs,
) -> dict:
    """The relation-accuracy table as one JSON-ready dict."""
    planner = planner or RuleBasedPlanner()
    outcomes = compare(seed, count, controlnet, planner, **draw_kwargs)
    return {"seed": seed, "planner": planner.name, "controlnet": str(controlnet)} | {
        method: outcome.scores for method, outcome in outcomes.items()
    }


def draw_prompts(
    prompts: list[str],
    output_dir: str | Path,
    seed: int = 0,
    controlnet: str | Path = TOY_CONTROLNET,
    planner: Planner | None = None,
    **draw_kwargs,
) -> Path:
    """ControlGPT for the given prompts: each prompt's TikZ, sketch and image, written into ``output_dir``,
    which is replaced whole: it must be new, empty or an earlier ``draw``'s, checked before any planning."""
    output = check_output(output_dir, TOOL)
    planner = planner or RuleBasedPlanner()
    plans = [planned_sketch(planner, p) for p in prompts]
    guided = load_controlnet_pipeline(controlnet)
    images = draw(guided, prompts, [sketch for _, sketch in plans], seed, **draw_kwargs)
    with building(output, TOOL) as build:
        for k, ((accepted, sketch), image) in enumerate(zip(plans, images)):
            (build / f"{k:03d}.tex").write_text(accepted.code + "\n")
            sketch.save(build / f"{k:03d}-sketch.png")
            image.save(build / f"{k:03d}.png")
    return output


def _check(args: argparse.Namespace) -> None:
    """Numbers that cannot work (argparse's float takes inf and nan) end in one line before any model loads."""
    seed_in_range("--seed", args.seed)
    finite("--controlnet_conditioning_scale", args.controlnet_conditioning_scale, "pass e.g. 1.5 (0 turns it off)")
    at_least("--guidance_scale", args.guidance_scale, 1.0, "pass e.g. 2.0, or 1.0 for no guidance")
    if args.command == "evaluate":
        at_least("--count", args.count, 1, "pass how many held-out prompts to score, e.g. 48")


def main(argv: list[str] | None = None) -> None:
    from helpers.core.runtime import configure_cpu

    parser = argparse.ArgumentParser(prog="python -m helpers.controlgpt", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("evaluate", help="plain vs ControlNet(true layout) vs ControlGPT on held-out pairs, as JSON")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--count", type=int, default=48, help="number of held-out prompts")
    dr = sub.add_parser("draw", help="ControlGPT for your prompts: TikZ, sketch and image for each")
    dr.add_argument("--prompt", action="append", required=True, help="repeat for several prompts")
    dr.add_argument("--output_dir", type=Path, required=True)
    dr.add_argument("--seed", type=int, default=0)
    for p in (ev, dr):
        p.add_argument("--controlnet", default=str(TOY_CONTROLNET), help="a ControlNet folder (default: the toy one)")
        p.add_argument(
            "--planner",
            default="rules",
            help="rules (offline stand-in, not an LLM), local (Qwen2.5-1.5B-Instruct) or chat",
        )
        p.add_argument("--controlnet_conditioning_scale", type=float, default=CONDITIONING_SCALE)
        p.add_argument("--guidance_scale", type=float, default=GUIDANCE_SCALE, help="classifier-free guidance")
    args = parser.parse_args(argv)
    _check(args)
    configure_cpu()
    kw = dict(
        controlnet=args.controlnet,
        planner=make_planner(args.planner),
        conditioning_scale=args.controlnet_conditioning_scale,
        guidance_scale=args.guidance_scale,
    )
    if args.command == "evaluate":
        print(json.dumps(evaluate(args.seed, args.count, **kw), indent=2))
    else:
        print(draw_prompts(args.prompt, args.output_dir, args.seed, **kw))
