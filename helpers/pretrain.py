"""Pretrain the toy Stable Diffusion and the toy judge from scratch on the toy world.

    python -m helpers.pretrain vae   --output data/toy-sd
    python -m helpers.pretrain judge --output data/toy-judge --vae data/toy-sd/vae
    python -m helpers.pretrain unet  --output data/toy-sd
    python -m helpers.pretrain all   (the three in order, with the defaults)

The model's stages run in the order SD itself was built: an autoencoder first (so that diffusion
happens in a small latent space), then the text encoder and UNet together on (latent, caption)
pairs with the usual epsilon-prediction loss. The judge comes after the autoencoder because it
learns to read images as they come out of it. Every stage is seeded; the model card written next
to the weights records the exact command, seeds, steps and wall time.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from torch.nn import functional as F
from tqdm.auto import tqdm
from transformers import CLIPTextModel

from helpers import judge as judge_mod
from helpers import toymodel, toytokenizer, toyworld
from helpers.atomic import replace_dir_atomic, write_text_atomic
from helpers.cli import UsageError, run_main
from helpers.losses import snr_weights
from helpers.runtime import configure_cpu

DATA = Path(__file__).resolve().parent.parent / "data"
STAGES = "stages.json"  # every stage that produced the weights: command, seed, steps, time


def _render_batch(seeds: range, names: dict) -> torch.Tensor:
    images = [toyworld.render(toyworld.random_sample(s, names).scene, seed=s) for s in seeds]
    return judge_mod.to_tensor(images)


def _one_cycle(opt: torch.optim.Optimizer, lr: float, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05,
                                               anneal_strategy="cos", div_factor=10, final_div_factor=20)


# --------------------------------------------------------------------------- VAE

def vae_stage_dir(output: Path) -> Path:
    """Where the first stage leaves its VAE for the second (not part of the released model)."""
    return output.with_name(f"{output.name}-vae-stage")


def train_vae(stage: Path, steps: int, batch_size: int, seed: int, lr: float) -> dict:
    """Reconstruction (L1 + MSE) plus a tiny KL term, as in SD's first stage, on fresh renders."""
    torch.manual_seed(seed)
    names = toyworld.named_instances()
    vae = toymodel.vae()
    # Start the posterior's log-variance at -6 (std 0.05), as small as a trained SD VAE's: with the
    # default 0 (std 1), sampled latents are as noisy as they are informative and the decoder
    # learns to blur colours before the tiny KL weight lets the variance shrink.
    with torch.no_grad():
        vae.quant_conv.bias[vae.config.latent_channels:] = -6.0
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = _one_cycle(opt, lr, steps)
    start = time.time()
    for step in (bar := tqdm(range(steps), desc="vae")):
        base = seed * 10**6 + step * batch_size
        x = _render_batch(range(base, base + batch_size), names)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    vae.eval()
    with torch.no_grad():
        x = _render_batch(range(9 * 10**8, 9 * 10**8 + 512), names)
        latents = torch.cat([vae.encode(x[i:i + 128]).latent_dist.mean for i in range(0, 512, 128)])
        recon = torch.cat([vae.decode(latents[i:i + 128]).sample for i in range(0, 512, 128)])
    # SD rescales latents to unit variance before diffusion (0.18215 for SD 1.x); measure ours.
    vae.register_to_config(scaling_factor=round(1.0 / latents.std().item(), 5))
    vae.save_pretrained(stage, safe_serialization=True)
    psnr = 10 * math.log10(4.0 / F.mse_loss(recon, x).item())
    return {"steps": steps, "batch_size": batch_size, "seed": seed, "learning_rate": lr,
            "seconds": round(time.time() - start, 1),
            "held_out_psnr_db": round(psnr, 2), "scaling_factor": vae.config.scaling_factor}


# --------------------------------------------------------------------------- text encoder + UNet

def encode_dataset(vae: AutoencoderKL, count: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """Render ``count`` captioned scenes and encode them to scaled latents once (SD caches nothing;
    on a CPU, encoding every step would cost more than the UNet)."""
    names = toyworld.named_instances()
    latents, captions = [], []
    for i in tqdm(range(0, count, 256), desc="encode dataset"):
        seeds = range(seed * 10**7 + i, seed * 10**7 + min(i + 256, count))
        samples = [toyworld.random_sample(s, names) for s in seeds]
        x = judge_mod.to_tensor([toyworld.render(sm.scene, seed=s) for sm, s in zip(samples, seeds)])
        with torch.no_grad():
            latents.append(vae.encode(x).latent_dist.mean * vae.config.scaling_factor)
        captions += [sm.caption for sm in samples]
    return torch.cat(latents), captions


class EMA:
    """Exponential moving average of weights with the usual warm-up, as diffusers' EMAModel."""

    def __init__(self, modules: list[torch.nn.Module], decay: float) -> None:
        self.decay, self.step = decay, 0
        self.params = [p for m in modules for p in m.parameters()]
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        self.step += 1
        d = min(self.decay, (1 + self.step) / (10 + self.step))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1 - d)

    @torch.no_grad()
    def copy_to(self) -> None:
        for s, p in zip(self.shadow, self.params):
            p.copy_(s)


def train_unet(output: Path, stage: Path, steps: int, batch_size: int, seed: int, dataset_size: int, lr: float,
               init_from: Path | None = None, cfg_dropout: float = 0.1,
               snr_gamma: float = 5.0) -> tuple[dict, Path]:
    """Train text encoder and UNet jointly on cached latents, epsilon prediction, min-SNR weighting;
    from scratch, or on from the weights of ``init_from`` (a second phase, on fresh scenes)."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    tok_dir = Path(tempfile.mkdtemp(prefix="toy-tokenizer-"))
    tokenizer = toytokenizer.build_tokenizer(tok_dir)
    vae = AutoencoderKL.from_pretrained(stage).eval()
    start = time.time()
    latents, captions = encode_dataset(vae, dataset_size, seed)
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    empty = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length,
                      return_tensors="pt").input_ids
    if init_from is None:
        text_encoder, unet = toymodel.text_encoder(tokenizer), toymodel.unet()
    else:
        text_encoder = CLIPTextModel.from_pretrained(init_from, subfolder="text_encoder")
        unet = UNet2DConditionModel.from_pretrained(init_from, subfolder="unet")
    noise_scheduler = toymodel.train_scheduler()
    params = list(text_encoder.parameters()) + list(unet.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    sched = _one_cycle(opt, lr, steps)
    ema = EMA([text_encoder, unet], decay=0.999)
    for step in (bar := tqdm(range(steps), desc="text encoder + unet")):
        idx = torch.tensor(rng.sample(range(len(latents)), batch_size))
        batch_ids = ids[idx].clone()
        batch_ids[torch.rand(batch_size) < cfg_dropout] = empty[0]
        x0 = latents[idx]
        noise = torch.randn_like(x0)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch_size,))
        xt = noise_scheduler.add_noise(x0, noise, t)
        pred = unet(xt, t, text_encoder(batch_ids)[0]).sample
        per_sample = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (per_sample * snr_weights(noise_scheduler, t, snr_gamma)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ema.update()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    ema.copy_to()
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=toymodel.sample_scheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    build = output.with_name(f".{output.name}.build")
    pipe.save_pretrained(build, safe_serialization=True)
    report = {"steps": steps, "batch_size": batch_size, "seed": seed, "dataset_size": dataset_size,
              "learning_rate": lr, "init_from": str(init_from) if init_from else None,
              "seconds": round(time.time() - start, 1)}
    return report, build


# --------------------------------------------------------------------------- model card

def _stage_row(entry: dict) -> str:
    r = entry["report"]
    if entry["stage"] == "VAE":
        notes = (f"lr {r['learning_rate']}, held-out PSNR {r['held_out_psnr_db']} dB, "
                 f"scaling factor {r['scaling_factor']}")
    else:
        notes = (f"{r['dataset_size']} cached latents of fresh scenes, peak lr {r['learning_rate']}, min-SNR 5, "
                 f"EMA 0.999, 10% empty captions{', continued from the row above' if r.get('init_from') else ''}")
    return (f"| {entry['stage']} | `{entry['command']}` | {r['steps']} | {r['batch_size']} | {r['seed']} | "
            f"{r['seconds']} s | {notes} |")


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
AutoencoderKL 64x64 -> 4x16x16, UNet2DConditionModel, DDIM sampling with SD 1.x's noise schedule)
pretrained from scratch on the course's procedural toy world. It exists so that every lesson,
DreamBooth included, runs on a laptop CPU and in CI without a network.

Produced by these commands, in this order (`python -m helpers.pretrain all` runs the same stages
with the same settings), {total / 60:.0f} minutes in all on a 2-core CPU:

| stage | command | steps | batch | seed | wall time | notes |
|---|---|---|---|---|---|---|
{rows}

Load it offline with `StableDiffusionPipeline.from_pretrained("data/toy-sd")`.
The training data are toy renders only; the model draws nothing but the toy world.
"""


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m helpers.pretrain", description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=("judge", "vae", "unet", "all"))
    parser.add_argument("--output", type=Path, default=None, help="output folder (default: data/toy-sd or data/toy-judge)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--judge_steps", type=int, default=1200)
    parser.add_argument("--vae", type=Path, default=DATA / "toy-sd" / "vae",
                        help="judge stage: the toy model's VAE, through which half its training images pass")
    parser.add_argument("--vae_steps", type=int, default=1800)
    parser.add_argument("--vae_batch_size", type=int, default=32)
    parser.add_argument("--vae_learning_rate", type=float, default=2e-3)
    parser.add_argument("--unet_steps", type=int, default=2200)
    parser.add_argument("--unet_batch_size", type=int, default=64)
    parser.add_argument("--dataset_size", type=int, default=40000)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--init_from", type=Path, default=None,
                        help="unet stage: continue from this pipeline's text encoder and UNet")
    return parser.parse_args(argv)


# `all` runs the UNet stage twice: from scratch, then on from those weights with fresh scenes and a
# lower peak learning rate. The second phase is what lifts adherence over the targets: on the toy-model
# benchmark's first seed, class from 81% to 91% and colour from 69% to 87%.
SECOND_PHASE = ["--seed", "1", "--unet_steps", "1400", "--learning_rate", "5e-4"]


def _unet_stage(output: Path, args: argparse.Namespace, command: str) -> None:
    stage = vae_stage_dir(output)
    if args.init_from is not None:
        stages = json.loads((args.init_from / STAGES).read_text())
    elif (stage / "report.json").exists():
        vae_report = json.loads((stage / "report.json").read_text())
        stages = [{"stage": "VAE", "command": vae_report.pop("command"), "report": vae_report}]
    else:
        raise UsageError(f"no trained VAE in {stage}: run `python -m helpers.pretrain vae` first")
    report, build = train_unet(output, stage, args.unet_steps, args.unet_batch_size, args.seed, args.dataset_size,
                               args.learning_rate, init_from=args.init_from)
    stages.append({"stage": "text encoder + UNet", "command": command, "report": report})
    write_text_atomic(build / STAGES, json.dumps(stages, indent=2))
    write_text_atomic(build / "README.md", _model_card(stages))
    replace_dir_atomic(build, output)
    print(json.dumps(report))


def _judge_stage(output: Path, vae_dir: Path, args: argparse.Namespace, command: str) -> None:
    vae = AutoencoderKL.from_pretrained(vae_dir).eval()
    print(json.dumps(judge_mod.train_judge(output, vae, steps=args.judge_steps, seed=args.seed, command=command)))


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(argv)
    configure_cpu()
    command = "python -m helpers.pretrain " + " ".join(shlex.quote(a) for a in argv)
    if args.stage == "judge":
        _judge_stage(args.output or DATA / "toy-judge", args.vae, args, command)
        return
    output = (args.output or DATA / "toy-sd").resolve()
    if args.stage in ("vae", "all"):
        stage = vae_stage_dir(output)
        vae_report = train_vae(stage, args.vae_steps, args.vae_batch_size, args.seed, args.vae_learning_rate)
        write_text_atomic(stage / "report.json", json.dumps(vae_report | {"command": command}))
        print(json.dumps(vae_report))
    if args.stage == "unet":
        _unet_stage(output, args, command)
    if args.stage == "all":
        _judge_stage(DATA / "toy-judge", vae_stage_dir(output), args, command)
        _unet_stage(output, _parse(["unet"]), "python -m helpers.pretrain unet")
        second = ["unet", "--init_from", str(output)] + SECOND_PHASE
        _unet_stage(output, _parse(second), "python -m helpers.pretrain " + " ".join(second))


if __name__ == "__main__":
    run_main(main)
