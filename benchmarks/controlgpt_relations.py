"""ControlGPT's relation-accuracy table over several seeds, on held-out two-object prompts.

    python benchmarks/controlgpt_relations.py --seeds 0 1 2 3 4 --count 48
    python benchmarks/controlgpt_relations.py --guidance_scale 7 --conditioning_scale 1   (another sampling recipe)

For each seed, `helpers.control.controlgpt.compare` draws the same held-out prompts three ways (plain
text-to-image, the ControlNet with each scene's true layout, and planner -> TikZ -> ControlNet)
and the toy locator scores them. Prints every seed's object and relation accuracy per method and
ControlGPT's gain over plain text-to-image in relation accuracy, then per method the mean, the
standard deviation and the worst seed, and the seconds the three methods took.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from helpers.control import controlgpt
from helpers.control.controlnet import CONDITIONING_SCALE, GUIDANCE_SCALE
from helpers.core.runtime import configure_cpu
from helpers.diffusion.profiles import TOY_CONTROLNET

KEYS = ("object_accuracy", "relation_accuracy")


def gain(row: dict) -> float:
    """ControlGPT's relation accuracy over plain text-to-image's, in points."""
    return 100 * (row["controlgpt"]["relation_accuracy"] - row["plain"]["relation_accuracy"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--count", type=int, default=48, help="held-out prompts per seed")
    parser.add_argument("--controlnet", type=Path, default=TOY_CONTROLNET)
    parser.add_argument("--planner", default="rules")
    parser.add_argument("--guidance_scale", type=float, default=GUIDANCE_SCALE)
    parser.add_argument("--conditioning_scale", type=float, default=CONDITIONING_SCALE)
    args = parser.parse_args()
    configure_cpu()
    planner = controlgpt.make_planner(args.planner)
    sampling = dict(guidance_scale=args.guidance_scale, conditioning_scale=args.conditioning_scale)
    rows = []
    print(
        f"{'seed':>4s} " + " ".join(f"{m + ' obj/rel':>28s}" for m in controlgpt.METHODS) + f" {'gain':>6s} {'s':>5s}"
    )
    for seed in args.seeds:
        start = time.perf_counter()
        row = controlgpt.evaluate(seed, args.count, args.controlnet, planner, **sampling)
        row["seconds"] = round(time.perf_counter() - start, 1)
        cells = [
            f"{100 * row[m]['object_accuracy']:5.1f} / {100 * row[m]['relation_accuracy']:5.1f} %"
            for m in controlgpt.METHODS
        ]
        print(f"{seed:4d} " + " ".join(f"{c:>28s}" for c in cells) + f" {gain(row):+6.1f} {row['seconds']:5.0f}")
        rows.append(row)
    print(
        f"\n{len(rows)} seeds x {args.count} prompts, planner {rows[0]['planner']}, guidance {args.guidance_scale}, "
        f"conditioning scale {args.conditioning_scale}"
    )
    for method in controlgpt.METHODS:
        cells = []
        for key in KEYS:
            values = [100 * r[method][key] for r in rows]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(
                f"{key.replace('_', ' ')} {statistics.mean(values):5.1f} ± {spread:4.1f} % (worst {min(values):5.1f})"
            )
        print(f"{method:24s} " + "   ".join(cells))
    gains = [gain(r) for r in rows]
    worst = min(rows, key=gain)
    print(
        f"ControlGPT - plain, relation accuracy: {statistics.mean(gains):+.1f} points on average, worst seed "
        f"{worst['seed']} {gain(worst):+.1f}; object accuracy not lower on "
        f"{sum(r['controlgpt']['object_accuracy'] >= r['plain']['object_accuracy'] for r in rows)} of {len(rows)} seeds"
    )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
