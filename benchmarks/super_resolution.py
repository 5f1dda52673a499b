"""The super-resolution fine-tune (DreamBooth's step b) over several seeds, on held-out views.

    python benchmarks/super_resolution.py --seeds 0 1 2

For each seed: the committed toy upscaler fine-tuned on the subject's 128 px photos, then PSNR
(whole image and emblem box) on held-out views for bicubic, the pretrained upscaler and the
fine-tuned one, with the seed also driving the samplers. Prints every seed and mean ± sd.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from helpers import upscaler
from helpers.core.images import load_image_folder
from helpers.core.paths import DATA, ROOT
from helpers.core.runtime import configure_cpu
from helpers.toy import world as toyworld


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--model", type=Path, default=DATA / "toy-upscaler")
    parser.add_argument("--subject", default="toy_dog")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--augment", type=float, default=0.25)
    parser.add_argument("--sr_steps", type=int, default=10)
    parser.add_argument("--held_out", type=int, default=12)
    parser.add_argument("--held_out_seed", type=int, default=7)
    args = parser.parse_args()
    configure_cpu()
    photos = load_image_folder(DATA / "subjects-128" / args.subject)
    held_out, boxes = upscaler.subject_views_with_boxes(
        toyworld.SUBJECTS[args.subject], args.held_out, args.held_out_seed
    )
    low = upscaler.downsample(held_out)
    base = upscaler.load_upscaler(args.model)
    rows: dict[str, list[dict]] = {"bicubic": [upscaler.score(upscaler.bicubic(low), held_out, boxes)]}
    for seed in args.seeds:
        tuned = upscaler.load_upscaler(args.model)
        fit = upscaler.finetune(
            tuned,
            photos,
            upscaler.FinetuneConfig(
                output_dir=str(ROOT / "outputs" / "benchmarks" / f"upscaler-seed{seed}"),
                max_train_steps=args.steps,
                learning_rate=args.learning_rate,
                train_batch_size=args.batch_size,
                augment=args.augment,
                seed=seed,
                progress=False,
            ),
        )
        start = time.time()
        before = upscaler.score(base(low, args.sr_steps, seed=seed), held_out, boxes)
        after = upscaler.score(tuned(low, args.sr_steps, seed=seed), held_out, boxes)
        seconds = (time.time() - start) / (2 * len(low))
        rows.setdefault("pretrained", []).append(before)
        rows.setdefault("fine-tuned", []).append(after)
        print(
            json.dumps(
                {
                    "seed": seed,
                    "pretrained": before,
                    "fine-tuned": after,
                    "finetune_seconds": round(fit.seconds, 1),
                    "seconds_per_image": round(seconds, 3),
                }
            )
        )
    for name, values in rows.items():
        cells = []
        for key in values[0]:
            xs = [v[key] for v in values]
            sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
            cells.append(f"{key} {statistics.mean(xs):.2f} ± {sd:.2f}")
        print(f"{name:12s} " + "   ".join(cells))


if __name__ == "__main__":
    main()
