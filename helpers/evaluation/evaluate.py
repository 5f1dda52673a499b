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
better), with the number of samples and the seeds. A model on the sd15 profile is scored as the
paper scores real photos (``helpers.evaluation.photo_scorers``): DINO ViT-S/16 for subject fidelity, PRES and
DIV, CLIP-T for prompt fidelity. (The paper's DIV uses LPIPS; here it is DINO distance, one
network fewer to download, so compare DIV between runs rather than with the paper's numbers.)
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from PIL import Image

from helpers.core.errors import UsageError
from helpers.core.images import load_image_folder
from helpers.core.numbers import at_least, seed_in_range
from helpers.core.runtime import configure_cpu
from helpers.diffusion.loading import CLIP_MODEL, DINO_MODEL
from helpers.diffusion.profiles import TOY_JUDGE, load_pipeline, profile_for_model
from helpers.evaluation import metrics
from helpers.evaluation.photo_scorers import ClipTextScorer, DinoEmbedder
from helpers.toy import world as toyworld
from helpers.toy.judge import judge_images, load_judge


def wanted_attributes(prompt: str) -> dict[str, str | None]:
    """What a prompt asks of the toy judge; fails with one line if it asks nothing it can check."""
    if not prompt.strip():
        raise UsageError("the prompt is empty: pass the prompt the images were generated from")
    wanted = toyworld.parse_prompt(prompt)
    if not (wanted["class"] or wanted["colour"]):
        raise UsageError(
            f"the prompt {prompt!r} names no toy class or colour, so the toy judge cannot score it; "
            f"classes: {', '.join(toyworld.CLASSES)}; colours: {', '.join(toyworld.COLOUR_NAMES)}"
        )
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


@dataclass
class Scorers:
    """What a model evaluation measures with: subject features, and prompt agreement per image set."""

    name: str
    embed: Callable[[Sequence[Image.Image]], torch.Tensor]
    prompt_fidelity: Callable[[Sequence[Image.Image], str], float]
    models: tuple = ()  # what holds GPU memory (DINO, CLIP), so that a notebook can park it during a fine-tune

    def to(self, device: str) -> "Scorers":
        for model in self.models:
            model.to(device)
        return self


def toy_scorers(judge_dir: Path = TOY_JUDGE) -> Scorers:
    """The toy judge as both DINO (its embedding) and CLIP-T (its class and colour labels)."""
    judge = load_judge(judge_dir)

    def fidelity(images: Sequence[Image.Image], prompt: str) -> float:
        return metrics.prompt_fidelity(judge_images(judge, images), wanted_attributes(prompt))["prompt_fidelity"]

    return Scorers("toy judge", lambda images: judge_images(judge, images).embeddings, fidelity)


def photo_scorers(dino: str = DINO_MODEL, clip: str = CLIP_MODEL, device: str = "cpu") -> Scorers:
    """The paper's scorers for real photos: DINO ViT-S/16 embeddings and CLIP-T."""
    embed, clip_t = DinoEmbedder(dino, device), ClipTextScorer(clip, device)
    return Scorers(
        f"DINO {dino} + CLIP-T {clip}",
        embed,
        lambda images, prompt: statistics.mean(clip_t(images, prompt)),
        (embed, clip_t),
    )


def scorers_for(profile) -> Scorers:
    """What scores a profile's images: the toy judge on the toy, DINO and CLIP-T on real photos."""
    if profile.is_toy:
        return toy_scorers()
    return photo_scorers(profile.dino_model or DINO_MODEL, profile.clip_model or CLIP_MODEL, profile.device)


def fidelity_ceiling(scorers: Scorers, subject_images, new_photos, vae=None) -> dict[str, float]:
    """The subject fidelity a perfect model would reach: new photos of the subject (poses and scenes
    its photos do not show) scored against its photos, as they are and, with ``vae``, encoded and
    decoded (the most that a latent diffusion model drawing through that VAE can keep). A fine-tune's
    fidelity means little alone; as a share of this ceiling it says how much of the subject was learned."""
    from helpers.diffusion.latents import through_vae

    subject = scorers.embed(subject_images)
    ceiling = {"raw": metrics.subject_fidelity(scorers.embed(new_photos), subject)}
    if vae is not None:
        ceiling["through_vae"] = metrics.subject_fidelity(scorers.embed(through_vae(vae, list(new_photos))), subject)
    return ceiling


def evaluate_model(
    pipe,
    subject_images,
    instance_prompt: str,
    class_prompt: str,
    num_samples: int = 16,
    seeds: tuple[int, ...] = (0,),
    scorers: Scorers | None = None,
    num_inference_steps: int = 50,
    guidance_scale: float = 4.0,
    pipe_kwargs: dict | None = None,
    keep_class_samples: bool = False,
) -> dict:
    """subject_fidelity, prompt_fidelity, pres and div of a (fine-tuned) pipeline, averaged over seeds;
    ``pipe_kwargs`` go to every pipeline call (a profile's ``pipeline_kwargs``). With
    ``keep_class_samples`` the report also holds the class-prompt images it scored ("class_samples",
    every seed's in turn), for a caller that looks at them or judges them further."""
    from helpers.diffusion.generate import generate_images

    scorers = scorers or toy_scorers()
    subject = scorers.embed(subject_images)
    rows, class_samples = [], []
    for seed in seeds:
        kw = dict(seed=seed * 10_000, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale)
        kw |= pipe_kwargs or {}
        inst_images = generate_images(pipe, instance_prompt, num_samples, **kw)
        class_samples += generate_images(pipe, class_prompt, num_samples, **kw)
        inst, cls = scorers.embed(inst_images), scorers.embed(class_samples[-num_samples:])
        rows.append(
            {
                "subject_fidelity": metrics.subject_fidelity(inst, subject),
                "prompt_fidelity": scorers.prompt_fidelity(inst_images, instance_prompt),
                "pres": metrics.subject_fidelity(cls, subject),
                "div": metrics.diversity(cls),
            }
        )
    report = {k: round(statistics.mean(r[k] for r in rows), 4) for k in rows[0]}
    report.update(
        {
            "num_samples": num_samples,
            "seeds": list(seeds),
            "scorers": scorers.name,
            "instance_prompt": instance_prompt,
            "class_prompt": class_prompt,
        }
    )
    if keep_class_samples:
        report["class_samples"] = class_samples
    return report


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m helpers.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=Path, help="folder of generated images (with --prompt)")
    parser.add_argument("--prompt", help="the prompt the images were generated from")
    parser.add_argument(
        "--model", help="toy, toy-flow or a fine-tuned pipeline folder (with --subject_dir and the prompts)"
    )
    parser.add_argument("--subject_dir", type=Path, help="the subject's photos")
    parser.add_argument("--instance_prompt", help='e.g. "a photo of sks dog"')
    parser.add_argument("--class_prompt", help='e.g. "a photo of dog"')
    parser.add_argument("--num_samples", type=int, default=16, help="samples per prompt and seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--num_inference_steps", type=int, default=None, help="sampling steps (the profile's default)")
    parser.add_argument("--dino_model", default=DINO_MODEL, help="real photos: DINO id or local folder")
    parser.add_argument("--clip_model", default=CLIP_MODEL, help="real photos: CLIP id or local folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    if args.model is None:
        if args.images is None or args.prompt is None:
            raise UsageError(
                'pass --images DIR --prompt "...", or --model with --subject_dir, --instance_prompt and --class_prompt'
            )
        wanted_attributes(args.prompt)
        configure_cpu()
        print(json.dumps(evaluate_prompt(load_image_folder(args.images), args.prompt)))
        return
    missing = [f"--{k}" for k in ("subject_dir", "instance_prompt", "class_prompt") if getattr(args, k) is None]
    if missing:
        raise UsageError(f"--model also needs {', '.join(missing)}")
    at_least("--num_samples", args.num_samples, 2, "pass 2 or more: DIV compares samples pairwise")
    at_least("--num_inference_steps", args.num_inference_steps, 1, "pass e.g. 50, or leave it out")
    for value in args.seeds:
        seed_in_range("--seeds", value)
    profile = profile_for_model(args.model)
    if profile.is_toy:
        wanted_attributes(args.instance_prompt)
        wanted_attributes(args.class_prompt)
        configure_cpu()
    subject = load_image_folder(args.subject_dir)
    pipe = load_pipeline(args.model, profile)
    scorers = scorers_for(replace(profile, dino_model=args.dino_model, clip_model=args.clip_model))
    report = evaluate_model(
        pipe,
        subject,
        args.instance_prompt,
        args.class_prompt,
        args.num_samples,
        tuple(args.seeds),
        scorers,
        profile.num_inference_steps if args.num_inference_steps is None else args.num_inference_steps,
        profile.guidance_scale,
        profile.pipeline_kwargs,
    )
    print(json.dumps(report))
