"""DreamBooth's training step on a flow-matching transformer (the SD3 family), as functions a notebook runs by hand.

The same three parts as the UNet's step (``helpers.dreambooth.step``), with flow matching in place of DDPM:

1. ``draw_flow_batch``: which photos, as many class images, their u (``--weighting_scheme``), the noise,
   and the timesteps and sigmas at u, all from one generator;
2. the prompts' encodings, computed once by ``prepare_flow_data`` with the pipeline's own ``encode_prompt``
   (the CLIP encoders' hidden states and pooled outputs, and T5's tokens where the model has T5); with
   ``--train_text_encoder`` the two CLIP encoders run again at every step with gradients
   (``clip_encodings``, written out), and only T5's tokens come from the cache;
3. ``flow_dreambooth_step``: the latents on the straight path, the transformer's output, and the two
   halves of the loss as diffusers' ``train_dreambooth_lora_sd3.py`` takes them (``helpers.diffusion.flow``):
   instance + ``prior_loss_weight`` x prior, each the mean of its rows' weighted squared errors.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass

import torch
from PIL import Image

from helpers.diffusion.flow import FlowObjective, on_path, prediction_and_target, sample_losses, schedule_at
from helpers.diffusion.latents import encode_distribution, preprocess
from helpers.dreambooth.step import Batch, cached_rows


@dataclass
class FlowDreamBoothData:
    """What a run computes once: the photos' and class images' latents (scaled and shifted as SD3's
    pipeline reads them) and the prompts' encodings (a row per photo; one row for the class prompt)."""

    instance_latents: torch.Tensor
    instance_embeds: torch.Tensor
    instance_pooled: torch.Tensor
    instance_prompts: list[str]
    class_prompt: str | None = None
    class_latents: torch.Tensor | None = None
    class_embeds: torch.Tensor | None = None
    class_pooled: torch.Tensor | None = None
    captioned: int = 0  # photos whose prompt came from a caption file
    class_report: dict | None = None  # what the class-image cache did
    # With --cache_latents, the latent distribution's spread: each step draws mean + std x noise, as the SD3
    # script does; None: each step takes the mean (the course's default, the same latents every step).
    instance_latent_std: torch.Tensor | None = None
    class_latent_std: torch.Tensor | None = None


@dataclass(frozen=True)
class Augment:
    """What happens to the photos before the VAE: a random square (unless ``center_crop``), a flip for half of
    them (``random_flip``), drawn once from ``seed``; ``sample``: keep the latents' spread (``--cache_latents``)."""

    center_crop: bool = True
    random_flip: bool = False
    seed: int = 0
    sample: bool = False


@dataclass
class FlowBatch(Batch):
    """The UNet step's draw (photos' rows, then class rows), with each row's sigma on the straight path."""

    sigmas: torch.Tensor


@torch.no_grad()
def encode_prompts(pipe, prompts: list[str], max_sequence_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen text encoders' output for each prompt, exactly what the pipeline feeds the transformer
    when it samples with ``max_sequence_length`` T5 tokens (the toy has no T5 and samples with none)."""
    embeds, _, pooled, _ = pipe.encode_prompt(
        prompts, None, None, do_classifier_free_guidance=False, max_sequence_length=max_sequence_length
    )
    return embeds, pooled


def prepare_flow_data(
    pipe,
    instance_images: list[Image.Image],
    instance_prompts: list[str],
    class_images: list[Image.Image],
    class_prompt: str | None,
    resolution: int,
    max_sequence_length: int,
    augment: Augment | None = None,
) -> FlowDreamBoothData:
    """The photos and class images through the VAE once, the prompts through the text encoders once.

    The photos are cropped (at random unless ``augment.center_crop``) and flipped (half of them, with
    ``augment.random_flip``) once, before the VAE, as the SD3 script's dataset does it; ``augment.sample``
    keeps the latent distribution's spread for a sample at every step (``--cache_latents``)."""
    augment = augment or Augment()
    rng = random.Random(augment.seed)
    pixels = torch.stack(
        [preprocess(im, resolution, augment.center_crop, rng, augment.random_flip) for im in instance_images]
    )
    latents, std = encode_distribution(pipe.vae, pixels)
    embeds, pooled = encode_prompts(pipe, instance_prompts, max_sequence_length)
    data = FlowDreamBoothData(latents, embeds, pooled, instance_prompts)
    data.instance_latent_std = std if augment.sample else None
    if class_images:
        class_latents, class_std = encode_distribution(
            pipe.vae, torch.stack([preprocess(im, resolution) for im in class_images])
        )
        data.class_latents, data.class_latent_std = class_latents, class_std if augment.sample else None
        data.class_embeds, data.class_pooled = encode_prompts(pipe, [class_prompt], max_sequence_length)
        data.class_prompt = class_prompt
    return data


def clip_encodings(
    tokenizers: list, text_encoders: list[torch.nn.Module], prompts: list[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The CLIP half of SD3's prompt encoding, with gradients: each encoder's penultimate hidden states,
    side by side (the first encoder's features, then the second's), and their pooled outputs side by side.

    ``StableDiffusion3Pipeline.encode_prompt`` computes the same, then pads the features to T5's width and
    puts T5's tokens after CLIP's 77 (``with_t5``)."""
    features, pooled = [], []
    for tokenizer, encoder in zip(tokenizers, text_encoders):
        ids = tokenizer(
            prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        out = encoder(ids.to(encoder.device), output_hidden_states=True)
        features.append(out.hidden_states[-2])
        pooled.append(out[0])  # the projected pooled output (CLIPTextModelWithProjection's text_embeds)
    return torch.cat(features, dim=-1), torch.cat(pooled, dim=-1)


def with_t5(clip_features: torch.Tensor, t5_tokens: torch.Tensor) -> torch.Tensor:
    """The transformer's text tokens: CLIP's features zero-padded to T5's width, then T5's tokens."""
    padded = torch.nn.functional.pad(clip_features, (0, t5_tokens.shape[-1] - clip_features.shape[-1]))
    return torch.cat([padded, t5_tokens.to(padded.dtype)], dim=-2)


def draw_flow_batch(
    data: FlowDreamBoothData,
    noise_scheduler,
    objective: FlowObjective,
    batch_size: int,
    generator: torch.Generator,
) -> FlowBatch:
    """``batch_size`` random photos, as many random class images, then u, the noise, and the timesteps and
    sigmas at u, in that order from ``generator`` (on the CPU, so that a GPU and a CPU draw the same batch)."""
    idx = torch.randint(0, len(data.instance_latents), (batch_size,), generator=generator)
    classes = data.class_latents
    cls_idx = torch.randint(0, len(classes), (batch_size,), generator=generator) if classes is not None else idx[:0]
    latents = cached_rows(data.instance_latents, classes, idx, cls_idx)
    u = objective.draw_u(len(latents), generator)
    noise = torch.randn(latents.shape, generator=generator)
    timesteps, sigmas = schedule_at(noise_scheduler, u)
    if data.instance_latent_std is not None:  # --cache_latents: a sample of each row's latent distribution
        std = cached_rows(data.instance_latent_std, data.class_latent_std, idx, cls_idx)
        latents = latents + std * torch.randn(latents.shape, generator=generator)
    return FlowBatch(idx, cls_idx, latents, noise, timesteps, sigmas)


def batch_condition(
    data: FlowDreamBoothData, batch: FlowBatch, text_encoding: tuple[list, list[torch.nn.Module]] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The encodings of the batch's prompts: each photo's own, then the class prompt's for every class row.

    ``text_encoding`` (the CLIP tokenizers and the encoders being trained): the rows' prompts through them
    now, with gradients, and T5's tokens from the cache; None: all from the cache."""
    rows = batch.instance_index.to(data.instance_embeds.device)
    embeds, pooled = [data.instance_embeds[rows]], [data.instance_pooled[rows]]
    prompts = [data.instance_prompts[i] for i in batch.instance_index.tolist()]
    if len(batch.class_index):
        embeds.append(data.class_embeds.expand(len(batch.class_index), -1, -1))
        pooled.append(data.class_pooled.expand(len(batch.class_index), -1))
        prompts += [data.class_prompt] * len(batch.class_index)
    cached, cached_pooled = torch.cat(embeds), torch.cat(pooled)
    if text_encoding is None:
        return cached, cached_pooled
    features, fresh_pooled = clip_encodings(*text_encoding, prompts)
    return with_t5(features, cached[:, features.shape[1] :].to(features.device)), fresh_pooled


def flow_dreambooth_step(
    transformer: torch.nn.Module,
    data: FlowDreamBoothData,
    noise_scheduler,
    objective: FlowObjective,
    batch_size: int,
    generator: torch.Generator,
    prior_loss_weight: float = 1.0,
    precondition_outputs: bool = False,
    autocast: contextlib.AbstractContextManager | None = None,
    text_encoding: tuple[list, list[torch.nn.Module]] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of one batch, and its two halves: ``(loss, {"instance_loss": ..., "prior_loss": ...})``.

    ``autocast`` is the trainer's mixed precision, around the models' calls only; the loss is float32.
    ``text_encoding``: the CLIP tokenizers and encoders that train with ``--train_text_encoder``
    (``batch_condition``)."""
    batch = draw_flow_batch(data, noise_scheduler, objective, batch_size, generator)
    device = next(transformer.parameters()).device
    x0, noise, sigmas = (t.to(device) for t in (batch.latents, batch.noise, batch.sigmas))
    noisy = on_path(x0, noise, sigmas)
    with autocast or contextlib.nullcontext():
        embeds, pooled = (t.to(device) for t in batch_condition(data, batch, text_encoding))
        output = transformer(
            hidden_states=noisy,
            timestep=batch.timesteps.to(device),
            encoder_hidden_states=embeds,
            pooled_projections=pooled,
        ).sample
    prediction, target = prediction_and_target(output.float(), noisy, x0, noise, sigmas, precondition_outputs)
    losses = sample_losses(prediction, target, sigmas, objective.weighting_scheme)
    instance = losses[: batch.num_instance].mean()
    prior = losses[batch.num_instance :].mean() if len(batch.class_index) else torch.zeros((), device=device)
    return instance + prior_loss_weight * prior, {"instance_loss": instance, "prior_loss": prior}
