"""Generate images from a prompt with a toy model, a local fine-tune or a hub model.

    python -m helpers.generate --model toy --prompt "a photo of a red dog" --num_images 8 --seed 0 --output_dir DIR
    python -m helpers.generate --model toy-flow --prompt "a photo of a red dog" --output_dir DIR  (flow matching)

Image i is drawn from its own generator seeded with ``seed + i``, so any single image can be
reproduced alone, whatever the batch size. The command writes each batch as it is drawn, so an
interrupted run keeps what it drew; ``generation.json`` lists the images of the run.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from helpers.core.atomic import save_image_atomic, write_text_atomic
from helpers.core.errors import UsageError
from helpers.core.folders import claim_output
from helpers.core.numbers import at_least, seed_in_range
from helpers.core.runtime import configure_cpu
from helpers.diffusion.profiles import load_pipeline, profile_for_model

TOOL = "helpers.generate"  # what marks the output folders this command makes (helpers.core.folders)
MANIFEST = "generation.json"
# A batch holds as many images as fit this many latent pixels: 8 at SD 1.x's 512 px (64 x 64 latents), as
# diffusers' examples draw; on the toy's 16 x 16 latents the cap, 32, where a CPU draws an image at guidance 4
# in three quarters of the time that batches of 8 take (benchmarks/generation_batch.py).
LATENT_PIXELS_PER_BATCH = 8 * 64 * 64
MAX_BATCH = 32
UNKNOWN_BATCH = 8  # a pipeline with no UNet or transformer whose latent size it could read
IMAGE_NAME = re.compile(r"\d{5}\.png")  # the names generate gives its images: 00000.png, 00001.png, ...


def default_batch_size(pipe, resolution: int | None = None) -> int:
    """How many images to draw at once: as many as fit ``LATENT_PIXELS_PER_BATCH``, at most ``MAX_BATCH``."""
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    if denoiser is None:
        return UNKNOWN_BATCH
    side = resolution // pipe.vae_scale_factor if resolution else denoiser.config.sample_size
    return max(1, min(MAX_BATCH, LATENT_PIXELS_PER_BATCH // (side * side)))


def iter_batches(
    pipe,
    prompt: str,
    num_images: int,
    seed: int = 0,
    num_inference_steps: int = 50,
    guidance_scale: float = 4.0,
    batch_size: int | None = None,
    progress: bool = False,
    resolution: int | None = None,
    desc: str = "generate (batches)",
    **pipe_kwargs,
) -> Iterator[list[Image.Image]]:
    """The images of `generate_images`, one batch at a time as each is drawn: a caller that saves
    every batch keeps what was drawn when a long run is interrupted. ``desc`` labels the progress bar.
    ``batch_size`` None: ``default_batch_size``."""
    device = pipe.device.type if pipe.device.type != "mps" else "cpu"
    batch_size = batch_size or default_batch_size(pipe, resolution)
    starts = range(0, num_images, batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress or len(starts) < 2):
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
        yield out.images


def generate_images(
    pipe,
    prompt: str,
    num_images: int,
    seed: int = 0,
    num_inference_steps: int = 50,
    guidance_scale: float = 4.0,
    batch_size: int | None = None,
    progress: bool = False,
    resolution: int | None = None,
    **pipe_kwargs,
) -> list[Image.Image]:
    """``num_images`` PIL images for one prompt ("" draws unconditional samples), at the model's
    own size unless ``resolution`` says otherwise; ``pipe_kwargs`` go to the pipeline as they are
    (``cross_attention_kwargs={"scale": 0.5}`` halves a LoRA's effect)."""
    batches = iter_batches(
        pipe,
        prompt,
        num_images,
        seed,
        num_inference_steps,
        guidance_scale,
        batch_size,
        progress,
        resolution,
        **pipe_kwargs,
    )
    return [image for batch in batches for image in batch]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m helpers.generate", description="Generate images from a prompt.")
    parser.add_argument("--model", default="toy", help="toy, toy-flow, a local pipeline folder, or a hub id")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--num_images", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--num_inference_steps",
        type=int,
        default=None,
        help="sampling steps (profile default: 50 DDIM for SD 1.x, 28 Euler for flow matching)",
    )
    parser.add_argument("--guidance_scale", type=float, default=None, help="classifier-free guidance (profile default)")
    parser.add_argument(
        "--batch_size",
        type=int,
        default=None,
        help="images drawn at once (default: 8 at SD 1.x's 512 px, 32 on the toy)",
    )
    parser.add_argument("--output_dir", type=Path, required=True)
    return parser.parse_args(argv)


def _check(args: argparse.Namespace) -> None:
    """One line for each input that cannot work, before the output folder or the model is touched:
    argparse's float takes inf and nan, and diffusers' pipelines take a step count below 1 and draw noise.
    A guidance scale of 1 or less is allowed: diffusers' pipelines then draw without classifier-free guidance."""
    if not args.prompt.strip():
        raise UsageError('the prompt is empty: pass --prompt "a photo of a red dog" or similar')
    at_least("--num_images", args.num_images, 1)
    at_least("--batch_size", args.batch_size, 1)
    at_least("--num_inference_steps", args.num_inference_steps, 1, "pass e.g. 50, or leave it out for the default")
    at_least("--guidance_scale", args.guidance_scale, 0, "pass e.g. 7.5, or 1 for no classifier-free guidance")
    seed_in_range("--seed", args.seed)


def _remove_earlier_images(out: Path) -> None:
    """Delete the images that an earlier run into ``out`` listed in its manifest, so that none mixes in
    with this run's (a run of 8 after one of 10 would leave 00008.png and 00009.png); anything else in
    the folder stays."""
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):  # no earlier run, or a manifest that is not JSON: nothing is known to be ours
        return
    listed = manifest.get("files", []) if isinstance(manifest, dict) else []
    for name in listed:
        if isinstance(name, str) and IMAGE_NAME.fullmatch(name):
            (out / name).unlink(missing_ok=True)


def _write_manifest(out: Path, manifest: dict) -> None:
    write_text_atomic(out / MANIFEST, json.dumps(manifest, indent=2))


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    _check(args)
    configure_cpu()
    profile = profile_for_model(args.model)  # a wrong --model is one line before the folder is touched
    steps = profile.num_inference_steps if args.num_inference_steps is None else args.num_inference_steps
    guidance = profile.guidance_scale if args.guidance_scale is None else args.guidance_scale
    out = claim_output(args.output_dir, TOOL)
    pipe = load_pipeline(args.model, profile)
    _remove_earlier_images(out)
    manifest = {
        "model": args.model,
        "prompt": args.prompt,
        "seed": args.seed,
        "num_images": args.num_images,
        "num_inference_steps": steps,
        "guidance_scale": guidance,
        "scheduler": type(pipe.scheduler).__name__,
        "files": [],
        "complete": False,
    }
    _write_manifest(out, manifest)
    start = time.perf_counter()
    batches = iter_batches(
        pipe, args.prompt, args.num_images, args.seed, steps, guidance, args.batch_size, True, **profile.pipeline_kwargs
    )
    for batch in batches:
        names = [f"{len(manifest['files']) + k:05d}.png" for k in range(len(batch))]
        manifest["files"] += names
        _write_manifest(out, manifest)  # listed before they are written: a re-run finds every image this run made
        for name, image in zip(names, batch):
            save_image_atomic(image, out / name)
    seconds = time.perf_counter() - start
    _write_manifest(out, manifest | {"complete": True, "seconds": round(seconds, 2)})
    print(f"wrote {args.num_images} images to {args.output_dir} in {seconds:.1f} s")
