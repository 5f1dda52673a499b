"""ControlGPT's relation-accuracy table over several seeds, on held-out two-object prompts.

    python benchmarks/controlgpt_relations.py --seeds 0 1 2 --count 48

For each seed, `helpers.control.controlgpt.compare` draws the same held-out prompts three ways (plain
text-to-image, the ControlNet with each scene's true layout, and planner -> TikZ -> ControlNet)
and the toy locator scores them. Prints every seed, then mean ± sd per method, and the seconds
the three methods took together.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from helpers.control import controlgpt
from helpers.core.runtime import configure_cpu
from helpers.diffusion.profiles import TOY_CONTROLNET

KEYS = ("object_accuracy", "relation_accuracy")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--count", type=int, default=48, help="held-out prompts per seed")
    parser.add_argument("--controlnet", type=Path, default=TOY_CONTROLNET)
    parser.add_argument("--planner", default="rules")
    args = parser.parse_args()
    configure_cpu()
    rows = []
    for seed in args.seeds:
        start = time.perf_counter()
        table = controlgpt.evaluate(seed, args.count, args.controlnet, controlgpt.make_planner(args.planner))
        table["seconds"] = round(time.perf_counter() - start, 1)
        print(json.dumps(table))
        rows.append(table)
    print(f"\n{len(rows)} seeds x {args.count} prompts, planner {rows[0]['planner']}")
    for method in controlgpt.METHODS:
        cells = []
        for key in KEYS:
            values = [100 * r[method][key] for r in rows]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{key.replace('_', ' ')} {statistics.mean(values):5.1f} ± {spread:4.1f} %")
        print(f"{method:24s} " + "   ".join(cells))


if __name__ == "__main__":
    main()
