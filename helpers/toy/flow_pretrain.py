"""Pretrain the toy flow-matching transformer (``helpers.toy.flow_model``) on the toy world.

The objective is the one diffusers' ``examples/dreambooth/train_dreambooth_lora_sd3.py`` trains SD3 with
(``--precondition_outputs 0``), in ``helpers.diffusion.flow``: draw u by ``compute_density_for_timestep_sampling``
(logit-normal by default), take the scheduler's timestep and sigma at index ``u * 1000``, put the latent on
the straight line ``x_t = (1 - sigma) x_0 + sigma eps`` and regress the transformer's output on the velocity
``eps - x_0``, weighted by ``compute_loss_weighting_for_sd3`` (1 for logit-normal). Only the transformer
learns: the text encoders are the toy SD's, frozen, and each distinct caption is encoded once.

The data path is the toy UNet's (``helpers.toy.pretrain_common``): the same cached latents, the same batches
(``draw_batch``), its layout batches and object weights, its EMA, its resumable stage state
(``helpers.toy.stage_state``) and its 10% empty captions for classifier-free guidance.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from helpers.core.errors import UsageError
from helpers.core.folders import claim_output
from helpers.diffusion.flow import FlowObjective, on_path, prediction_and_target, sample_losses, schedule_at
from helpers.toy import flow_model
from helpers.toy.pretrain_common import (
    LAYOUT_FROM_TIMESTEP,
    SAVE_EVERY_SECONDS,
    STAGE_FLAG,
    TOOL,
    cached_dataset,
    draw_batch,
    layout_indices,
    object_weights,
    one_cycle,
    optimizer_step,
)
from helpers.toy.stage_state import StageState

LAYOUT_SHARE = 1 - LAYOUT_FROM_TIMESTEP / 1000  # a layout sample's u: the noisiest fifth of the path
ENCODE_CHUNK = 256  # captions per text-encoder call when the captions are cached


def step_loss(
    transformer: SD3Transformer2DModel,
    noise_scheduler: FlowMatchEulerDiscreteScheduler,
    objective: FlowObjective,
    x0: torch.Tensor,
    prompt_embeds: torch.Tensor,
    pooled: torch.Tensor,
    n_layout: int = 0,
    weights: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One training step's loss on the scaled latents ``x0``. Draws u, then the noise, from ``generator``
    (the global generator when None), in that order, so that a notebook can redo the step by hand. The
    transformer runs in its own dtype (a half-precision copy too); the loss is taken in float32."""
    u = objective.draw_u(len(x0), generator)
    if n_layout:  # a layout batch's last rows: uniform over the noisiest fifth (pretrain_common.draw_batch)
        u[len(x0) - n_layout :] = LAYOUT_SHARE * torch.rand(n_layout, generator=generator)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    timesteps, sigmas = schedule_at(noise_scheduler, u)
    noisy = on_path(x0, noise, sigmas)
    pred = transformer(
        hidden_states=noisy.to(transformer.dtype),
        timestep=timesteps,
        encoder_hidden_states=prompt_embeds,
        pooled_projections=pooled,
    ).sample.to(x0.dtype)
    return sample_losses(
        *prediction_and_target(pred, noisy, x0, noise, sigmas), sigmas, objective.weighting_scheme, weights
    ).mean()


@dataclass
class CaptionCache:
    """The frozen text encoders' outputs for each distinct caption, the first row the empty caption's
    (what classifier-free guidance trains on): 80000 toy scenes hold about a third as many captions."""

    embeds: torch.Tensor
    pooled: torch.Tensor
    index: torch.Tensor  # each scene's row

    def batch(self, idx: torch.Tensor, empty: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The conditions of scenes ``idx``, the empty caption's where ``empty`` is true."""
        rows = torch.where(empty, 0, self.index[idx])
        return self.embeds[rows], self.pooled[rows]


def cache_captions(pipe: StableDiffusion3Pipeline, captions: list[str]) -> CaptionCache:
    """Encode each distinct caption once with the pipeline's own ``encode_prompt``: the transformer
    trains on exactly what sampling will feed it (``flow_model.MAX_SEQUENCE_LENGTH`` T5 tokens)."""
    distinct = list(dict.fromkeys(["", *captions]))
    rows = {caption: i for i, caption in enumerate(distinct)}
    embeds, pooled = [], []
    with torch.no_grad():
        for i in range(0, len(distinct), ENCODE_CHUNK):
            e, _, p, _ = pipe.encode_prompt(
                distinct[i : i + ENCODE_CHUNK],
                None,
                None,
                do_classifier_free_guidance=False,
                max_sequence_length=flow_model.MAX_SEQUENCE_LENGTH,
            )
            embeds.append(e)
            pooled.append(p)
    return CaptionCache(torch.cat(embeds), torch.cat(pooled), torch.tensor([rows[c] for c in captions]))


def flow_stage_dir(output: Path) -> Path:
    """Where the flow stage keeps its encoded dataset and its state while it runs."""
    return output.with_name(f"{output.name}-flow-stage")


def _start(toy_sd: Path, init_from: Path | None, seed: int) -> StableDiffusion3Pipeline:
    pipe = flow_model.build_pipeline(toy_sd, seed) if init_from is None else flow_model.load_pipeline(init_from)
    pipe.text_encoder.requires_grad_(False)
    pipe.text_encoder_2.requires_grad_(False)
    pipe.vae.requires_grad_(False)
    return pipe


def train_flow(
    output: Path,
    steps: int,
    batch_size: int,
    seed: int,
    dataset_size: int,
    lr: float,
    toy_sd: Path = flow_model.TOY_SD,
    init_from: Path | None = None,
    objective: FlowObjective = FlowObjective(),
    layout_fraction: float = 0.0,
    object_weight: float = 0.0,
    weight_decay: float = 1e-2,
    cfg_dropout: float = 0.1,
) -> tuple[dict, Path]:
    """Train the transformer on cached latents of ``toy_sd``'s VAE, from scratch (text encoders and VAE
    from ``toy_sd``) or on from the pipeline in ``init_from`` (a later phase, on fresh scenes: ``seed``).
    ``layout_fraction`` and ``object_weight`` are the toy UNet's (``pretrain.train_unet``). Resumable: a
    killed run started again with the same arguments goes on from its last state and ends with the same
    weights. Returns the report for the model card and the folder of the finished pipeline (EMA weights)."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    started = time.time()
    work = claim_output(flow_stage_dir(output), TOOL, STAGE_FLAG, shipped_ok=True)
    pipe = _start(toy_sd, init_from, seed)
    latents, captions, coverage = cached_dataset(work, pipe.vae, dataset_size, seed)
    latents = latents - pipe.vae.config.shift_factor * pipe.vae.config.scaling_factor  # SD3's (x - shift) * scale
    layout = layout_indices(captions)
    if layout_fraction and not layout:
        raise UsageError(f"none of the {len(captions)} captions names a place, so there is no layout batch to draw")
    cache = cache_captions(pipe, captions)
    transformer = pipe.transformer.train()
    noise_scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    params = list(transformer.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = one_cycle(opt, lr, steps)
    ema = EMAModel(params, decay=0.999, foreach=True)
    settings = {
        "steps": steps,
        "batch_size": batch_size,
        "seed": seed,
        "dataset_size": dataset_size,
        "learning_rate": lr,
        "toy_sd": str(toy_sd),
        "init_from": str(init_from) if init_from else None,
        **asdict(objective),
        "layout_fraction": layout_fraction,
        "object_weight": object_weight,
        "weight_decay": weight_decay,
        "cfg_dropout": cfg_dropout,
    }
    state = StageState(
        work,
        settings,
        {"transformer": transformer, "optimizer": opt, "schedule": sched, "ema": ema},
        rng=rng,
        started=started,
        every_seconds=SAVE_EVERY_SECONDS,
    )
    for step in (bar := tqdm(range(state.resume(), steps), desc="flow transformer", initial=state.step, total=steps)):
        idx, n_layout = draw_batch(rng, len(latents), batch_size, layout, layout_fraction)
        embeds, pooled = cache.batch(idx, torch.rand(batch_size) < cfg_dropout)
        weights = object_weights(coverage[idx], object_weight)
        loss = step_loss(transformer, noise_scheduler, objective, latents[idx], embeds, pooled, n_layout, weights)
        optimizer_step(loss, opt, sched, ema, params, state, step, bar)
    ema.copy_to(params)
    saved = work / "pipeline"
    pipe.save_pretrained(saved, safe_serialization=True)
    report = settings | {"seconds": round(state.seconds(), 1)}
    state.clear()
    return report, saved
