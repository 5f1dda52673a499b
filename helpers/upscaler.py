"""A toy cascaded-diffusion super-resolution stage: 64 px in, 128 px out, in pixel space.

DreamBooth's base models (Imagen in the paper) draw small images and hand them to a diffusion
upscaler. An upscaler trained on the world at large turns a blur into *some* plausible detail; the
paper's step (b) fine-tunes it on low/high-resolution pairs of the subject's own photos so that
*its* details (an emblem, a texture) come back. This module is that stage for the toy world: a
`UNet2DModel` that denoises the 128 px image while seeing the bicubic-upsampled 64 px image as
three extra input channels, as SR3 and Imagen's super-resolution models do. It denoises the
difference from that bicubic image (the detail), not the whole image, as SRDiff does.

    python -m helpers.upscaler pretrain --output data/toy-upscaler
    python -m helpers.upscaler finetune --model data/toy-upscaler --instance_data_dir DIR --output_dir OUT
    python -m helpers.upscaler upscale  --model OUT --images DIR --output_dir UP
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DiffusionPipeline, UNet2DModel
from PIL import Image
from torch.nn import functional as F
from tqdm.auto import tqdm

from helpers import toyworld
from helpers.atomic import replace_dir_atomic, write_text_atomic
from helpers.cli import run_main
from helpers.errors import UsageError
from helpers.data import load_image_folder
from helpers.runtime import configure_cpu
from helpers.training_loop import HISTORY, LoopSettings, finish, make_accelerator, resume, run_loop, step_generator
from helpers.paths import DATA

LOW, HIGH = 64, 128
STAGES = "stages.json"
# The model draws only what bicubic upsampling misses: x0 = (high - bicubic(low)) * RESIDUAL_SCALE.
# That residual is small (std 0.05 on [-1, 1] pixels), so it is scaled toward unit size, as SD
# scales its latents; an imperfect denoiser then leaves a faint grain, not a noisy image.
RESIDUAL_SCALE = 4.0
MAX_BLUR, MAX_NOISE = 1.0, 0.04  # pretraining's conditioning augmentation: blur sigma (px), noise std


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """PIL images -> (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.stack([np.asarray(i, dtype=np.float32) for i in images])).permute(0, 3, 1, 2) / 127.5 - 1


def to_images(x: torch.Tensor) -> list[Image.Image]:
    """(N, 3, H, W) in [-1, 1] -> PIL images."""
    arr = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


def downsample(images: list[Image.Image]) -> list[Image.Image]:
    """The low-resolution half of a training pair: a box filter, like a camera's larger pixels."""
    return [i.resize((LOW, LOW), Image.Resampling.BOX) for i in images]


def condition(low: torch.Tensor) -> torch.Tensor:
    """The upscaler's view of the low-resolution image: bicubic-upsampled to the output size."""
    return F.interpolate(low, scale_factor=HIGH // LOW, mode="bicubic", align_corners=False).clamp(-1, 1)


def check_sizes(images: list[Image.Image]) -> None:
    """One line that names the wrong sizes, before any work is done on them."""
    wrong = sorted({i.size for i in images if i.size != (LOW, LOW)})
    if wrong:
        raise UsageError(f"the upscaler takes {LOW}x{LOW} images and makes {HIGH}x{HIGH}; got "
                         f"{', '.join(f'{w}x{h}' for w, h in wrong)}: resize to {LOW}x{LOW} first "
                         f"(image.resize(({LOW}, {LOW})))")


class ToyUpscalePipeline(DiffusionPipeline):
    """Pixel-space diffusion upscaler: low-resolution images in, images twice the size out."""

    def __init__(self, unet: UNet2DModel, scheduler: DDPMScheduler) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @torch.no_grad()
    def __call__(self, images: list[Image.Image], num_inference_steps: int = 10, seed: int = 0,
                 progress: bool = False) -> list[Image.Image]:
        check_sizes(images)
        cond = condition(to_tensor(images)).to(self.device)
        sampler = DDIMScheduler.from_config(self.scheduler.config)
        sampler.set_timesteps(num_inference_steps)
        generator = torch.Generator("cpu").manual_seed(seed)
        x = torch.randn(cond.shape, generator=generator).to(self.device)
        for t in tqdm(sampler.timesteps, desc="upscaling", disable=not progress):
            pred = self.unet(torch.cat([x, cond], dim=1), t).sample
            x = sampler.step(pred, t, x).prev_sample
        return to_images(cond + x / RESIDUAL_SCALE)


def build_upscaler(channels: tuple[int, ...] = (16, 32, 64)) -> ToyUpscalePipeline:
    """A fresh, randomly initialised upscaler: no attention (the detail is local), v-prediction."""
    unet = UNet2DModel(sample_size=HIGH, in_channels=6, out_channels=3, layers_per_block=1,
                       block_out_channels=channels, down_block_types=("DownBlock2D",) * len(channels),
                       up_block_types=("UpBlock2D",) * len(channels), add_attention=False, norm_num_groups=8)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                              prediction_type="v_prediction", clip_sample=False)
    return ToyUpscalePipeline(unet, scheduler)


def load_upscaler(path: str | Path) -> ToyUpscalePipeline:
    """A saved upscaler, or one line saying the folder holds none."""
    path = Path(path).expanduser()
    if not (path / "model_index.json").exists():
        raise UsageError(f"no upscaler in {str(path)!r}: pass the folder that `python -m helpers.upscaler "
                         f"pretrain` or `finetune` wrote (data/toy-upscaler is the course's)")
    return ToyUpscalePipeline.from_pretrained(path)


# --------------------------------------------------------------------------- training data

def world_images(seed: int, count: int, emblem_prob: float = 0.8) -> list[Image.Image]:
    """Fresh 128 px toy scenes whose instances carry random emblems (the world at large)."""
    out = []
    for s in range(seed, seed + count):
        rng = random.Random(s)
        sample = toyworld.random_sample(s)
        objects = tuple(dataclasses.replace(p, instance=dataclasses.replace(
            p.instance, emblem=rng.choice(toyworld.EMBLEMS) if rng.random() < emblem_prob else "",
            emblem_colour=rng.choice(toyworld.COLOUR_NAMES))) for p in sample.scene.objects)
        out.append(toyworld.render(dataclasses.replace(sample.scene, objects=objects), HIGH, s, detail=True))
    return out


def degrade(low: torch.Tensor, gen: torch.Generator, max_blur: float = MAX_BLUR,
            max_noise: float = MAX_NOISE) -> torch.Tensor:
    """Conditioning augmentation (Ho et al.'s cascaded diffusion): blur and noise the low-resolution
    input by a random amount per image, so that the upscaler also sharpens the softer images a base
    model draws, not only cleanly shrunk photos."""
    n = len(low)
    sigmas = torch.rand(n, generator=gen) * max_blur
    taps = torch.arange(-2, 3, dtype=low.dtype)
    out = []
    for img, sigma in zip(low, sigmas):
        if sigma < 0.1:
            out.append(img)
            continue
        k = torch.exp(-taps ** 2 / (2 * sigma ** 2))
        k = (k / k.sum()).to(low.dtype)
        x = F.pad(img[:, None], (2, 2, 2, 2), mode="replicate")
        x = F.conv2d(F.conv2d(x, k.view(1, 1, 1, 5)), k.view(1, 1, 5, 1))
        out.append(x[:, 0])
    noise = torch.randn(low.shape, generator=gen) * (torch.rand(n, 1, 1, 1, generator=gen) * max_noise)
    return (torch.stack(out) + noise).clamp(-1, 1)


def _crops(high: torch.Tensor, cond: torch.Tensor, size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random crop (and horizontal flip) of each target and its condition."""
    n = len(high)
    ys = torch.randint(0, HIGH - size + 1, (n,), generator=gen)
    xs = torch.randint(0, HIGH - size + 1, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    hs, cs = [], []
    for i in range(n):
        h = high[i, :, ys[i]:ys[i] + size, xs[i]:xs[i] + size]
        c = cond[i, :, ys[i]:ys[i] + size, xs[i]:xs[i] + size]
        hs.append(h.flip(-1) if flip[i] else h)
        cs.append(c.flip(-1) if flip[i] else c)
    return torch.stack(hs), torch.stack(cs)


def loss_on(pipe: ToyUpscalePipeline, high: torch.Tensor, cond: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The diffusion loss of SD's trainers on the scaled residual, with the condition concatenated."""
    sched = pipe.scheduler
    x0 = (high - cond) * RESIDUAL_SCALE
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.randint(0, sched.config.num_train_timesteps, (len(x0),), generator=gen)
    noisy = sched.add_noise(x0, noise, t)
    target = sched.get_velocity(x0, noise, t) if sched.config.prediction_type == "v_prediction" else noise
    pred = pipe.unet(torch.cat([noisy, cond], dim=1), t).sample
    return F.mse_loss(pred, target)


@dataclasses.dataclass
class FitResult:
    """What a training run reports: the loss of every step, and the wall time."""

    losses: list[float]
    seconds: float


def _optimizer(unet: UNet2DModel, learning_rate: float, steps: int):
    """AdamW with a linear warm-up, then a cosine down to a tenth: pretraining's and fine-tuning's."""
    opt = torch.optim.AdamW(unet.parameters(), lr=learning_rate, weight_decay=1e-2)
    warmup = max(1, steps // 20)
    return opt, torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * s / steps))))


def fit(pipe: ToyUpscalePipeline, steps: int, learning_rate: float, batch_size: int = 8, crop: int = 64,
        seed: int = 0, world_seed: int = 0, progress: bool = True) -> FitResult:
    """Pretrain the upscaler on fresh toy scenes: every step renders new ones (from ``world_seed``),
    so the model never sees a scene twice; crops and augmentation draw from ``seed``. Random crops keep steps cheap; the UNet is convolutional,
    so it upscales whole images after. Low-resolution inputs are `degrade`d by a random amount.

    A plain loop, not the trainers' shared one: it runs once, to make the committed model, whose
    card records the command; the fine-tune a learner runs is `finetune`."""
    gen = torch.Generator("cpu").manual_seed(seed)
    opt, sched = _optimizer(pipe.unet, learning_rate, steps)
    pipe.unet.train()
    losses, start = [], time.time()
    for step in (bar := tqdm(range(steps), desc="upscaler", disable=not progress)):
        batch = world_images(world_seed + step * batch_size, batch_size)
        high, low = to_tensor(batch), to_tensor(downsample(batch))
        high, cond = _crops(high, condition(degrade(low, gen)), crop, gen)
        loss = loss_on(pipe, high, cond, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(pipe.unet.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 25 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-25:]):.4f}")
    pipe.unet.eval()
    return FitResult(losses, time.time() - start)


@dataclasses.dataclass(kw_only=True)
class FinetuneConfig:
    """The paper's step (b): fine-tune on the subject's own 128 px photos. The checkpoint flags are
    the DreamBooth and ControlNet trainers' (diffusers' names)."""

    output_dir: str
    max_train_steps: int = 150
    learning_rate: float = 1e-3
    train_batch_size: int = 4
    augment: float = 0.25  # conditioning augmentation, as a fraction of pretraining's (the paper keeps it low)
    crop: int = 64
    checkpointing_steps: int = 50
    checkpoints_total_limit: int | None = 1
    resume_from_checkpoint: str | None = None
    seed: int = 0
    progress: bool = True


def finetune(pipe: ToyUpscalePipeline, images: list[Image.Image], config: FinetuneConfig) -> FitResult:
    """Fine-tune ``pipe`` in place on (downsampled, original) pairs of ``images``, on the trainers'
    shared loop (``helpers.training_loop``): checkpoints in ``config.output_dir``, ``latest``
    resume, a progress bar. Every random draw of a step comes from (seed, step), so a resumed run
    ends as an uninterrupted one. Conditioning augmentation is ``config.augment`` times
    pretraining's, so that the upscaler keeps the photos' own fine detail."""
    wrong = sorted({i.size for i in images if i.size != (HIGH, HIGH)})
    if wrong:
        raise UsageError(f"upscaler training photos must be {HIGH}x{HIGH} (the output size); got "
                         f"{', '.join(f'{w}x{h}' for w, h in wrong)}")
    high_all, low_all = to_tensor(images), to_tensor(downsample(images))
    output_dir = Path(config.output_dir)
    acc = make_accelerator(output_dir, 1, "no")
    opt, sched = _optimizer(pipe.unet, config.learning_rate, config.max_train_steps)
    unet, opt, sched = acc.prepare(pipe.unet, opt, sched)
    start_step = resume(acc, output_dir, config.resume_from_checkpoint)

    def step_loss(step: int, micro: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        gen = step_generator(config.seed, step, micro, acc.process_index)
        idx = torch.randint(0, len(images), (config.train_batch_size,), generator=gen)
        low = degrade(low_all[idx], gen, max_blur=config.augment * MAX_BLUR, max_noise=config.augment * MAX_NOISE)
        high, cond = _crops(high_all[idx], condition(low), config.crop, gen)
        return loss_on(pipe, high, cond, gen), {}

    unet.train()
    settings = LoopSettings(config.max_train_steps, checkpointing_steps=config.checkpointing_steps,
                            checkpoints_total_limit=config.checkpoints_total_limit, logging_steps=25,
                            progress=config.progress, desc="upscaler")
    history, seconds = run_loop(acc, output_dir, [unet], opt, sched, step_loss, settings, start_step)
    unet.eval()
    finish(acc)
    return FitResult([h["loss"] for h in history], seconds)


# --------------------------------------------------------------------------- evaluation

def psnr(a: list[Image.Image], b: list[Image.Image], box: tuple[int, int, int, int] | None = None) -> float:
    """Mean peak signal-to-noise ratio in dB between paired images (optionally inside one crop box)."""
    vals = []
    for x, y in zip(a, b, strict=True):
        if box is not None:
            x, y = x.crop(box), y.crop(box)
        mse = np.mean((np.asarray(x, dtype=np.float64) - np.asarray(y, dtype=np.float64)) ** 2)
        vals.append(10 * np.log10(255.0 ** 2 / max(mse, 1e-10)))
    return float(np.mean(vals))


def bicubic(images: list[Image.Image]) -> list[Image.Image]:
    """The non-learned baseline every upscaler must beat."""
    return to_images(condition(to_tensor(images)))


def subject_views_with_boxes(instance: toyworld.Instance, count: int,
                             seed: int) -> tuple[list[Image.Image], list[tuple[int, int, int, int]]]:
    """128 px renders of a toy subject in new scenes, with each emblem's box (held-out views for metrics)."""
    scenes = toyworld.subject_scenes(instance, count, seed)
    images = toyworld.subject_views(instance, count, seed, size=HIGH, detail=True)
    return images, [toyworld.emblem_box(s.objects[0], HIGH) for s in scenes]


def score(upscaled: list[Image.Image], originals: list[Image.Image],
          boxes: list[tuple[int, int, int, int]]) -> dict[str, float]:
    """PSNR over the whole image and over the emblem alone, where the fine detail lives."""
    return {"PSNR (dB)": psnr(upscaled, originals),
            "emblem PSNR (dB)": float(np.mean([psnr([u], [o], b) for u, o, b in zip(upscaled, originals, boxes)]))}


# --------------------------------------------------------------------------- saving and the command line

def save(pipe: ToyUpscalePipeline, output: str | Path, stages: list[dict]) -> Path:
    """Write the pipeline, its training history and a model card; the old folder survives a crash."""
    output = Path(output).expanduser().resolve()
    build = output.with_name(f".{output.name}.build")
    pipe.save_pretrained(build, safe_serialization=True)
    write_text_atomic(build / STAGES, json.dumps(stages, indent=2))
    write_text_atomic(build / "README.md", _model_card(stages))
    for kept in [*output.glob("checkpoint-*"), output / HISTORY]:  # a fine-tune's, beside the model it made
        if kept.exists():
            os.replace(kept, build / kept.name)
    replace_dir_atomic(build, output)
    return output


def _model_card(stages: list[dict]) -> str:
    rows = "\n".join(f"| {s['stage']} | `{s['command']}` | {s['steps']} | {s['batch_size']} | {s['seed']} | "
                     f"{s['seconds']} s | {s['final_loss']:.4f} |" for s in stages)
    return f"""---
library_name: diffusers
tags: [super-resolution, toy, education]
---
# Toy diffusion upscaler ({LOW} px -> {HIGH} px, CPU)

A pixel-space `UNet2DModel` (v-prediction, cosine noise schedule) that sees the bicubic-upsampled
{LOW} px image as three extra input channels and denoises the {HIGH} px detail that bicubic
misses (the residual, times {RESIDUAL_SCALE}): the super-resolution stage of a cascaded model, for
the course's toy world. Trained on random 64 px crops of {HIGH} px toy scenes whose objects
carry small emblems that {LOW} px cannot hold, with conditioning augmentation (each low-resolution
input blurred by up to {MAX_BLUR} px and noised by up to {MAX_NOISE} std, at random); sampled with
10 DDIM steps.

| stage | command | steps | batch | seed | wall time | final loss |
|---|---|---|---|---|---|---|
{rows}

Load it with `helpers.upscaler.load_upscaler(path)` (a `ToyUpscalePipeline`, a `DiffusionPipeline`).
"""


def _stages_of(model: Path) -> list[dict]:
    path = model / STAGES
    return json.loads(path.read_text()) if path.exists() else []


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m helpers.upscaler", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    pre = sub.add_parser("pretrain", help="train from scratch on fresh toy scenes")
    pre.add_argument("--output", type=Path, default=DATA / "toy-upscaler")
    pre.add_argument("--max_train_steps", type=int, default=2000)
    pre.add_argument("--learning_rate", type=float, default=1e-3)
    pre.add_argument("--train_batch_size", type=int, default=16)
    pre.add_argument("--seed", type=int, default=0)
    fine = sub.add_parser("finetune", help="fine-tune on a subject's 128 px photos (DreamBooth step b)")
    fine.add_argument("--model", type=Path, default=DATA / "toy-upscaler")
    fine.add_argument("--instance_data_dir", type=Path, required=True)
    fine.add_argument("--output_dir", type=Path, required=True)
    fine.add_argument("--max_train_steps", type=int, default=150)
    fine.add_argument("--learning_rate", type=float, default=1e-3)
    fine.add_argument("--train_batch_size", type=int, default=4)
    fine.add_argument("--augment", type=float, default=0.25,
                      help="conditioning augmentation, as a fraction of pretraining's (the paper keeps it low)")
    fine.add_argument("--checkpointing_steps", type=int, default=50)
    fine.add_argument("--checkpoints_total_limit", type=int, default=1)
    fine.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint-N folder or 'latest'")
    fine.add_argument("--seed", type=int, default=0)
    up = sub.add_parser("upscale", help=f"upscale a folder of {LOW} px images to {HIGH} px")
    up.add_argument("--model", type=Path, default=DATA / "toy-upscaler")
    up.add_argument("--images", type=Path, required=True)
    up.add_argument("--output_dir", type=Path, required=True)
    up.add_argument("--num_inference_steps", type=int, default=10)
    up.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(argv)
    configure_cpu()
    command = "python -m helpers.upscaler " + " ".join(shlex.quote(a) for a in argv)
    if args.command == "upscale":
        images = load_image_folder(args.images)
        check_sizes(images)
        out = load_upscaler(args.model)(images, args.num_inference_steps, seed=args.seed, progress=True)
        args.output_dir.mkdir(parents=True, exist_ok=True)
        for k, img in enumerate(out):
            img.save(args.output_dir / f"{k:04d}.png")
        print(json.dumps({"images": len(out), "output_dir": str(args.output_dir)}))
        return
    if args.command == "pretrain":
        torch.manual_seed(args.seed)
        pipe, stages = build_upscaler(), []
        result = fit(pipe, args.max_train_steps, args.learning_rate, args.train_batch_size, seed=args.seed,
                     world_seed=1_000_000 * (args.seed + 1))
    else:
        pipe, stages = load_upscaler(args.model), _stages_of(args.model)
        config = FinetuneConfig(output_dir=str(args.output_dir), max_train_steps=args.max_train_steps,
                                learning_rate=args.learning_rate, train_batch_size=args.train_batch_size,
                                augment=args.augment, checkpointing_steps=args.checkpointing_steps,
                                checkpoints_total_limit=args.checkpoints_total_limit,
                                resume_from_checkpoint=args.resume_from_checkpoint, seed=args.seed)
        result = finetune(pipe, load_image_folder(args.instance_data_dir), config)
    stages.append({"stage": args.command, "command": command, "steps": args.max_train_steps,
                   "batch_size": args.train_batch_size, "seed": args.seed, "seconds": round(result.seconds, 1),
                   "final_loss": float(np.mean(result.losses[-50:]))})
    out = save(pipe, args.output if args.command == "pretrain" else args.output_dir, stages)
    print(json.dumps(stages[-1] | {"output": str(out)}))


if __name__ == "__main__":
    run_main(main)
