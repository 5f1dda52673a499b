"""Judge generated images, or a fine-tuned model, the way the DreamBooth paper does.

    python -m helpers.evaluate --images DIR --prompt "a photo of a red dog"
    python -m helpers.evaluate --model DIR|toy --subject_dir data/subjects/toy_dog \\
        --instance_prompt "a photo of sks dog" --class_prompt "a photo of dog"

Each prints one JSON object. For images: ``prompt_fidelity`` (0..1, the toy judge's agreement with
the class and colour the prompt names: the toy stand-in for CLIP-T), per-attribute accuracies and
``div``. For a model: ``subject_fidelity`` (mean judge-embedding cosine similarity of instance-prompt
samples to the subject photos: the toy stand-in for DINO), ``prompt_fidelity`` of those samples,
``pres`` (the same similarity for *class*-prompt samples: how much the class has turned into the
subject, lower is better) and ``div`` (mean pairwise distance among class-prompt samples, higher is
better), with the number of samples and the seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from helpers import metrics, toyworld
from helpers.cli import UsageError, run_main
from helpers.data import load_image_folder
from helpers.judge import judge_images, load_judge
from helpers.profiles import TOY_JUDGE, load_pipeline, profile_for_model
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


def evaluate_model(pipe, subject_images, instance_prompt: str, class_prompt: str, num_samples: int = 16,
                   seeds: tuple[int, ...] = (0,), judge_dir: Path = TOY_JUDGE,
                   num_inference_steps: int = 50, guidance_scale: float = 4.0) -> dict:
    """subject_fidelity, prompt_fidelity, pres and div of a (fine-tuned) pipeline, averaged over seeds."""
    from helpers.generate import generate_images

    wanted = wanted_attributes(instance_prompt)
    wanted_attributes(class_prompt)
    judge = load_judge(judge_dir)
    subject = judge_images(judge, subject_images).embeddings
    rows = []
    for seed in seeds:
        kw = dict(seed=seed * 10_000, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale)
        inst = judge_images(judge, generate_images(pipe, instance_prompt, num_samples, **kw))
        cls = judge_images(judge, generate_images(pipe, class_prompt, num_samples, **kw))
        rows.append({"subject_fidelity": metrics.subject_fidelity(inst.embeddings, subject),
                     "prompt_fidelity": metrics.prompt_fidelity(inst, wanted)["prompt_fidelity"],
                     "pres": metrics.subject_fidelity(cls.embeddings, subject),
                     "div": metrics.diversity(cls.embeddings)})
    report = {k: round(statistics.mean(r[k] for r in rows), 4) for k in rows[0]}
    report.update({"num_samples": num_samples, "seeds": list(seeds), "judge": "toy",
                   "instance_prompt": instance_prompt, "class_prompt": class_prompt})
    return report


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m helpers.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=Path, help="folder of generated images (with --prompt)")
    parser.add_argument("--prompt", help="the prompt the images were generated from")
    parser.add_argument("--model", help="toy or a fine-tuned pipeline folder (with --subject_dir and the prompts)")
    parser.add_argument("--subject_dir", type=Path, help="the subject's photos")
    parser.add_argument("--instance_prompt", help='e.g. "a photo of sks dog"')
    parser.add_argument("--class_prompt", help='e.g. "a photo of dog"')
    parser.add_argument("--num_samples", type=int, default=16, help="samples per prompt and seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    if args.model is None:
        if args.images is None or args.prompt is None:
            raise UsageError("pass --images DIR --prompt \"...\", or --model with --subject_dir, "
                             "--instance_prompt and --class_prompt")
        wanted_attributes(args.prompt)
        configure_cpu()
        print(json.dumps(evaluate_prompt(load_image_folder(args.images), args.prompt)))
        return
    missing = [f"--{k}" for k in ("subject_dir", "instance_prompt", "class_prompt") if getattr(args, k) is None]
    if missing:
        raise UsageError(f"--model also needs {', '.join(missing)}")
    if args.num_samples < 2:
        raise UsageError("--num_samples must be at least 2 (DIV compares samples pairwise)")
    wanted_attributes(args.instance_prompt)
    wanted_attributes(args.class_prompt)
    configure_cpu()
    profile = profile_for_model(args.model)
    if not profile.is_toy:
        raise UsageError("model evaluation with DINO/CLIP on real images is not available offline; "
                         "this command judges toy-profile models")
    subject = load_image_folder(args.subject_dir)
    report = evaluate_model(load_pipeline(args.model, profile), subject, args.instance_prompt, args.class_prompt,
                            args.num_samples, tuple(args.seeds), guidance_scale=profile.guidance_scale)
    print(json.dumps(report))


if __name__ == "__main__":
    run_main(main)
