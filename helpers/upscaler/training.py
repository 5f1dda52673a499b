"""Pretraining on fresh toy scenes, and the paper's step (b): fine-tuning on a subject's photos."""

from __future__ import annotations

import dataclasses
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import UNet2DModel
from PIL import Image
from torch.nn import functional as F
from tqdm.auto import tqdm

from helpers.core.errors import UsageError
from helpers.core.folders import claim_output
from helpers.core.numbers import at_least
from helpers.toy import world as toyworld
from helpers.training.loop import (
    Hooks,
    finish,
    make_accelerator,
    pretrained_checkpoints,
    resolve_resume,
    resume,
    run_loop,
    step_generator,
)
from helpers.training.optim import torch_adamw
from helpers.training.settings import LoopSettings
from helpers.upscaler.model import HIGH, RESIDUAL_SCALE, ToyUpscalePipeline, condition, downsample, to_tensor

TOOL = "helpers.upscaler"  # what marks the folders of `pretrain` and `finetune` (helpers.core.folders)
MAX_BLUR, MAX_NOISE = 1.0, 0.04  # pretraining's conditioning augmentation: blur sigma (px), noise std


def world_images(seed: int, count: int, emblem_prob: float = 0.8) -> list[Image.Image]:
    """Fresh 128 px toy scenes whose instances carry random emblems (the world at large)."""
    out = []
    for s in range(seed, seed + count):
        rng = random.Random(s)
        sample = toyworld.random_sample(s)
        objects = tuple(
            dataclasses.replace(
                p,
                instance=dataclasses.replace(
                    p.instance,
                    emblem=rng.choice(toyworld.EMBLEMS) if rng.random() < emblem_prob else "",
                    emblem_colour=rng.choice(toyworld.COLOUR_NAMES),
                ),
            )
            for p in sample.scene.objects
        )
        out.append(toyworld.render(dataclasses.replace(sample.scene, objects=objects), HIGH, s, detail=True))
    return out


def degrade(
    low: torch.Tensor, gen: torch.Generator, max_blur: float = MAX_BLUR, max_noise: float = MAX_NOISE
) -> torch.Tensor:
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
        k = torch.exp(-(taps**2) / (2 * sigma**2))
        k = (k / k.sum()).to(low.dtype)
        x = F.pad(img[:, None], (2, 2, 2, 2), mode="replicate")
        x = F.conv2d(F.conv2d(x, k.view(1, 1, 1, 5)), k.view(1, 1, 5, 1))
        out.append(x[:, 0])
    noise = torch.randn(low.shape, generator=gen) * (torch.rand(n, 1, 1, 1, generator=gen) * max_noise)
    return (torch.stack(out) + noise).clamp(-1, 1)


def _crops(
    high: torch.Tensor, cond: torch.Tensor, size: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random crop (and horizontal flip) of each target and its condition."""
    n = len(high)
    ys = torch.randint(0, HIGH - size + 1, (n,), generator=gen)
    xs = torch.randint(0, HIGH - size + 1, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    hs, cs = [], []
    for i in range(n):
        h = high[i, :, ys[i] : ys[i] + size, xs[i] : xs[i] + size]
        c = cond[i, :, ys[i] : ys[i] + size, xs[i] : xs[i] + size]
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


def _optimizer(unet: UNet2DModel, learning_rate: float, steps: int, device: torch.device):
    """AdamW with a linear warm-up, then a cosine down to a tenth: pretraining's and fine-tuning's."""
    opt = torch_adamw(unet.parameters(), device, lr=learning_rate, weight_decay=1e-2)
    warmup = max(1, steps // 20)
    return opt, torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * s / steps)))
    )


def pretrain(
    pipe: ToyUpscalePipeline,
    steps: int,
    learning_rate: float,
    batch_size: int = 8,
    crop: int = 64,
    seed: int = 0,
    world_seed: int = 0,
    progress: bool = True,
) -> FitResult:
    """Pretrain the upscaler on fresh toy scenes: every step renders new ones (from ``world_seed``),
    so the model never sees a scene twice; crops and augmentation draw from ``seed``. Random crops
    keep steps cheap; the UNet is convolutional, so it upscales whole images after. Low-resolution
    inputs are `degrade`d by a random amount.

    A plain loop, not the trainers' shared one: tooling that runs once, to make the shipped model
    (``data/toy-upscaler``), whose card records the command; the fine-tune a learner runs is `finetune`."""
    gen = torch.Generator("cpu").manual_seed(seed)
    opt, sched = _optimizer(pipe.unet, learning_rate, steps, pipe.unet.device)
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
class FinetuneConfig(LoopSettings):
    """The paper's step (b): fine-tune on the subject's own 128 px photos. The loop's settings are the
    DreamBooth and ControlNet trainers' (diffusers' names), with this fine-tune's defaults."""

    max_train_steps: int = 150
    learning_rate: float = 1e-3
    train_batch_size: int = 4
    checkpointing_steps: int = 50
    checkpoints_total_limit: int | None = 1
    logging_steps: int = 25
    augment: float = 0.25  # conditioning augmentation, as a fraction of pretraining's (the paper keeps it low)
    crop: int = 64

    def check(self) -> None:
        """Numbers that cannot work end in one line before any step: an infinite learning rate would
        train an upscaler of NaNs, a crop beyond the photo fails deep in torch."""
        super().check()
        at_least("--augment", self.augment, 0, "pass 0 for no augmentation, or a fraction of pretraining's like 0.25")
        if not 8 <= self.crop <= HIGH or self.crop % 8:
            raise UsageError(f"crop must be a multiple of 8 from 8 to {HIGH} (got {self.crop}): pass e.g. 64")


def finetune(pipe: ToyUpscalePipeline, images: list[Image.Image], config: FinetuneConfig) -> FitResult:
    """Fine-tune ``pipe`` in place on (downsampled, original) pairs of ``images``, on the trainers'
    shared loop (``helpers.training.loop``): checkpoints in ``config.output_dir``, ``latest``
    resume, a progress bar. Every random draw of a step comes from (seed, step), so a resumed run
    ends as an uninterrupted one. Conditioning augmentation is ``config.augment`` times
    pretraining's, so that the upscaler keeps the photos' own fine detail."""
    config.check()
    resolve_resume(Path(config.output_dir), config.resume_from_checkpoint, config.max_train_steps)  # before work
    wrong = sorted({i.size for i in images if i.size != (HIGH, HIGH)})
    if wrong:
        raise UsageError(
            f"upscaler training photos must be {HIGH}x{HIGH} (the output size); got "
            f"{', '.join(f'{w}x{h}' for w, h in wrong)}"
        )
    claim_output(config.output_dir, TOOL)  # its checkpoints go there: a folder of the learner's is refused
    high_all, low_all = to_tensor(images), to_tensor(downsample(images))
    output_dir = Path(config.output_dir)
    acc = make_accelerator(output_dir, config.gradient_accumulation_steps, "no")
    opt, sched = _optimizer(pipe.unet, config.learning_rate, config.max_train_steps, acc.device)
    unet, opt, sched = acc.prepare(pipe.unet, opt, sched)
    pretrained_checkpoints(acc, {"unet": acc.unwrap_model(unet)})
    start_step = resume(acc, output_dir, config.resume_from_checkpoint)

    def step_loss(step: int, micro: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        gen = step_generator(config.seed, step, micro, acc.process_index)
        idx = torch.randint(0, len(images), (config.train_batch_size,), generator=gen)
        low = degrade(low_all[idx], gen, max_blur=config.augment * MAX_BLUR, max_noise=config.augment * MAX_NOISE)
        high, cond = _crops(high_all[idx], condition(low), config.crop, gen)
        return loss_on(pipe, high, cond, gen), {}

    unet.train()
    history, seconds = run_loop(acc, output_dir, [unet], opt, sched, step_loss, config, start_step, Hooks("upscaler"))
    unet.eval()
    finish(acc)
    return FitResult([h["loss"] for h in history], seconds)
