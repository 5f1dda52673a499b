"""How good are the toy models? Prints the figures the course relies on, per model and side by side.

    python benchmarks/toy_model.py [--models toy toy-flow] [--images_per_prompt 32] [--class_images 256]
        [--adherence_seeds 1000 2000 3000] [--step_counts 4 8 16 32]

Each model samples at its profile's defaults (the toy SD: 50 DDIM steps; the toy flow model: 28 Euler
steps), on the same prompts, seeds and judge:

- VAE: PSNR of fresh renders encoded and decoded;
- prompt adherence: for colour+class prompts, the share of samples whose judged class and colour
  match the prompt, and for colour+class+position prompts the share whose judged position does
  (the profile's steps and guidance scale), per seed and as mean and standard deviation;
- class prompts ("a photo of a dog"): judged class accuracy, diversity, and the Frechet distance in
  the judge's embedding space between the samples and fresh renders of the class, next to the same
  distance between two independent sets of fresh renders of the same size;
- the subject-fidelity ceiling: new photos of the toy dog against its photos, raw and through the VAE
  (benchmarks/language_drift.py sets a DreamBooth run against it);
- unconditional samples: diversity (DIV), and how many classes and colours appear;
- with ``--step_counts``, class accuracy when sampled in that many steps (what straight paths buy);
- the time to generate 8 images at the profile's steps (median of 5 runs, after a warm-up);
- the judge's accuracy on fresh renders, as rendered and through the toy VAE.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import time

from helpers.core.images import load_image_folder
from helpers.core.paths import ROOT
from helpers.core.runtime import configure_cpu
from helpers.diffusion.generate import generate_images
from helpers.diffusion.profiles import TOY_JUDGE, load_pipeline, profile_for_model
from helpers.evaluation import metrics
from helpers.evaluation.adherence import adherence_by_steps, judged_adherence
from helpers.evaluation.evaluate import fidelity_ceiling, toy_scorers
from helpers.toy.judge import judge_accuracy, judge_images, load_judge
from helpers.toy.pretrain import vae_psnr
from helpers.toy.world import class_views, new_subject_photos, parse_prompt, prompt_for, random_sample, render

PAIRS = [
    ("dog", "red"),
    ("sunglasses", "blue"),
    ("cup", "yellow"),
    ("house", "pink"),
    ("cat", "white"),
    ("tree", "purple"),
    ("car", "green"),
    ("flower", "orange"),
]
PROMPTS = [prompt_for(cls, colour) for cls, colour in PAIRS]
POSITION_PROMPTS = [
    prompt_for(cls, colour, position)
    for (cls, colour), position in zip(
        [
            ("dog", "brown"),
            ("cat", "black"),
            ("cup", "green"),
            ("house", "blue"),
            ("car", "red"),
            ("flower", "yellow"),
            ("tree", "pink"),
            ("sunglasses", "white"),
        ],
        ["left", "right", "center", "right", "left", "right", "left", "center"],
    )
]
CLASS_PROMPTS = {prompt_for(cls): cls for cls in ("dog", "sunglasses", "cup", "house")}


def adherence(pipe, judge, n: int, seed: int, kw: dict) -> dict:
    """Judged class and colour agreement over ``PROMPTS`` and position agreement over
    ``POSITION_PROMPTS``, ``n`` images each from one seed."""
    result = {"seed": seed, **judged_adherence(pipe, judge, PROMPTS, n, seed, **kw)}
    result["position_accuracy"] = judged_adherence(pipe, judge, POSITION_PROMPTS, n, seed, **kw)["position_accuracy"]
    result = {k: round(v, 4) for k, v in result.items()}
    print(json.dumps(result), flush=True)
    return result


def class_prompts(pipe, judge, n: int, seed: int, kw: dict) -> list[dict]:
    """Class accuracy, DIV and the Frechet distance to fresh renders, per class prompt."""
    rows = []
    for prompt, cls in CLASS_PROMPTS.items():
        verdict = judge_images(judge, generate_images(pipe, prompt, n, seed=seed, **kw))
        renders = judge_images(judge, class_views(cls, n, seed=seed)).embeddings
        other_renders = judge_images(judge, class_views(cls, n, seed=seed + 1)).embeddings
        rows.append(
            {
                "prompt": prompt,
                "class_accuracy": round(metrics.prompt_fidelity(verdict, parse_prompt(prompt))["class_accuracy"], 3),
                "div": round(metrics.diversity(verdict.embeddings), 3),
                "colours_seen": len(set(verdict.labels["colour"])),
                "frechet_samples_vs_renders": round(metrics.frechet_distance(verdict.embeddings, renders), 4),
                "frechet_renders_vs_renders": round(metrics.frechet_distance(other_renders, renders), 4),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def mean_sd(values: list[float]) -> dict:
    return {
        "mean": round(statistics.mean(values), 4),
        "sd": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
    }


def measure(model: str, args: argparse.Namespace, judge) -> dict:
    """Every figure of the module docstring for one model, at its profile's steps and guidance."""
    profile = profile_for_model(model)
    pipe = load_pipeline(model, profile)
    guidance = profile.guidance_scale if args.guidance_scale is None else args.guidance_scale
    n = args.images_per_prompt
    kw = dict(num_inference_steps=profile.num_inference_steps, guidance_scale=guidance, **profile.pipeline_kwargs)
    report: dict = {
        "model": model,
        "pipeline": type(pipe).__name__,
        "scheduler": f"{type(pipe.scheduler).__name__}, {profile.num_inference_steps} steps",
        "images_per_prompt": n,
        "guidance_scale": guidance,
        "vae_psnr_db_on_512_fresh_renders": round(vae_psnr(pipe.vae), 2),
    }
    print(json.dumps(report), flush=True)

    per_seed = [adherence(pipe, judge, n, seed, kw) for seed in args.adherence_seeds]
    report["adherence_per_seed"] = per_seed
    for key in ("class_accuracy", "colour_accuracy", "position_accuracy"):
        report[key] = mean_sd([row[key] for row in per_seed])

    report["class_prompts"] = rows = class_prompts(pipe, judge, args.class_images, args.seed, kw)
    report["frechet_ratio_samples_to_renders"] = round(
        statistics.mean(r["frechet_samples_vs_renders"] for r in rows)
        / statistics.mean(r["frechet_renders_vs_renders"] for r in rows),
        3,
    )

    photos = load_image_folder(ROOT / "data" / "subjects" / "toy_dog")
    ceiling = fidelity_ceiling(toy_scorers(), photos, new_subject_photos("toy_dog", 24, seed=7), vae=pipe.vae)
    report["toy_dog_fidelity_ceiling"] = {k: round(v, 4) for k, v in ceiling.items()}

    verdict = judge_images(judge, generate_images(pipe, "", 64, seed=args.seed, **kw))
    report["unconditional"] = {
        "div": round(metrics.diversity(verdict.embeddings), 4),
        "classes": dict(collections.Counter(verdict.labels["class"])),
        "colours_seen": len(set(verdict.labels["colour"])),
    }
    renders = judge_images(judge, [render(random_sample(s).scene, seed=s) for s in range(64)])
    report["renders_div"] = round(metrics.diversity(renders.embeddings), 4)
    if args.step_counts:
        few = adherence_by_steps(pipe, judge, PROMPTS, args.step_counts, n, args.seed, guidance_scale=guidance)
        report["class_accuracy_by_steps"] = {steps: round(r["class_accuracy"], 4) for steps, r in few.items()}
        print(json.dumps(report["class_accuracy_by_steps"]), flush=True)
    report["judge_accuracy_on_1024_fresh_renders"] = {
        "rendered": judge_accuracy(judge),
        "through_the_toy_vae": judge_accuracy(judge, vae=pipe.vae),
    }
    return report


def sampling_seconds(model: str, runs: int = 5) -> float:
    """Median wall time of 8 images at the profile's default steps and guidance."""
    profile = profile_for_model(model)
    pipe = load_pipeline(model, profile)
    kw = dict(
        num_inference_steps=profile.num_inference_steps,
        guidance_scale=profile.guidance_scale,
        **profile.pipeline_kwargs,
    )
    generate_images(pipe, "a photo of a red dog", 8, seed=0, **kw)  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        generate_images(pipe, "a photo of a red dog", 8, seed=0, **kw)
        times.append(time.perf_counter() - start)
    return round(statistics.median(times), 2)


def side_by_side(reports: list[dict]) -> str:
    """The headline figures of each model as one markdown table, a column per model."""
    rows = [
        ("pipeline", lambda r: r["pipeline"]),
        ("sampler", lambda r: r["scheduler"]),
        ("class accuracy (mean ± sd over seeds)", lambda r: "{mean:.3f} ± {sd:.3f}".format(**r["class_accuracy"])),
        ("colour accuracy", lambda r: "{mean:.3f} ± {sd:.3f}".format(**r["colour_accuracy"])),
        ("position accuracy", lambda r: "{mean:.3f} ± {sd:.3f}".format(**r["position_accuracy"])),
        ("class-prompt Frechet / render floor", lambda r: f"{r['frechet_ratio_samples_to_renders']:.2f}x"),
        ("unconditional DIV (renders: {})".format(reports[0]["renders_div"]), lambda r: f"{r['unconditional']['div']}"),
        ("s for 8 images (median of 5)", lambda r: f"{r['seconds_for_8_images']}"),
    ]
    if "class_accuracy_by_steps" in reports[0]:
        for steps in reports[0]["class_accuracy_by_steps"]:
            rows.append(
                (f"class accuracy at {steps} steps", lambda r, s=steps: f"{r['class_accuracy_by_steps'][s]:.3f}")
            )
    lines = ["| | " + " | ".join(r["model"] for r in reports) + " |", "|---" * (len(reports) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(cell(r) for r in reports) + " |" for name, cell in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--models", nargs="+", default=["toy"], help="toy, toy-flow, or folders written by `python -m helpers.pretrain`"
    )
    parser.add_argument("--images_per_prompt", type=int, default=32)
    parser.add_argument("--class_images", type=int, default=64, help="samples and renders per class prompt")
    parser.add_argument("--seed", type=int, default=1000, help="for class prompts and unconditional samples")
    parser.add_argument("--adherence_seeds", type=int, nargs="+", default=[1000, 2000, 3000])
    parser.add_argument("--guidance_scale", type=float, default=None, help="default: each model's profile's")
    parser.add_argument(
        "--step_counts", type=int, nargs="*", default=[], help="also class accuracy at these sampling step counts"
    )
    args = parser.parse_args()
    configure_cpu()
    judge = load_judge(TOY_JUDGE)
    reports = [measure(model, args, judge) for model in args.models]
    for report in reports:  # timed last and back to back, so that the models share the machine's state
        report["seconds_for_8_images"] = sampling_seconds(report["model"])
    print(json.dumps(reports, indent=2))
    print(side_by_side(reports))


if __name__ == "__main__":
    main()
