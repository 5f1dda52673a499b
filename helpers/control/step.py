"""ControlNet's training step, as functions that notebook 09 runs by hand and the trainer runs in its loop.

One step of ``helpers.control.trainer`` is exactly this:

1. ``draw_batch``: which rows, which captions are blanked (for classifier-free guidance), the noise and
   the timesteps, all from one generator (the trainer seeds one per step);
2. ``residuals``: the ControlNet reads the noisy latents, the caption and the condition image, and
   returns one residual per skip connection of the UNet's encoder and one for its middle block;
3. the frozen UNet predicts with those residuals added (``unet_with_residuals`` writes out where), and
   the loss is the ordinary denoising MSE (``controlnet_step``).

The residuals come out of zero convolutions, so at step 0 every one is exactly zero and the UNet's
prediction is the base model's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from helpers.control.dataset import Entry
from helpers.training.loop import denoising_target

Rows = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # latents, caption encodings, condition images


@dataclass
class ControlNetModels:
    """The trained ControlNet and the UNet it steers (frozen, or with its decoder unlocked)."""

    controlnet: torch.nn.Module
    unet: torch.nn.Module
    weight_dtype: torch.dtype = torch.float32  # the frozen UNet's (fp16 on a GPU)

    @property
    def device(self) -> torch.device:
        return next(self.controlnet.parameters()).device


@dataclass
class ControlNetData:
    """The dataset as a step reads it: every row encoded once when it fits in memory (``latents``,
    ``embeddings`` and ``conditions`` set), or ``encode`` called on each batch's rows."""

    entries: list[Entry]
    empty: torch.Tensor  # the encoding of the empty caption, for the blanked rows
    latents: torch.Tensor | None = None
    embeddings: torch.Tensor | None = None
    conditions: torch.Tensor | None = None
    encode: Callable[[list[Entry]], Rows] | None = None

    def rows(self, idx: torch.Tensor) -> Rows:
        if self.latents is not None:
            return self.latents[idx], self.embeddings[idx], self.conditions[idx]
        return self.encode([self.entries[i] for i in idx.tolist()])


@dataclass
class ControlBatch:
    index: torch.Tensor  # which rows
    latents: torch.Tensor
    embeddings: torch.Tensor  # the captions', with the blanked ones replaced by the empty caption's
    conditions: torch.Tensor  # the condition images, RGB in [0, 1]
    noise: torch.Tensor
    timesteps: torch.Tensor


def draw_batch(
    data: ControlNetData,
    batch_size: int,
    proportion_empty_prompts: float,
    generator: torch.Generator,
    num_train_timesteps: int,
) -> ControlBatch:
    """``batch_size`` random rows, a share of their captions blanked, their noise and timesteps, in that
    order from ``generator``."""
    idx = torch.randint(0, len(data.entries), (batch_size,), generator=generator)
    latents, embeddings, conditions = data.rows(idx)
    empty = torch.rand(len(idx), generator=generator) < proportion_empty_prompts
    embeddings = torch.where(empty[:, None, None], data.empty, embeddings)
    noise = torch.randn(latents.shape, generator=generator)
    timesteps = torch.randint(0, num_train_timesteps, (len(idx),), generator=generator)
    return ControlBatch(idx, latents, embeddings, conditions, noise, timesteps)


def residuals(
    controlnet, noisy: torch.Tensor, timesteps: torch.Tensor, embeddings: torch.Tensor, conditions: torch.Tensor
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The ControlNet's output: a residual for each skip connection of the UNet's encoder, and one for
    its middle block (each the output of a zero convolution)."""
    down, mid = controlnet(noisy, timesteps, embeddings, controlnet_cond=conditions, return_dict=False)
    return list(down), mid


def unet_with_residuals(
    unet, noisy: torch.Tensor, timesteps: torch.Tensor, embeddings: torch.Tensor, down: list, mid: torch.Tensor
) -> torch.Tensor:
    """What ``unet(..., down_block_additional_residuals=down, mid_block_additional_residual=mid)`` does
    with them, written out for an SD 1.x UNet: every skip connection the encoder saves gets its residual
    added before the decoder reads it, and the middle block's output gets ``mid``."""
    emb = unet.time_embedding(unet.get_time_embed(sample=noisy, timestep=timesteps))
    x = unet.conv_in(noisy)
    skips = [x]
    for block in unet.down_blocks:
        extra = {"encoder_hidden_states": embeddings} if getattr(block, "has_cross_attention", False) else {}
        x, saved = block(hidden_states=x, temb=emb, **extra)
        skips += saved
    skips = [skip + residual for skip, residual in zip(skips, down, strict=True)]  # the ControlNet's down residuals
    x = unet.mid_block(x, emb, encoder_hidden_states=embeddings) + mid  # and its middle one
    for block in unet.up_blocks:
        saved, skips = skips[-len(block.resnets) :], skips[: -len(block.resnets)]
        extra = {"encoder_hidden_states": embeddings} if getattr(block, "has_cross_attention", False) else {}
        x = block(hidden_states=x, temb=emb, res_hidden_states_tuple=tuple(saved), **extra)
    return unet.conv_out(unet.conv_act(unet.conv_norm_out(x)))


def controlnet_step(
    models: ControlNetModels,
    data: ControlNetData,
    scheduler,
    batch_size: int,
    proportion_empty_prompts: float,
    generator: torch.Generator,
    autocast: contextlib.AbstractContextManager | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The denoising loss of one batch, predicted by the UNet with the ControlNet's residuals added.
    ``autocast`` is the trainer's mixed precision (``accelerator.autocast()``)."""
    batch = draw_batch(data, batch_size, proportion_empty_prompts, generator, scheduler.config.num_train_timesteps)
    dtype, device = models.weight_dtype, models.device
    latents, noise, timesteps, embeddings, conditions = (
        t.to(device) for t in (batch.latents, batch.noise, batch.timesteps, batch.embeddings, batch.conditions)
    )
    noisy = scheduler.add_noise(latents, noise, timesteps)
    with autocast or contextlib.nullcontext():
        down, mid = residuals(models.controlnet, noisy, timesteps, embeddings.to(dtype), conditions)
        pred = models.unet(
            noisy.to(dtype),
            timesteps,
            embeddings.to(dtype),
            down_block_additional_residuals=[d.to(dtype) for d in down],
            mid_block_additional_residual=mid.to(dtype),
        ).sample
    target = denoising_target(scheduler, latents, noise, timesteps)
    return F.mse_loss(pred.float(), target.float()), {}
