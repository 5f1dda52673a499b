"""How good is the toy Stable Diffusion? Prints the figures the course relies on.

    python benchmarks/toy_model.py [--model toy] [--images_per_prompt 32]

- prompt adherence: for colour+class prompts, the share of samples whose judged class and colour
  match the prompt (50 DDIM steps, the profile's guidance scale), for each of several seeds and
  their mean and standard deviation;
- class prompts ("a photo of a dog"): judged class accuracy and the diversity of what is drawn;
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

from helpers import metrics
from helpers.generate import generate_images
from helpers.judge import judge_accuracy, judge_images, load_judge
from helpers.profiles import TOY, TOY_JUDGE, load_pipeline
from helpers.runtime import configure_cpu
from helpers.toyworld import parse_prompt, random_sample, render

PROMPTS = [
    "a photo of a red dog", "a photo of a blue sunglasses", "a photo of a yellow cup", "a photo of a pink house",
    "a photo of a white cat", "a photo of a purple tree", "a photo of a green car", "a photo of an orange flower",
]
CLASS_PROMPTS = ["a photo of a dog", "a photo of sunglasses", "a photo of a cup", "a photo of a house"]


def adherence(pipe, judge, n: int, seed: int, kw: dict) -> dict:
    """Judged class and colour agreement over ``PROMPTS``, ``n`` images each from one seed."""
    rows = []
    for prompt in PROMPTS:
        verdict = judge_images(judge, generate_images(pipe, prompt, n, seed=seed, **kw))
        scores = metrics.prompt_fidelity(verdict, parse_prompt(prompt))
        rows.append({"prompt": prompt, **{k: round(v, 3) for k, v in scores.items()}})
    result = {"seed": seed, **{key: round(statistics.mean(r[key] for r in rows), 4)
                               for key in ("class_accuracy", "colour_accuracy")}, "prompts": rows}
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="toy", help="toy, or a folder written by `python -m helpers.pretrain`")
    parser.add_argument("--images_per_prompt", type=int, default=32)
    parser.add_argument("--seed", type=int, default=1000, help="for class prompts and unconditional samples")
    parser.add_argument("--adherence_seeds", type=int, nargs="+", default=[1000, 2000, 3000])
    parser.add_argument("--guidance_scale", type=float, default=TOY.guidance_scale)
    args = parser.parse_args()
    configure_cpu()
    pipe, judge = load_pipeline(args.model), load_judge(TOY_JUDGE)
    n, kw = args.images_per_prompt, dict(num_inference_steps=50, guidance_scale=args.guidance_scale)
    report: dict = {"images_per_prompt": n, "guidance_scale": args.guidance_scale}

    per_seed = [adherence(pipe, judge, n, seed, kw) for seed in args.adherence_seeds]
    report["adherence_per_seed"] = per_seed
    for key in ("class_accuracy", "colour_accuracy"):
        values = [row[key] for row in per_seed]
        report[key] = {"mean": round(statistics.mean(values), 4),
                       "sd": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0}

    class_rows = []
    for prompt in CLASS_PROMPTS:
        verdict = judge_images(judge, generate_images(pipe, prompt, n, seed=args.seed, **kw))
        class_rows.append({"prompt": prompt,
                           "class_accuracy": round(metrics.prompt_fidelity(verdict, parse_prompt(prompt))["class_accuracy"], 3),
                           "div": round(metrics.diversity(verdict.embeddings), 3),
                           "colours_seen": len(set(verdict.labels["colour"]))})
        print(json.dumps(class_rows[-1]), flush=True)
    report["class_prompts"] = class_rows

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
    report["judge_accuracy_on_1024_fresh_renders"] = {"rendered": judge_accuracy(judge),
                                                      "through_the_toy_vae": judge_accuracy(judge, vae=pipe.vae)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
