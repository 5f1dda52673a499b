"""DreamBooth's training step, as functions that a notebook runs by hand and the trainer runs in its loop.

One step of ``helpers.dreambooth.trainer`` is exactly this, and nothing else:

1. ``draw_batch``: which photos, as many class images, the noise and the timesteps, all drawn from one
   generator (the trainer seeds one per step, so a resumed run draws what the first run would have);
2. ``condition``: the prompts of those rows, each photo's own (its caption or the instance prompt),
   then the class prompt for the class rows;
3. ``dreambooth_step``: the noisy latents, the UNet's prediction, and ``dreambooth_loss``'s two halves,
   instance + ``prior_loss_weight`` x prior.

What the run computes once before its first step (the images' latents, the prompts' encodings) is a
``DreamBoothData``, built by ``prepare_data``. Notebook 04 draws the batch of step 0 by hand, computes
both losses in cells, and checks them against the trainer's first logged step.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass

import torch
from PIL import Image

from helpers.diffusion.latents import encode as encode_latents
from helpers.diffusion.latents import preprocess
from helpers.diffusion.losses import dreambooth_loss
from helpers.diffusion.noise import offset_noise
from helpers.diffusion.prompts import token_ids
from helpers.dreambooth.config import TrainConfig
from helpers.dreambooth.instances import Instances
from helpers.training.loop import denoising_target

OFFSET_NOISE = 0.1  # the per-channel offset --offset_noise adds, as diffusers' scripts' --noise_offset 0.1


@dataclass
class DreamBoothModels:
    """The three models a step uses (the UNet and text encoder as the loop prepared them)."""

    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    vae: torch.nn.Module

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device


@dataclass
class DreamBoothData:
    """What a run computes once, before its first step.

    The latents are cached when no random augmentation changes the pixels from step to step (None:
    each batch goes through the VAE); the prompts' encodings are cached when the text encoder is frozen
    (None: each batch is encoded by the text encoder being trained)."""

    instance_images: list[Image.Image]
    class_images: list[Image.Image]
    instance_ids: torch.Tensor  # token ids, a row per photo: its caption, or the instance prompt
    class_ids: torch.Tensor | None  # the class prompt's, one row; None without prior preservation
    resolution: int
    center_crop: bool = False
    random_flip: bool = False
    instance_latents: torch.Tensor | None = None
    class_latents: torch.Tensor | None = None
    instance_emb: torch.Tensor | None = None
    class_emb: torch.Tensor | None = None
    captioned: int = 0  # photos whose prompt came from a caption file
    class_report: dict | None = None  # what the class-image cache did


@dataclass
class Batch:
    """One step's draw: the photos' rows first, then as many class rows (none without prior preservation)."""

    instance_index: torch.Tensor  # which photos
    class_index: torch.Tensor  # which class images
    latents: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor

    @property
    def num_instance(self) -> int:
        return len(self.instance_index)


def prepare_data(
    config: TrainConfig,
    instances: Instances,
    class_images: list[Image.Image],
    tokenizer,
    models: DreamBoothModels,
    resolution: int,
    device: torch.device | str = "cpu",
) -> DreamBoothData:
    """The photos and class images, through the VAE once when nothing augments them (a centre crop of a
    square photo is the same every step), and the prompts, encoded once when the text encoder is frozen."""
    augment = config.random_flip or not config.center_crop and any(im.size[0] != im.size[1] for im in instances.images)
    data = DreamBoothData(
        instance_images=instances.images,
        class_images=class_images,
        instance_ids=token_ids(tokenizer, instances.prompts).to(device),
        class_ids=token_ids(tokenizer, [config.class_prompt]).to(device) if config.with_prior_preservation else None,
        resolution=resolution,
        center_crop=config.center_crop,
        random_flip=config.random_flip,
        captioned=instances.captioned,
    )
    if not augment:
        data.instance_latents = encode_latents(models.vae, instances.images, resolution)
        data.class_latents = encode_latents(models.vae, class_images, resolution) if class_images else None
    if not config.train_text_encoder:
        with torch.no_grad():
            data.instance_emb = models.text_encoder(data.instance_ids)[0]
            data.class_emb = models.text_encoder(data.class_ids)[0] if data.class_ids is not None else None
    return data


def draw_batch(
    data: DreamBoothData,
    vae,
    batch_size: int,
    generator: torch.Generator,
    num_train_timesteps: int,
    offset: float = 0.0,
) -> Batch:
    """``batch_size`` random photos, as many random class images, their noise and timesteps, in that
    order from ``generator`` (on the CPU, so that a GPU and a CPU draw the same batch)."""
    idx = torch.randint(0, len(data.instance_images), (batch_size,), generator=generator)
    cls_idx = torch.randint(0, max(1, len(data.class_images)), (batch_size,), generator=generator)
    cls_idx = cls_idx if data.class_images else cls_idx[:0]
    latents = _latents(data, vae, idx, cls_idx, generator)
    noise = offset_noise(latents.shape, offset, generator)
    timesteps = torch.randint(0, num_train_timesteps, (len(latents),), generator=generator)
    return Batch(idx, cls_idx, latents, noise, timesteps)


def cached_rows(
    instance_latents: torch.Tensor, class_latents: torch.Tensor | None, idx: torch.Tensor, cls_idx: torch.Tensor
) -> torch.Tensor:
    """A batch's rows of cached latents, on the CPU: the photos' at ``idx``, then the class images' at ``cls_idx``
    (the flow-matching step's batch too, ``helpers.dreambooth.flow_step``)."""
    parts = [instance_latents[idx.to(instance_latents.device)]]
    if class_latents is not None:
        parts.append(class_latents[cls_idx.to(class_latents.device)])
    return torch.cat(parts).cpu()


def _latents(
    data: DreamBoothData, vae, idx: torch.Tensor, cls_idx: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """The rows' latents: the cached ones, or the images cropped (and flipped) at random and encoded now."""
    if data.instance_latents is not None:
        return cached_rows(data.instance_latents, data.class_latents, idx, cls_idx)
    rng = random.Random(int(torch.randint(0, 2**31, (1,), generator=generator)))
    images = [data.instance_images[i] for i in idx] + [data.class_images[i] for i in cls_idx]
    x = torch.stack([preprocess(im, data.resolution, data.center_crop, rng, data.random_flip) for im in images])
    with torch.no_grad():
        z = vae.encode(x.to(vae.device, dtype=vae.dtype)).latent_dist.sample(generator=generator)
    return (z.float() * vae.config.scaling_factor).cpu()


def condition(data: DreamBoothData, text_encoder, batch: Batch) -> torch.Tensor:
    """The encoder states of the batch's prompts: each photo's own, then the class prompt's for every class row."""
    classes = len(batch.class_index)
    if data.instance_emb is None:  # the text encoder is training: encode now, with gradients
        ids = [data.instance_ids[batch.instance_index.to(data.instance_ids.device)]]
        if classes:
            ids.append(data.class_ids.expand(classes, -1))
        return text_encoder(torch.cat(ids))[0]
    parts = [data.instance_emb[batch.instance_index.to(data.instance_emb.device)]]
    if classes:
        parts.append(data.class_emb.expand(classes, -1, -1))
    return torch.cat(parts)


def dreambooth_step(
    models: DreamBoothModels,
    data: DreamBoothData,
    scheduler,
    config: TrainConfig,
    generator: torch.Generator,
    autocast: contextlib.AbstractContextManager | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of one batch, and its two halves: ``(loss, {"instance_loss": ..., "prior_loss": ...})``.

    ``autocast`` is the trainer's mixed precision (``accelerator.autocast()``), around the UNet's call only."""
    batch = draw_batch(
        data,
        models.vae,
        config.train_batch_size,
        generator,
        scheduler.config.num_train_timesteps,
        OFFSET_NOISE if config.offset_noise else 0.0,
    )
    device = models.device
    latents, noise, timesteps = (t.to(device) for t in (batch.latents, batch.noise, batch.timesteps))
    cond = condition(data, models.text_encoder, batch).to(device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    with autocast or contextlib.nullcontext():
        pred = models.unet(noisy, timesteps, cond).sample
    target = denoising_target(scheduler, latents, noise, timesteps)
    loss, instance, prior = dreambooth_loss(
        pred, target, timesteps, scheduler, batch.num_instance, config.prior_loss_weight, config.snr_gamma
    )
    return loss, {"instance_loss": instance, "prior_loss": prior}
