"""Pretrain the toy Stable Diffusion, the toy flow-matching model and the toy judge on the toy world.

    python -m helpers.pretrain vae   --output data/toy-sd
    python -m helpers.pretrain judge --output data/toy-judge --vae data/toy-sd/vae
    python -m helpers.pretrain unet  --output data/toy-sd
    python -m helpers.pretrain all   (VAE, UNet in three phases, judge: in order, with the defaults)
    python -m helpers.pretrain flow  --output data/toy-flow --toy_sd data/toy-sd  (not part of `all` yet)

The model's stages run in the order SD itself was built: an autoencoder first (so that diffusion
happens in a small latent space), then the text encoder and UNet together on (latent, caption)
pairs, first with SD 1.x's epsilon objective, then with v-prediction on a zero-terminal-SNR schedule
(``helpers.toy.model`` says why), last with the objects' pixels weighted in the loss. The judge needs
only the autoencoder (it learns to read images as they come out of it). Every stage is seeded and
resumable (``helpers.toy.stage_state``): killed and started again with the same command, it goes on
from its last saved state, and a stage that is finished is skipped, so `all` started again goes on
where it stopped. The model card written next to the weights records the exact command, seeds, steps
and wall time of each stage.

The flow-matching model (``helpers.toy.flow_model``) reuses the toy SD's VAE, tokenizer and text
encoder, frozen, and trains its transformer alone (``helpers.toy.flow_pretrain``), in stages that
resume and skip themselves as the UNet's do; its own stages follow the toy SD's in its stages.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, SD3Transformer2DModel, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.training_utils import EMAModel
from torch.nn import functional as F
from tqdm.auto import tqdm
from transformers import CLIPTextModel

from helpers.core.atomic import write_text_atomic
from helpers.core.errors import UsageError
from helpers.core.folders import building, check_output, claim_output, remove_output
from helpers.core.numbers import at_least, between, finite, fraction, positive, seed_in_range
from helpers.core.paths import DATA
from helpers.core.runtime import configure_cpu
from helpers.diffusion.flow import FlowObjective
from helpers.diffusion.losses import snr_weights
from helpers.diffusion.prompts import token_ids
from helpers.toy import judge as judge_mod
from helpers.toy import model as toymodel
from helpers.toy import tokenizer as toytokenizer
from helpers.toy import world as toyworld
from helpers.toy.flow_model import parameter_count
from helpers.toy.flow_pretrain import flow_stage_dir, train_flow
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
from helpers.training.loop import denoising_target

STAGES = "stages.json"  # every stage that produced the weights: command, seed, steps, time
FLOW_STAGE = "flow transformer"  # a flow stage's name in stages.json and on the card
WEIGHTING_SCHEMES = ("sigma_sqrt", "logit_normal", "mode", "cosmap", "none")  # train_dreambooth_lora_sd3.py's
MODE_SCALE_MAX = 2 / (math.pi - 2)
HELD_OUT_RENDERS = 512  # fresh renders behind the VAE's scaling factor and its PSNR on the card
HELD_OUT_SEED = 9 * 10**8  # their first seed, far from every training batch's


def _render_batch(seeds: range, names: dict) -> torch.Tensor:
    images = [toyworld.render(toyworld.random_sample(s, names).scene, seed=s) for s in seeds]
    return judge_mod.to_tensor(images)


# --------------------------------------------------------------------------- VAE


def vae_stage_dir(output: Path) -> Path:
    """Where the first stage leaves its VAE for the second (not part of the released model)."""
    return output.with_name(f"{output.name}-vae-stage")


def vae_loss(recon: torch.Tensor, x: torch.Tensor, posterior, mse_weight: float) -> torch.Tensor:
    """L1 + weighted MSE + a tiny KL term, as SD's first stage (less its adversarial and perceptual terms).

    A world of flat colours puts most of the squared error on the few pixels at edges; L1 alone
    treats a smeared edge as a small error, MSE weighted ``mse_weight``-fold against it does not."""
    return F.l1_loss(recon, x) + mse_weight * F.mse_loss(recon, x) + 1e-6 * posterior.kl().mean()


def held_out_pass(
    vae: AutoencoderKL, count: int | None = None, first_seed: int = HELD_OUT_SEED
) -> tuple[float, torch.Tensor]:
    """Encode ``count`` (default ``HELD_OUT_RENDERS``, read when called) fresh renders to their latent means
    and decode them, once: the PSNR (dB, pixels in [-1, 1]) of the round trip, and the latent means (their
    spread sets the scaling factor)."""
    count = HELD_OUT_RENDERS if count is None else count
    names = toyworld.named_instances()
    errors, latents = [], []
    with torch.no_grad():
        for i in range(0, count, 128):
            x = _render_batch(range(first_seed + i, first_seed + min(i + 128, count)), names)
            latents.append(vae.encode(x).latent_dist.mean)
            errors.append(F.mse_loss(vae.decode(latents[-1]).sample, x, reduction="sum"))
    psnr = 10 * math.log10(4.0 / (sum(errors).item() / (count * 3 * toymodel.RESOLUTION**2)))
    return psnr, torch.cat(latents)


def vae_psnr(vae: AutoencoderKL, count: int | None = None, first_seed: int = HELD_OUT_SEED) -> float:
    """PSNR (dB, pixels in [-1, 1]) of ``count`` fresh renders encoded to their latent means and decoded."""
    return held_out_pass(vae, count, first_seed)[0]


def train_vae(
    stage: Path, steps: int, batch_size: int, seed: int, lr: float, mse_weight: float = 10.0, continued: bool = False
) -> dict:
    """Train the autoencoder on fresh renders (a new batch every step, a function of the step), from
    scratch or, ``continued``, on from the VAE in ``stage`` (a second phase with its own schedule);
    resumable: a killed run started again with the same settings goes on from its last state."""
    claim_output(stage, TOOL, STAGE_FLAG, shipped_ok=True)
    torch.manual_seed(seed)
    names = toyworld.named_instances()
    if continued:
        vae = AutoencoderKL.from_pretrained(stage)
    else:
        vae = toymodel.vae()
        # Start the posterior's log-variance at -6 (std 0.05), as small as a trained SD VAE's: with the
        # default 0 (std 1), sampled latents are as noisy as they are informative and the decoder
        # learns to blur colours before the tiny KL weight lets the variance shrink.
        with torch.no_grad():
            vae.quant_conv.bias[vae.config.latent_channels :] = -6.0
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = one_cycle(opt, lr, steps)
    settings = {
        "steps": steps,
        "batch_size": batch_size,
        "seed": seed,
        "learning_rate": lr,
        "mse_weight": mse_weight,
        "continued": continued,
    }
    state = StageState(
        stage, settings, {"vae": vae, "optimizer": opt, "schedule": sched}, every_seconds=SAVE_EVERY_SECONDS
    )
    for step in (bar := tqdm(range(state.resume(), steps), desc="vae", initial=state.step, total=steps)):
        base = seed * 10**6 + step * batch_size
        x = _render_batch(range(base, base + batch_size), names)
        posterior = vae.encode(x).latent_dist
        loss = vae_loss(vae.decode(posterior.sample()).sample, x, posterior, mse_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        state.after_step(step + 1)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    vae.eval()
    psnr, latents = held_out_pass(vae)
    # SD rescales latents to unit variance before diffusion (0.18215 for SD 1.x); measure ours.
    vae.register_to_config(scaling_factor=round(1.0 / latents.std().item(), 5))
    vae.save_pretrained(stage, safe_serialization=True)
    report = settings | {
        "seconds": round(state.seconds(), 1),
        "held_out_psnr_db": round(psnr, 2),
        "scaling_factor": vae.config.scaling_factor,
    }
    state.clear()
    return report


# --------------------------------------------------------------------------- text encoder + UNet


def unet_stage_dir(output: Path) -> Path:
    """Where the text encoder + UNet stage keeps its encoded dataset and its state while it runs."""
    return output.with_name(f"{output.name}-unet-stage")


def draw_timesteps(batch_size: int, n_layout: int, num_train_timesteps: int) -> torch.Tensor:
    """Uniform timesteps, except the last ``n_layout``: those from the highest noise levels only."""
    t = torch.randint(0, num_train_timesteps, (batch_size,))
    if n_layout:
        t[batch_size - n_layout :] = torch.randint(LAYOUT_FROM_TIMESTEP, num_train_timesteps, (n_layout,))
    return t


def unet_loss(
    pred: torch.Tensor,
    noise_scheduler,
    x0: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    snr_gamma: float = 5.0,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Epsilon prediction with min-SNR weighting, as SD 1.x was trained; v-prediction with the plain MSE
    (min-SNR would weight the highest noise levels, where a layout is decided, by their SNR: zero).
    ``weights`` (per latent pixel, ``object_weights``) turn each sample's mean into a weighted mean."""
    target = denoising_target(noise_scheduler, x0, noise, t)
    if weights is None:
        weights = torch.ones_like(x0[:, :1])
    squared = F.mse_loss(pred, target, reduction="none")
    per_sample = (squared * weights).mean(dim=(1, 2, 3)) / weights.mean(dim=(1, 2, 3))
    if noise_scheduler.config.prediction_type == "v_prediction":
        return per_sample.mean()
    return (per_sample * snr_weights(noise_scheduler, t, snr_gamma)).mean()


def train_unet(
    output: Path,
    stage: Path,
    steps: int,
    batch_size: int,
    seed: int,
    dataset_size: int,
    lr: float,
    init_from: Path | None = None,
    prediction_type: str = "epsilon",
    layout_fraction: float = 0.0,
    text_encoder_lr: float | None = None,
    weight_decay: float = 1e-2,
    cfg_dropout: float = 0.1,
    object_weight: float = 0.0,
) -> tuple[dict, Path]:
    """Train text encoder and UNet jointly on cached latents; from scratch, or on from the weights of
    ``init_from`` (a later phase, on fresh scenes). ``prediction_type`` picks the schedule and target
    (``toymodel.SCHEDULES``); ``layout_fraction`` of every batch is a layout batch: scenes whose
    caption names the object's place, at the highest noise levels only. A uniform batch puts a fifth
    of its steps there and names a place in two captions of five; the words "left" and "right" then
    steer too little of the loss for the text encoder to keep them apart. ``object_weight`` weights
    the latent pixels of objects above the background's (``object_weights``).
    Resumable: a killed run started again with the same command goes on from its last state."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="toy-tokenizer-") as tok_dir:  # loaded into memory, saved with the stage
        tokenizer = toytokenizer.build_tokenizer(tok_dir)
    vae = AutoencoderKL.from_pretrained(stage).eval()
    started, work = time.time(), claim_output(unet_stage_dir(output), TOOL, STAGE_FLAG, shipped_ok=True)
    latents, captions, coverage = cached_dataset(work, vae, dataset_size, seed)
    layout = layout_indices(captions)
    if layout_fraction and not layout:
        raise UsageError(
            f"none of the {len(captions)} captions names a place, so there is no layout batch to draw: "
            "raise --dataset_size"
        )
    ids = token_ids(tokenizer, captions)
    empty = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    if init_from is None:
        text_encoder, unet = toymodel.text_encoder(tokenizer), toymodel.unet()
    else:
        text_encoder = CLIPTextModel.from_pretrained(init_from, subfolder="text_encoder")
        unet = UNet2DConditionModel.from_pretrained(init_from, subfolder="unet")
    noise_scheduler = toymodel.train_scheduler(prediction_type)
    params = list(text_encoder.parameters()) + list(unet.parameters())
    text_encoder_lr = text_encoder_lr or lr
    opt = torch.optim.AdamW(
        [
            {"params": list(text_encoder.parameters()), "lr": text_encoder_lr},
            {"params": list(unet.parameters()), "lr": lr},
        ],
        lr=lr,
        weight_decay=weight_decay,
    )
    sched = one_cycle(opt, [text_encoder_lr, lr], steps)
    ema = EMAModel(params, decay=0.999, foreach=True)
    settings = {
        "steps": steps,
        "batch_size": batch_size,
        "seed": seed,
        "dataset_size": dataset_size,
        "learning_rate": lr,
        "text_encoder_lr": text_encoder_lr,
        "weight_decay": weight_decay,
        "prediction_type": prediction_type,
        "layout_fraction": layout_fraction,
        "object_weight": object_weight,
        "init_from": str(init_from) if init_from else None,
        "vae_scaling_factor": vae.config.scaling_factor,
    }
    state = StageState(
        work,
        settings,
        {"text_encoder": text_encoder, "unet": unet, "optimizer": opt, "schedule": sched, "ema": ema},
        rng=rng,
        started=started,
        every_seconds=SAVE_EVERY_SECONDS,
    )
    for step in (
        bar := tqdm(range(state.resume(), steps), desc="text encoder + unet", initial=state.step, total=steps)
    ):
        idx, n_layout = draw_batch(rng, len(latents), batch_size, layout, layout_fraction)
        batch_ids = ids[idx].clone()
        batch_ids[torch.rand(batch_size) < cfg_dropout] = empty[0]
        x0 = latents[idx]
        noise = torch.randn_like(x0)
        t = draw_timesteps(batch_size, n_layout, noise_scheduler.config.num_train_timesteps)
        xt = noise_scheduler.add_noise(x0, noise, t)
        pred = unet(xt, t, text_encoder(batch_ids)[0]).sample
        loss = unet_loss(pred, noise_scheduler, x0, noise, t, weights=object_weights(coverage[idx], object_weight))
        optimizer_step(loss, opt, sched, ema, params, state, step, bar)
    ema.copy_to(params)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=toymodel.sample_scheduler(prediction_type),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    saved = work / "pipeline"  # moved into the output by _unet_stage, with the card
    pipe.save_pretrained(saved, safe_serialization=True)
    report = {k: v for k, v in settings.items() if k != "vae_scaling_factor"} | {"seconds": round(state.seconds(), 1)}
    state.clear()
    return report, saved


# --------------------------------------------------------------------------- model card


def _vae_notes(r: dict) -> str:
    return (
        f"fresh renders, L1 + {r['mse_weight']:g} x MSE, peak lr {r['learning_rate']}, "
        f"held-out PSNR {r['held_out_psnr_db']} dB, scaling factor {r['scaling_factor']}"
        f"{', continued from the row above' if r['continued'] else ''}"
    )


def _batch_notes(r: dict) -> str:
    """What a denoiser stage's batches held beyond plain scenes: layout batches, weighted object pixels."""
    layout = f", {r['layout_fraction']:.0%} layout batches" if r["layout_fraction"] else ""
    return layout + (f", object pixels weighted {1 + r['object_weight']:g}x" if r.get("object_weight") else "")


def _unet_notes(r: dict) -> str:
    loss = (
        "v-prediction MSE on the zero-SNR schedule"
        if r["prediction_type"] == "v_prediction"
        else "epsilon prediction, min-SNR 5"
    )
    return (
        f"{r['dataset_size']} cached latents of fresh scenes, peak lr {r['learning_rate']} "
        f"(text encoder {r['text_encoder_lr']}), weight decay {r['weight_decay']:g}, {loss}{_batch_notes(r)}, "
        f"EMA 0.999, 10% empty captions{', continued from the row above' if r.get('init_from') else ''}"
    )


def _flow_notes(r: dict) -> str:
    scheme = r["weighting_scheme"]
    drawn = {
        "logit_normal": f"t logit-normal (mean {r['logit_mean']:g}, std {r['logit_std']:g})",
        "mode": f"t by mode sampling (scale {r['mode_scale']:g})",
    }.get(scheme, "t uniform")
    weighted = f", loss weighted by {scheme}" if scheme in ("sigma_sqrt", "cosmap") else ""
    return (
        f"{r['dataset_size']} cached latents of fresh scenes, transformer only, peak lr {r['learning_rate']}, "
        f"weight decay {r['weight_decay']:g}, velocity MSE, {drawn}{weighted}{_batch_notes(r)}, EMA 0.999, "
        f"{r['cfg_dropout']:.0%} empty captions{', continued from the row above' if r.get('init_from') else ''}"
    )


def _stage_row(entry: dict) -> str:
    r = entry["report"]
    notes = {"VAE": _vae_notes, FLOW_STAGE: _flow_notes}.get(entry["stage"], _unet_notes)(r)
    return (
        f"| {entry['stage']} | `{entry['command']}` | {r['steps']} | {r['batch_size']} | {r['seed']} | "
        f"{r['seconds']} s | {notes} |"
    )


def _model_card(stages: list[dict]) -> str:
    rows = "\n".join(_stage_row(e) for e in stages)
    total = sum(e["report"]["seconds"] for e in stages)
    return f"""---
library_name: diffusers
pipeline_tag: text-to-image
tags: [stable-diffusion, toy, education]
---
# Toy Stable Diffusion (64x64, CPU)

A real `StableDiffusionPipeline` (CLIPTokenizer with a toy-world BPE vocabulary, CLIPTextModel,
AutoencoderKL 64x64 -> {toymodel.LATENT_CHANNELS}x16x16, UNet2DConditionModel, DDIM sampling with SD 1.x's betas
rescaled to zero terminal SNR, v-prediction)
pretrained from scratch on the course's procedural toy world. It exists so that every lesson,
DreamBooth included, runs on a laptop CPU and in CI without a network.

Produced by these commands, in this order (`python -m helpers.pretrain all` runs the same stages
with the same settings, then the toy judge), {total / 60:.0f} minutes in all on a 2-core CPU. Each
stage saves its state every five minutes: killed and started again, it goes on from there.

| stage | command | steps | batch | seed | wall time | notes |
|---|---|---|---|---|---|---|
{rows}

Load it offline with `StableDiffusionPipeline.from_pretrained("data/toy-sd")`.
The training data are toy renders only; the model draws nothing but the toy world.
"""


def _flow_card(stages: list[dict], first: int, toy_sd: Path, output: Path, saved: Path) -> str:
    """The flow model's card: what it is, how to call it, and its own stages (``stages[first:]``; the
    ones before made the toy SD it reads, and are on that model's card)."""
    own = stages[first:]
    transformer = SD3Transformer2DModel.from_pretrained(saved, subfolder="transformer")
    c = transformer.config
    size = (
        f"patch {c.patch_size} on the toy's {c.in_channels}x{c.sample_size}x{c.sample_size} latents, "
        f"{c.num_layers} joint blocks of {c.num_attention_heads} heads of {c.attention_head_dim}, "
        f"{parameter_count(transformer) / 1e6:.1f} M parameters"
    )
    shift = json.loads((saved / "scheduler" / "scheduler_config.json").read_text())["shift"]
    rows = "\n".join(_stage_row(e) for e in own)
    minutes = sum(e["report"]["seconds"] for e in own) / 60
    return f"""---
library_name: diffusers
pipeline_tag: text-to-image
tags: [stable-diffusion-3, flow-matching, toy, education]
---
# Toy flow-matching model (SD3 family, 64x64, CPU)

A real `StableDiffusion3Pipeline`, the family of SD 3 and 3.5, at the toy's 64x64 pixels:
`SD3Transformer2DModel` (MMDiT: {size}),
`FlowMatchEulerDiscreteScheduler` with shift {shift} (`helpers.toy.flow_model.SHIFT` says why), and the
toy SD's AutoencoderKL, CLIP tokenizer and text encoder, the encoder as SD3's two CLIP encoders with
projection (the second reads it one layer deeper). Only the transformer was trained, from scratch, on the
course's procedural toy world, with the objective of diffusers' `train_dreambooth_lora_sd3.py`: the
velocity `noise - x_0` along the straight line `x_t = (1 - t) x_0 + t noise`. It exists so that the
flow-matching lessons run on a laptop CPU and in CI without a network.

There is no T5 encoder (`text_encoder_3` and `tokenizer_3` are null). In its place the pipeline feeds the
transformer `max_sequence_length` tokens of zeros (256 unless the call says otherwise), unmasked: N
identical tokens act in attention as one token whose logit gains log N, so a model trained with one N
draws differently with another. This one was trained with none: call it with `max_sequence_length=0`
(`helpers.toy.flow_model.MAX_SEQUENCE_LENGTH`), which also keeps a step about five times cheaper on a CPU.

Produced by these commands, in this order, {minutes:.0f} minutes in all on a 2-core CPU. Each stage saves
its state every five minutes: killed and started again, it goes on from there.

| stage | command | steps | batch | seed | wall time | notes |
|---|---|---|---|---|---|---|
{rows}

The VAE, tokenizer and text encoder are those of the toy SD in `{_shown(toy_sd)}`, frozen: the {first}
stages on its card made them, and `stages.json` here lists them first.

Load it offline with

```python
from helpers.toy.flow_model import MAX_SEQUENCE_LENGTH, load_pipeline

pipe = load_pipeline("{_shown(output)}")
image = pipe(
    "a photo of a red dog on the left", height=64, width=64, max_sequence_length=MAX_SEQUENCE_LENGTH
).images[0]
```

(`StableDiffusion3Pipeline.from_pretrained` refuses a folder saved without T5 unless the call passes
`text_encoder_3=None, tokenizer_3=None`; `load_pipeline` does.) The course's commands know it as the
`toy-flow` profile (28 Euler steps and guidance 7, the SD3 pipeline's defaults, `max_sequence_length` 0), e.g.
`python -m helpers.generate --model toy-flow --prompt "a photo of a red dog" --output_dir DIR`.
The training data are toy renders only; the model draws nothing but the toy world.
"""


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m helpers.pretrain", description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=("judge", "vae", "unet", "all", "flow"))
    parser.add_argument(
        "--output", type=Path, default=None, help="output folder (default: data/toy-sd, data/toy-judge, data/toy-flow)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--judge_steps", type=int, default=1200)
    parser.add_argument(
        "--vae",
        type=Path,
        default=DATA / "toy-sd" / "vae",
        help="judge stage: the toy model's VAE, through which half its training images pass",
    )
    parser.add_argument("--vae_steps", type=int, default=5000)
    parser.add_argument("--vae_batch_size", type=int, default=32)
    parser.add_argument("--vae_learning_rate", type=float, default=2e-3)
    parser.add_argument(
        "--vae_mse_weight",
        type=float,
        default=10.0,
        help="weight of the MSE term against L1 in the VAE's reconstruction loss",
    )
    parser.add_argument(
        "--vae_continue",
        action="store_true",
        help="vae stage: go on from the VAE already in the stage folder (a second phase)",
    )
    parser.add_argument("--unet_steps", type=int, default=5000)
    parser.add_argument("--unet_batch_size", type=int, default=64)
    parser.add_argument("--dataset_size", type=int, default=80000)
    parser.add_argument(
        "--learning_rate", type=float, default=1e-3, help="unet and flow stages: the peak learning rate"
    )
    parser.add_argument(
        "--init_from",
        type=Path,
        default=None,
        help="unet stage: continue from this pipeline's text encoder and UNet; flow stage: from its transformer",
    )
    parser.add_argument(
        "--prediction_type",
        choices=tuple(toymodel.SCHEDULES),
        default="epsilon",
        help="unet stage: epsilon on SD 1.x's schedule, or v on it rescaled to zero terminal SNR",
    )
    parser.add_argument(
        "--layout_fraction",
        type=float,
        default=0.0,
        help="unet and flow stages: share of each batch drawn from captions that name a place, at high noise",
    )
    parser.add_argument(
        "--text_encoder_lr",
        type=float,
        default=None,
        help="unet stage: the text encoder's peak learning rate (default: --learning_rate)",
    )
    parser.add_argument(
        "--object_weight",
        type=float,
        default=0.0,
        help="unet and flow stages: extra loss weight on the latent pixels of objects (0: a plain MSE)",
    )
    parser.add_argument("--weight_decay", type=float, default=1e-2)
    _add_flow_flags(parser)
    args = parser.parse_args(argv)
    _check(args)
    return args


def _add_flow_flags(parser: argparse.ArgumentParser) -> None:
    """The flow stage's own flags; its objective's keep the names of diffusers' train_dreambooth_lora_sd3.py."""
    default = FlowObjective()
    parser.add_argument("--flow_steps", type=int, default=5500)
    parser.add_argument("--flow_batch_size", type=int, default=64)
    parser.add_argument(
        "--toy_sd",
        type=Path,
        default=DATA / "toy-sd",
        help="flow stage: the toy SD whose VAE, tokenizer and text encoder the flow model reads, frozen",
    )
    parser.add_argument(
        "--weighting_scheme",
        choices=WEIGHTING_SCHEMES,
        default=default.weighting_scheme,
        help="flow stage: how t is drawn (logit_normal, mode, else uniform) and the loss weighted",
    )
    parser.add_argument("--logit_mean", type=float, default=default.logit_mean, help="flow stage: logit_normal's mean")
    parser.add_argument("--logit_std", type=float, default=default.logit_std, help="flow stage: logit_normal's std")
    parser.add_argument(
        "--mode_scale", type=float, default=default.mode_scale, help="flow stage: mode sampling's scale"
    )


def _check(args: argparse.Namespace) -> None:
    """Numbers that cannot work (argparse's float takes inf and nan) end in one line before any stage
    starts: an infinite learning rate would pretrain a model of NaNs, and a run of hours would fail late."""
    seed_in_range("--seed", args.seed)
    for name in ("judge_steps", "vae_steps", "vae_batch_size", "unet_steps", "unet_batch_size", "flow_steps"):
        at_least(f"--{name}", getattr(args, name), 1)
    at_least("--flow_batch_size", args.flow_batch_size, 1)
    batch = "flow_batch_size" if args.stage == "flow" else "unet_batch_size"
    at_least("--dataset_size", args.dataset_size, getattr(args, batch), f"each --{batch} batch draws from it")
    for name in ("vae_learning_rate", "learning_rate", "text_encoder_lr"):
        positive(f"--{name}", getattr(args, name), "pass a positive learning rate such as 1e-3")
    for name in ("vae_mse_weight", "object_weight", "weight_decay"):
        at_least(f"--{name}", getattr(args, name), 0)
    fraction("--layout_fraction", args.layout_fraction)
    finite("--logit_mean", args.logit_mean)
    positive("--logit_std", args.logit_std, "pass a positive spread such as 1.0")
    # The SD3 paper's range, where mode sampling maps [0, 1] onto itself one to one; outside it a drawn t
    # leaves [0, 1] and indexes past the scheduler's timesteps.
    between("--mode_scale", args.mode_scale, -1.0, MODE_SCALE_MAX, "pass a scale such as 1.29, SD3's")


VAE_CONTINUATIONS = 2  # phases after the first, each half as long as the one before, at half its learning rate


def vae_continuation(flags: list[str], phase: int, seed: int, steps: int, learning_rate: float) -> list[str]:
    """The VAE's ``phase``-th continuation in `all` (1, 2, ...): on from the VAE so far with fresh
    renders (seed + phase), 3/5 of the first phase's steps and a quarter of its peak learning rate,
    halved again for each later phase. Each schedule's warm-up and decay gains what one longer
    schedule would, and keeps every phase under an hour on a 2-core CPU."""
    halving = 2 ** (phase - 1)
    return [
        "vae",
        "--vae_continue",
        *flags,
        "--seed",
        str(seed + phase),
        "--vae_steps",
        str(steps * 3 // (5 * halving)),
        "--vae_learning_rate",
        f"{learning_rate / (4 * halving):g}",
    ]


def _continued_phase(
    flags: list[str], output: Path, seed: int, steps: int, learning_rate: float, text_encoder_lr: float, *rest: str
) -> list[str]:
    """A UNet phase of `all` that goes on from the weights in ``output`` with fresh scenes (``seed``):
    v-prediction on the zero-SNR schedule, no weight decay, and ``rest`` (the phase's own flags)."""
    return [
        "unet",
        "--init_from",
        _shown(output),
        *flags,
        "--seed",
        str(seed),
        "--unet_steps",
        str(steps),
        "--learning_rate",
        f"{learning_rate:g}",
        "--text_encoder_lr",
        f"{text_encoder_lr:g}",
        "--weight_decay",
        "0",
        "--prediction_type",
        "v_prediction",
        *rest,
    ]


def second_phase(flags: list[str], output: Path, seed: int, steps: int, learning_rate: float) -> list[str]:
    """`all` runs the UNet stage twice, each phase under an hour on a 2-core CPU: from scratch with SD
    1.x's epsilon objective, then on from those weights with fresh scenes (the next seed), 4/5 of the
    steps, v-prediction on the zero-SNR schedule and half of every batch a layout batch
    (``train_unet``). The text encoder keeps the first phase's peak learning rate, the UNet takes
    3/10 of it, and nothing decays the weights: the text encoder relearns words the first phase let
    collapse together ("left" and "right"), the UNet only adapts to its new target."""
    return _continued_phase(
        flags, output, seed + 1, steps * 4 // 5, learning_rate * 3 / 10, learning_rate, "--layout_fraction", "0.5"
    )


def third_phase(flags: list[str], output: Path, seed: int, steps: int, learning_rate: float) -> list[str]:
    """The UNet's last phase in `all`: on from the second with fresh scenes (seed + 2), 2/5 of the
    first phase's steps at a tenth of its learning rate (the text encoder at 3/10), a quarter of
    every batch a layout batch, and the objects' latent pixels weighted five times the background's
    (``object_weights``): the phases before draw a white cat on a pale ground as a faint blob."""
    return _continued_phase(
        flags,
        output,
        seed + 2,
        steps * 2 // 5,
        learning_rate / 10,
        learning_rate * 3 / 10,
        "--layout_fraction",
        "0.25",
        "--object_weight",
        "4",
    )


def vae_stages(output: Path) -> list[dict]:
    """The phases that made the VAE in ``output``'s stage folder, oldest first ([] before the first)."""
    path = vae_stage_dir(output) / STAGES
    return json.loads(path.read_text()) if path.exists() else []


def _vae_stage(output: Path, args: argparse.Namespace, command: str) -> None:
    stage, done = vae_stage_dir(output), vae_stages(output)
    if any(entry["command"] == command for entry in done):
        print(f"the VAE in {stage} has had the phase `{command}` already; delete {stage / STAGES} to train it again")
        return
    if args.vae_continue and not done:
        raise UsageError(f"no trained VAE in {stage} to continue: run `python -m helpers.pretrain vae` first")
    report = train_vae(
        stage,
        args.vae_steps,
        args.vae_batch_size,
        args.seed,
        args.vae_learning_rate,
        args.vae_mse_weight,
        continued=args.vae_continue,
    )
    entry = {"stage": "VAE", "command": command, "report": report}
    write_text_atomic(stage / STAGES, json.dumps((done if args.vae_continue else []) + [entry], indent=2))
    print(json.dumps(report))


def _holds(output: Path, prefix: list[dict], command: str) -> bool:
    """Whether the pipeline in ``output`` was made on top of ``prefix`` (its VAE's phases, or the toy SD's
    stages for a flow model) by a chain of stages that includes ``command``."""
    path = output / STAGES
    if not path.exists():
        return False
    held = json.loads(path.read_text())
    return held[: len(prefix)] == prefix and any(entry["command"] == command for entry in held[len(prefix) :])


def _unet_stage(output: Path, args: argparse.Namespace, command: str) -> None:
    stage, prefix = vae_stage_dir(output), vae_stages(output)
    if not prefix:
        raise UsageError(f"no trained VAE in {stage}: run `python -m helpers.pretrain vae` first")
    if args.init_from is not None:
        stages = json.loads((args.init_from / STAGES).read_text())
        if stages[: len(prefix)] != prefix:
            raise UsageError(
                f"{args.init_from} was trained on another VAE than {stage}'s: train its UNet stage "
                "from scratch first (python -m helpers.pretrain unet)"
            )
    else:
        stages = list(prefix)
    if _holds(output, prefix, command):
        print(f"{output} already holds the stage `{command}` on this VAE; delete {output / STAGES} to train it again")
        return
    report, saved = train_unet(
        output,
        stage,
        args.unet_steps,
        args.unet_batch_size,
        args.seed,
        args.dataset_size,
        args.learning_rate,
        init_from=args.init_from,
        prediction_type=args.prediction_type,
        layout_fraction=args.layout_fraction,
        text_encoder_lr=args.text_encoder_lr,
        weight_decay=args.weight_decay,
        object_weight=args.object_weight,
    )
    stages.append({"stage": "text encoder + UNet", "command": command, "report": report})
    _install(output, saved, stages, _model_card(stages), unet_stage_dir(output))
    print(json.dumps(report))


def _install(output: Path, saved: Path, stages: list[dict], card: str, stage_dir: Path) -> None:
    """Swap the pipeline that a stage saved into ``output`` whole, with its stages and card (a crash leaves
    the old model as it was), then delete the stage folder and the cached dataset in it."""
    with building(output, TOOL, shipped_ok=True) as build:
        for part in saved.iterdir():
            os.replace(part, build / part.name)
        write_text_atomic(build / STAGES, json.dumps(stages, indent=2))
        write_text_atomic(build / "README.md", card)
    remove_output(stage_dir, TOOL)


def _pipeline_class(folder: Path) -> str | None:
    index = folder / "model_index.json"
    return json.loads(index.read_text()).get("_class_name") if index.is_file() else None


def _toy_sd_stages(toy_sd: Path) -> list[dict]:
    """The stages that made the toy SD whose parts a flow model reads: the first rows of that model's
    stages.json, so that a flow stage on another toy SD is neither skipped nor continued from."""
    if _pipeline_class(toy_sd) != "StableDiffusionPipeline":
        raise UsageError(f"--toy_sd {toy_sd} holds no toy SD: pass the folder `python -m helpers.pretrain all` made")
    path = toy_sd / STAGES
    return json.loads(path.read_text()) if path.exists() else []


def _flow_chain(init_from: Path | None, toy_sd: Path, prefix: list[dict]) -> list[dict]:
    """The stages a new flow stage adds its row to: those of the flow model in ``init_from``, made on the
    toy SD of ``prefix``, or the toy SD's alone for a first stage."""
    if init_from is None:
        return list(prefix)
    if _pipeline_class(init_from) != "StableDiffusion3Pipeline" or not (init_from / STAGES).exists():
        raise UsageError(
            f"--init_from {init_from} holds no toy flow model: pass a folder `python -m helpers.pretrain flow` made"
        )
    stages = json.loads((init_from / STAGES).read_text())
    if stages[: len(prefix)] != prefix:
        raise UsageError(
            f"{init_from} was trained on another toy SD than {toy_sd}: pass that one as --toy_sd, "
            "or train a first flow stage without --init_from"
        )
    return stages


def _flow_stage(output: Path, args: argparse.Namespace, command: str) -> None:
    prefix = _toy_sd_stages(args.toy_sd)
    stages = _flow_chain(args.init_from, args.toy_sd, prefix)
    if _holds(output, prefix, command):
        print(
            f"{output} already holds the stage `{command}` on this toy SD; delete {output / STAGES} to train it again"
        )
        return
    report, saved = train_flow(
        output,
        args.flow_steps,
        args.flow_batch_size,
        args.seed,
        args.dataset_size,
        args.learning_rate,
        toy_sd=args.toy_sd,
        init_from=args.init_from,
        objective=FlowObjective(args.weighting_scheme, args.logit_mean, args.logit_std, args.mode_scale),
        layout_fraction=args.layout_fraction,
        object_weight=args.object_weight,
        weight_decay=args.weight_decay,
    )
    stages.append({"stage": FLOW_STAGE, "command": command, "report": report})
    card = _flow_card(stages, len(prefix), args.toy_sd, output, saved)
    _install(output, saved, stages, card, flow_stage_dir(output))
    print(json.dumps(report))


def _judge_stage(output: Path, vae_dir: Path, args: argparse.Namespace, command: str) -> None:
    check_output(output, judge_mod.MADE_BY, "--output", shipped_ok=True)
    vae = AutoencoderKL.from_pretrained(vae_dir).eval()
    print(json.dumps(judge_mod.train_judge(output, vae, steps=args.judge_steps, seed=args.seed, command=command)))


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(argv)
    configure_cpu()
    command = _command(argv)
    if args.stage == "judge":
        _judge_stage(args.output or DATA / "toy-judge", args.vae, args, command)
        return
    output = (args.output or DATA / ("toy-flow" if args.stage == "flow" else "toy-sd")).resolve()
    _check_folders(output, args)
    if args.stage == "flow":
        _flow_stage(output, args, command)
    if args.stage == "vae":
        _vae_stage(output, args, command)
    if args.stage == "unet":
        _unet_stage(output, args, command)
    if args.stage == "all":  # each stage skips itself once done, so `all` started again goes on where it stopped
        for stage_argv in _all_stages([a for a in argv if a != "all"], output, args):
            stage_args = _parse(stage_argv)
            {"vae": _vae_stage, "unet": _unet_stage}[stage_args.stage](output, stage_args, _command(stage_argv))
        judge_argv = _judge_argv(output, args)
        judge_args = _parse(judge_argv)
        _judge_stage(judge_args.output or DATA / "toy-judge", judge_args.vae, judge_args, _command(judge_argv))


def _check_folders(output: Path, args: argparse.Namespace) -> None:
    """Refuse, before hours of training, a folder of the learner's or of another command that a stage
    would write: the model folder, its stage folders and, for `all`, the judge's folder beside it."""
    if args.stage == "flow":
        check_output(output, TOOL, "--output", inputs={"--toy_sd": args.toy_sd}, shipped_ok=True)
        check_output(flow_stage_dir(output), TOOL, STAGE_FLAG, shipped_ok=True)
        return
    check_output(output, TOOL, "--output", shipped_ok=True)
    for folder in (vae_stage_dir(output), unet_stage_dir(output)):
        check_output(folder, TOOL, STAGE_FLAG, shipped_ok=True)
    if args.stage == "all":
        check_output(output.with_name("toy-judge"), judge_mod.MADE_BY, "--output's judge folder", shipped_ok=True)


def _all_stages(flags: list[str], output: Path, args: argparse.Namespace) -> list[list[str]]:
    """The commands `all` stands for, each as it would be typed (and as the model card records it)."""
    continuations = [
        vae_continuation(flags, phase, args.seed, args.vae_steps, args.vae_learning_rate)
        for phase in range(1, VAE_CONTINUATIONS + 1)
    ]
    return [
        ["vae", *flags],
        *continuations,
        ["unet", *flags],
        second_phase(flags, output, args.seed, args.unet_steps, args.learning_rate),
        third_phase(flags, output, args.seed, args.unet_steps, args.learning_rate),
    ]


def _judge_argv(output: Path, args: argparse.Namespace) -> list[str]:
    """The judge after `all`: next to the model, reading its VAE; only the flags that differ are written."""
    argv = ["judge"]
    if output != DATA / "toy-sd":
        argv += ["--output", _shown(output.with_name("toy-judge")), "--vae", _shown(output / "vae")]
    for flag, value, default in (("--judge_steps", args.judge_steps, 1200), ("--seed", args.seed, 0)):
        argv += [flag, str(value)] if value != default else []
    return argv


def _command(argv: list[str]) -> str:
    return "python -m helpers.pretrain " + " ".join(shlex.quote(a) for a in argv)


def _shown(path: Path) -> str:
    """``path`` as a command line would write it: relative to the working folder when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
