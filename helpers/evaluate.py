"""Judge generated images against their prompt.

    python -m helpers.evaluate --images DIR --prompt "a photo of a red dog"

prints one JSON object: ``prompt_fidelity`` (0..1, the toy judge's agreement with the class and
colour the prompt names, the toy stand-in for CLIP-T), the per-attribute accuracies, and the
diversity of the images (DreamBooth's DIV: mean pairwise distance of judge embeddings).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from helpers import metrics, toyworld
from helpers.cli import UsageError, run_main
from helpers.data import load_image_folder
from helpers.judge import judge_images, load_judge
from helpers.profiles import TOY_JUDGE
from helpers.runtime import configure_cpu


def wanted_attributes(prompt: str) -> dict[str, str | None]:
    """What a prompt asks of the toy judge; fails with one line if it asks nothing it can check."""
    if not prompt.strip():
        raise UsageError("the prompt is empty: pass the prompt the images were generated from")
    wanted = toyworld.parse_prompt(prompt)
    if not (wanted["class"] or wanted["colour"]):
        raise UsageError(f"the prompt {prompt!r} names no toy class or colour, so the toy judge cannot score it; "
                         f"classes: {', '.join(toyworld.CLASSES)}; colours: {', '.join(toyworld.COLOUR_NAMES)}")
    return wanted


def evaluate_prompt(images, prompt: str, judge_dir: Path = TOY_JUDGE) -> dict:
    """The JSON report for images drawn from ``prompt``, on the toy judge."""
    wanted = wanted_attributes(prompt)
    verdict = judge_images(load_judge(judge_dir), images)
    report = {"prompt": prompt, "num_images": len(images), "judge": "toy"}
    report.update({k: round(v, 4) for k, v in metrics.prompt_fidelity(verdict, wanted).items()})
    if len(images) > 1:
        report["div"] = round(metrics.diversity(verdict.embeddings), 4)
    return report


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m helpers.evaluate", description="Judge images against a prompt.")
    parser.add_argument("--images", type=Path, required=True, help="folder of generated images")
    parser.add_argument("--prompt", required=True, help="the prompt the images were generated from")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    wanted_attributes(args.prompt)
    configure_cpu()
    print(json.dumps(evaluate_prompt(load_image_folder(args.images), args.prompt)))


if __name__ == "__main__":
    run_main(main)
