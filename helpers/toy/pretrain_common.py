"""What the pretraining stages of the two toy denoisers share: the UNet's (``helpers.toy.pretrain``) and
the flow transformer's (``helpers.toy.flow_pretrain``).

Both train on the same cached latents of fresh toy scenes, drawn in the same batches (a share of them
layout batches, whose captions name a place), with the objects' latent pixels weighted alike and the same
one-cycle learning-rate schedule; their stage folders carry the same mark and save as often. Kept apart
from ``pretrain`` so that its command line can run the flow stage without the two modules importing
each other.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from torch.nn import functional as F
from tqdm.auto import tqdm

from helpers.core.atomic import save_torch_atomic
from helpers.diffusion.latents import vae_scale_factor
from helpers.toy import judge as judge_mod
from helpers.toy import world as toyworld
from helpers.toy.stage_state import load_tensors

TOOL = "helpers.pretrain"  # the mark on the model folder and on its stage folders (helpers.core.folders)
STAGE_FLAG = "--output's stage folder"  # how an error names a stage folder: it is --output's sibling
SAVE_EVERY_SECONDS = 300.0  # how often a stage saves its state (helpers.toy.stage_state)


def one_cycle(opt: torch.optim.Optimizer, lr: float | list[float], steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """A short warm-up to the peak ``lr`` (one per parameter group), then a cosine decay to 1/200 of it."""
    return torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=steps, pct_start=0.05, anneal_strategy="cos", div_factor=10, final_div_factor=20
    )


def object_coverage(labels: list[np.ndarray], factor: int) -> torch.Tensor:
    """For each render's label map (0 background), the share of each latent pixel's ``factor`` x
    ``factor`` patch that an object covers: a (N, 1, H / factor, W / factor) map in [0, 1]."""
    covered = torch.from_numpy(np.stack([lab > 0 for lab in labels])).float()[:, None]
    return F.avg_pool2d(covered, factor)


def encode_dataset(vae: AutoencoderKL, count: int, seed: int) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """Render ``count`` captioned scenes and encode them to scaled latents once (SD caches nothing;
    on a CPU, encoding every step would cost more than the UNet), with each latent's object
    coverage (``object_coverage``)."""
    names = toyworld.named_instances()
    factor = vae_scale_factor(vae.config)
    latents, captions, coverage = [], [], []
    for i in tqdm(range(0, count, 256), desc="encode dataset"):
        seeds = range(seed * 10**7 + i, seed * 10**7 + min(i + 256, count))
        samples = [toyworld.random_sample(s, names) for s in seeds]
        rendered = [toyworld.render_with_mask(sm.scene, seed=s) for sm, s in zip(samples, seeds)]
        x = judge_mod.to_tensor([image for image, _ in rendered])
        with torch.no_grad():
            latents.append(vae.encode(x).latent_dist.mean * vae.config.scaling_factor)
        coverage.append(object_coverage([labels for _, labels in rendered], factor))
        captions += [sm.caption for sm in samples]
    return torch.cat(latents), captions, torch.cat(coverage)


def cached_dataset(
    work: Path, vae: AutoencoderKL, count: int, seed: int
) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """``encode_dataset``, kept in ``work`` so that a resumed stage does not encode it again."""
    path = work / f"dataset-{seed}-{count}-{vae.config.scaling_factor}.pt"
    if path.exists():
        saved = load_tensors(path)
        return saved["latents"], saved["captions"], saved["coverage"]
    latents, captions, coverage = encode_dataset(vae, count, seed)
    work.mkdir(parents=True, exist_ok=True)
    save_torch_atomic({"latents": latents, "captions": captions, "coverage": coverage}, path)
    return latents, captions, coverage


LAYOUT_PHRASES = tuple(toyworld.POSITION_PHRASES.values())
LAYOUT_FROM_TIMESTEP = 800  # a layout batch's timesteps: the fifth of the schedule where the layout is decided


def layout_indices(captions: list[str]) -> list[int]:
    """The scenes whose caption says where the object is ("on the left"): what a layout batch draws from."""
    return [i for i, caption in enumerate(captions) if any(p in caption for p in LAYOUT_PHRASES)]


def draw_batch(
    rng: random.Random, size: int, batch_size: int, layout: list[int], layout_fraction: float
) -> tuple[torch.Tensor, int]:
    """Indices of one batch, and how many at its end are a layout batch (drawn from ``layout``)."""
    n_layout = round(batch_size * layout_fraction)
    return torch.tensor(rng.sample(range(size), batch_size - n_layout) + rng.choices(layout, k=n_layout)), n_layout


def object_weights(coverage: torch.Tensor, object_weight: float) -> torch.Tensor:
    """Per-latent-pixel loss weights: 1 on the background, 1 + ``object_weight`` on and next to an
    object (its coverage widened by one latent pixel, so that its edges count as the object).

    An object covers about a tenth of the latent pixels, and a white cat on snow differs from its
    ground by little in latent space: under a plain MSE, a missing outline costs almost nothing,
    and the model learns to draw a faint blob. Weighting the object puts the loss where the prompt's
    words are."""
    return 1 + object_weight * F.max_pool2d(coverage, 3, stride=1, padding=1)


def optimizer_step(loss: torch.Tensor, opt, sched, ema, params: list, state, step: int, bar) -> None:
    """What every step of a denoiser's pretraining does after its loss, written once for the UNet and the
    flow transformer: backward, clip at 1, step the optimizer, schedule and EMA, let the stage state save
    on time (``helpers.toy.stage_state``), and show the loss every 50 steps (a host sync, so not every step)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    ema.step(params)
    state.after_step(step + 1)
    if step % 50 == 0:
        bar.set_postfix(loss=f"{loss.item():.4f}")
