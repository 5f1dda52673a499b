"""Generate images from a prompt with the toy model, a local fine-tune or a hub model.

    python -m helpers.generate --model toy --prompt "a photo of a red dog" --num_images 8 --seed 0 --output_dir DIR

Image i is drawn from its own generator seeded with ``seed + i``, so any single image can be
reproduced alone, whatever the batch size.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from helpers.core.atomic import write_text_atomic
from helpers.core.errors import UsageError
from helpers.core.runtime import configure_cpu
from helpers.diffusion.profiles import load_pipeline, profile_for_model


def generate_images(
    pipe,
    prompt: str,
    num_images: int,
    seed: int = 0,
    num_inference_steps: int = 50,
    guidance_scale: float = 4.0,
    batch_size: int = 8,
    progress: bool = False,
    resolution: int | None = None,
    **pipe_kwargs,
) -> list[Image.Image]:
    """``num_images`` PIL images for one prompt ("" draws unconditional samples), at the model's
    own size unless ``resolution`` says otherwise; ``pipe_kwargs`` go to the pipeline as they are
    (``cross_attention_kwargs={"scale": 0.5}`` halves a LoRA's effect)."""
    device = pipe.device.type if pipe.device.type != "mps" else "cpu"
    images: list[Image.Image] = []
    starts = range(0, num_images, batch_size)
    for start in tqdm(starts, desc="generate", disable=not progress or len(starts) < 2):
        n = min(batch_size, num_images - start)
        gens = [torch.Generator(device).manual_seed(seed + start + i) for i in range(n)]
        out = pipe(
            [prompt] * n,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=gens,
            height=resolution,
            width=resolution,
            **pipe_kwargs,
        )
        images += out.images
    return images


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m helpers.generate", description="Generate images from a prompt.")
    parser.add_argument("--model", default="toy", help="toy, a local pipeline folder, or a hub id")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--num_images", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_inference_steps", type=int, default=None, help="DDIM steps (profile default: 50)")
    parser.add_argument("--guidance_scale", type=float, default=None, help="classifier-free guidance (profile default)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--output_dir", type=Path, required=True)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    if not args.prompt.strip():
        raise UsageError('the prompt is empty: pass --prompt "a photo of a red dog" or similar')
    if args.num_images < 1:
        raise UsageError(f"--num_images must be at least 1 (got {args.num_images})")
    if args.batch_size < 1:
        raise UsageError(f"--batch_size must be at least 1 (got {args.batch_size})")
    configure_cpu()
    profile = profile_for_model(args.model)
    steps = args.num_inference_steps or profile.num_inference_steps
    guidance = profile.guidance_scale if args.guidance_scale is None else args.guidance_scale
    pipe = load_pipeline(args.model, profile)
    try:
        args.output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create output folder {args.output_dir}: {err.strerror}") from None
    start = time.perf_counter()
    images = generate_images(
        pipe, args.prompt, args.num_images, args.seed, steps, guidance, args.batch_size, progress=True
    )
    seconds = time.perf_counter() - start
    for i, img in enumerate(images):
        img.save(args.output_dir / f"{i:05d}.png")
    manifest = {
        "model": args.model,
        "prompt": args.prompt,
        "seed": args.seed,
        "num_images": args.num_images,
        "num_inference_steps": steps,
        "guidance_scale": guidance,
        "scheduler": "DDIMScheduler",
        "seconds": round(seconds, 2),
    }
    write_text_atomic(args.output_dir / "generation.json", json.dumps(manifest, indent=2))
    print(f"wrote {len(images)} images to {args.output_dir} in {seconds:.1f} s")
