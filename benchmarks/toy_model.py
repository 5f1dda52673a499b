"""How good is the toy Stable Diffusion? Prints the figures the course relies on.

    python benchmarks/toy_model.py [--model toy] [--images_per_prompt 32] [--adherence_seeds 1000 2000 3000]

- VAE: PSNR of fresh renders encoded and decoded;
- prompt adherence: for colour+class prompts, the share of samples whose judged class and colour
  match the prompt, and for colour+class+position prompts the share whose judged position does
  (50 DDIM steps, the profile's guidance scale), per seed and as mean and standard deviation;
- class prompts ("a photo of a dog"): judged class accuracy, diversity, and the Frechet distance in
  the judge's embedding space between the samples and fresh renders of the class, next to the same
  distance between two independent sets of fresh renders of the same size;
- the subject-fidelity ceiling: new photos of the toy dog against its photos, raw and through the VAE
  (benchmarks/language_drift.py sets a DreamBooth run against it);
- unconditional samples: diversity (DIV), and how many classes and colours appear;
- the time to generate 8 images at 50 DDIM steps (median of 3 runs);
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
from helpers.diffusion.profiles import TOY, TOY_JUDGE, load_pipeline
from helpers.evaluation import metrics
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
    rows = []
    for prompt in PROMPTS:
        verdict = judge_images(judge, generate_images(pipe, prompt, n, seed=seed, **kw))
        scores = metrics.prompt_fidelity(verdict, parse_prompt(prompt))
        rows.append({"prompt": prompt, **{k: round(v, 3) for k, v in scores.items()}})
    positions = []
    for prompt in POSITION_PROMPTS:
        verdict = judge_images(judge, generate_images(pipe, prompt, n, seed=seed, **kw))
        wanted = parse_prompt(prompt)["position"]
        positions.append(
            {"prompt": prompt, "position_accuracy": round(sum(p == wanted for p in verdict.labels["position"]) / n, 3)}
        )
    result = {
        "seed": seed,
        **{key: round(statistics.mean(r[key] for r in rows), 4) for key in ("class_accuracy", "colour_accuracy")},
        "position_accuracy": round(statistics.mean(r["position_accuracy"] for r in positions), 4),
        "prompts": rows + positions,
    }
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="toy", help="toy, or a folder written by `python -m helpers.pretrain`")
    parser.add_argument("--images_per_prompt", type=int, default=32)
    parser.add_argument("--class_images", type=int, default=64, help="samples and renders per class prompt")
    parser.add_argument("--seed", type=int, default=1000, help="for class prompts and unconditional samples")
    parser.add_argument("--adherence_seeds", type=int, nargs="+", default=[1000, 2000, 3000])
    parser.add_argument("--guidance_scale", type=float, default=TOY.guidance_scale)
    args = parser.parse_args()
    configure_cpu()
    pipe, judge = load_pipeline(args.model), load_judge(TOY_JUDGE)
    n, kw = args.images_per_prompt, dict(num_inference_steps=50, guidance_scale=args.guidance_scale)
    report: dict = {
        "images_per_prompt": n,
        "guidance_scale": args.guidance_scale,
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

    times = []
    for _ in range(3):
        start = time.perf_counter()
        generate_images(pipe, "a photo of a red dog", 8, seed=0, **kw)
        times.append(time.perf_counter() - start)
    report["seconds_for_8_images_50_ddim_steps"] = round(statistics.median(times), 2)
    report["judge_accuracy_on_1024_fresh_renders"] = {
        "rendered": judge_accuracy(judge),
        "through_the_toy_vae": judge_accuracy(judge, vae=pipe.vae),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
