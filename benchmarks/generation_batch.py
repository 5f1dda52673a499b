"""Milliseconds per image drawn by the toy model, by batch size, with and without guidance.

    python benchmarks/generation_batch.py [--images 32] [--batch_sizes 8 16 32]

The batch ``helpers.diffusion.generate`` picks when none is given (``default_batch_size``) comes from
these figures: on a CPU the toy's small latents leave the cores idle in batches of 8. Each image has its
own generator (seed + i), so the images are the same whatever the batch size.
"""

from __future__ import annotations

import argparse
import time

from helpers.core.runtime import configure_cpu
from helpers.diffusion.generate import default_batch_size, generate_images
from helpers.diffusion.profiles import TOY, load_pipeline


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[8, 16, 32])
    args = parser.parse_args()
    configure_cpu()
    pipe = load_pipeline("toy")
    generate_images(pipe, "a photo of dog", 2, num_inference_steps=2)  # warm-up
    print(f"the default batch on the toy: {default_batch_size(pipe)}")
    print(f"{'batch':>6s}" + "".join(f"{f'guidance {g:g}, {TOY.num_inference_steps} steps':>26s}" for g in (1.0, 4.0)))
    for size in args.batch_sizes:
        cells = []
        for guidance in (1.0, 4.0):
            start = time.perf_counter()
            generate_images(
                pipe,
                "a photo of dog",
                args.images,
                num_inference_steps=TOY.num_inference_steps,
                guidance_scale=guidance,
                batch_size=size,
            )
            cells.append(f"{(time.perf_counter() - start) / args.images * 1e3:21.0f} ms")
        print(f"{size:6d}" + "".join(f"{c:>26s}" for c in cells))


if __name__ == "__main__":
    main()
