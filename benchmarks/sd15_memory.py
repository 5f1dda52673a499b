"""Does an SD 1.5 DreamBooth recipe fit a T4? Measures peak GPU memory and checks helpers.training.memory.

    python benchmarks/sd15_memory.py [--steps 3] [--resolution 512] [--recipes "+ 8-bit AdamW" ...] [--extra]

Needs a CUDA GPU (without one it says so and exits with status 2), diffusers, and bitsandbytes for
the 8-bit recipes; no weights and no network: the models are randomly initialised from SD 1.5's
configs (UNet 859.5 M, CLIP ViT-L/14 text encoder 123.1 M, VAE 83.7 M parameters). Memory does not
depend on the weights' values, only on their shapes and the recipe.

For each recipe of ``helpers.training.memory.sd15_recipes()`` it builds fresh models and runs a few training
steps the way ``helpers/dreambooth/trainer.py`` does: trainable UNet (and text encoder) in fp32, the forward under
torch.autocast fp16 when mixed precision is on (with a GradScaler, as accelerate does), frozen VAE and
text encoder in fp16, a 512x512 batch VAE-encoded under no_grad every step (the trainer's uncached
path), train_batch_size 1 with prior preservation (2 samples a step), epsilon MSE loss, gradient
clipping at 1.0, torch AdamW or bitsandbytes AdamW8bit, zero_grad(set_to_none=True). The peak is
torch.cuda.max_memory_allocated() (and max_memory_reserved()) since a reset just before the first
step. "fits T4" asks whether reserved memory plus about 0.5 GiB of CUDA context stays within a
T4's 15 GiB. ``--extra`` adds configurations that check the terms the course's recipes do not reach
(fp32 activations, text-encoder activations without checkpointing). It prints a table and then one
JSON object with the details, including memory after each phase of each step.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python benchmarks/sd15_memory.py` from anywhere

from helpers.training.memory import SD15_PARAMS, GiB, MemoryConfig, estimate, sd15_recipes  # noqa: E402

T4_GIB = 15.0  # what a Colab T4 offers
CUDA_CONTEXT_GIB = 0.5  # CUDA context and kernels: outside PyTorch's allocator, not in max_memory_reserved

UNET_CONFIG = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
    act_fn="silu",
    flip_sin_to_cos=True,
    freq_shift=0,
    downsample_padding=1,
    mid_block_scale_factor=1,
)
TEXT_CONFIG = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
)
EXTRA_RECIPES = {
    "check: fp32, 8-bit AdamW": MemoryConfig(mixed_precision="no", use_8bit_adam=True, gradient_checkpointing=False),
    "check: fp32, 8-bit AdamW, checkpointing": MemoryConfig(
        mixed_precision="no", use_8bit_adam=True, gradient_checkpointing=True
    ),
    "check: + 8-bit AdamW + text encoder": MemoryConfig(gradient_checkpointing=False, train_text_encoder=True),
}
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    norm_num_groups=32,
    act_fn="silu",
    sample_size=512,
    scaling_factor=0.18215,
)


def build_models(cfg: MemoryConfig, device: torch.device) -> dict:
    """Fresh, randomly initialised SD 1.5-sized models, placed and cast as the trainer does."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    with device:  # initialise directly on the GPU: seconds instead of a minute of CPU work
        unet = UNet2DConditionModel(**UNET_CONFIG)
        text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
        vae = AutoencoderKL(**VAE_CONFIG)
    counts = {
        name: sum(p.numel() for p in m.parameters())
        for name, m in (("unet", unet), ("text_encoder", text_encoder), ("vae", vae))
    }
    if counts != SD15_PARAMS:
        raise SystemExit(f"parameter counts {counts} differ from helpers.training.memory.SD15_PARAMS {SD15_PARAMS}")
    half = torch.float16 if cfg.mixed_precision == "fp16" else torch.float32
    vae.requires_grad_(False)
    text_encoder.requires_grad_(cfg.train_text_encoder)
    for part in [vae] + ([] if cfg.train_text_encoder else [text_encoder]):
        part.to(dtype=half)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if cfg.train_text_encoder:
            text_encoder.gradient_checkpointing_enable()
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
    )
    return {"unet": unet, "text_encoder": text_encoder, "vae": vae, "scheduler": scheduler, "counts": counts}


def make_optimizer(params: list, eight_bit: bool) -> torch.optim.Optimizer:
    kwargs = dict(lr=5e-6, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    if eight_bit:
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))


def measure(cfg: MemoryConfig, steps: int, device: torch.device) -> dict:
    """Peak memory of ``steps`` training steps of one recipe, with fresh models."""
    models = build_models(cfg, device)
    unet, text_encoder, vae, scheduler = models["unet"], models["text_encoder"], models["vae"], models["scheduler"]
    half = cfg.mixed_precision == "fp16"
    n = cfg.train_batch_size
    samples = n * (2 if cfg.with_prior_preservation else 1)
    gen = torch.Generator(device).manual_seed(0)
    ids = torch.randint(0, TEXT_CONFIG["vocab_size"], (samples, 77), device=device, generator=gen)
    if not cfg.train_text_encoder:  # frozen text encoder: the prompts are encoded once, before training
        with torch.no_grad():
            embeddings = text_encoder(ids)[0]
    params = [p for p in unet.parameters() if p.requires_grad]
    if cfg.train_text_encoder:
        params += list(text_encoder.parameters())
    optimizer = make_optimizer(params, cfg.use_8bit_adam)
    # a low initial scale: with random weights the default 2**16 overflows and skips the first steps,
    # which would leave the optimizer state unallocated
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**8, enabled=half)
    unet.train()
    text_encoder.train(cfg.train_text_encoder)

    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    phases: list[dict] = []

    def mark(step: int, phase: str) -> None:
        torch.cuda.synchronize()
        phases.append(
            {
                "step": step,
                "phase": phase,
                "allocated": torch.cuda.memory_allocated(),
                "peak": torch.cuda.max_memory_allocated(),
            }
        )

    mark(0, "start")
    skipped = 0
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        x = torch.rand(samples, 3, cfg.resolution, cfg.resolution, device=device, generator=gen) * 2 - 1
        with torch.no_grad():
            latents = vae.encode(x.to(vae.dtype)).latent_dist.sample().float() * vae.config.scaling_factor
        del x
        noise = torch.randn(latents.shape, device=device, generator=gen)
        timesteps = torch.randint(0, 1000, (samples,), device=device, generator=gen)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        mark(step, "vae encode")
        with torch.autocast("cuda", dtype=torch.float16, enabled=half):
            cond = text_encoder(ids)[0] if cfg.train_text_encoder else embeddings
            pred = unet(noisy, timesteps, cond).sample
        loss = F.mse_loss(pred[:n].float(), noise[:n])  # instance loss
        if cfg.with_prior_preservation:
            loss = loss + 1.0 * F.mse_loss(pred[n:].float(), noise[n:])  # prior_loss_weight 1.0
        mark(step, "forward")
        scaler.scale(loss).backward()
        del pred, cond, loss
        mark(step, "backward")
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scale = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        skipped += half and scaler.get_scale() < scale
        optimizer.zero_grad(set_to_none=True)
        mark(step, "optimizer step")
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    allocated, reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
    peak_phase = next(p for p in phases if p["peak"] >= allocated)
    forward = [b["allocated"] - a["allocated"] for a, b in zip(phases, phases[1:]) if b["phase"] == "forward"]
    result = {
        "allocated_gib": allocated / GiB,
        "reserved_gib": reserved / GiB,
        "peak_reached_in": f"step {peak_phase['step']} {peak_phase['phase']}",
        "optimizer_state_gib": state_bytes(optimizer) / GiB,
        "skipped_steps": int(skipped),
        "forward_saved_gib": max(forward) / GiB,  # activations (and autocast copies) kept for the backward pass
        "steady_gib": phases[-1]["allocated"] / GiB,  # weights, optimizer state, frozen parts between steps
        "seconds_per_step": seconds / steps,
        "phases": [
            {
                "step": p["step"],
                "phase": p["phase"],
                "allocated_gib": round(p["allocated"] / GiB, 3),
                "peak_gib": round(p["peak"] / GiB, 3),
            }
            for p in phases
        ],
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--recipes", nargs="*", help="names from helpers.training.memory.sd15_recipes() (default: all)")
    parser.add_argument("--extra", action="store_true", help="also measure the check configurations")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("benchmarks/sd15_memory.py measures GPU memory: it needs a CUDA GPU, and none is available")
        sys.exit(2)
    import diffusers
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # not the fp16 VAE cast warning, once per recipe
    device = torch.device("cuda")
    recipes = {
        k: replace(v, resolution=args.resolution)
        for k, v in sd15_recipes().items()
        if not args.recipes or k in args.recipes
    }
    if args.extra:
        recipes |= {k: replace(v, resolution=args.resolution) for k, v in EXTRA_RECIPES.items()}
    try:
        import bitsandbytes

        bnb_version = bitsandbytes.__version__
    except Exception as err:  # noqa: BLE001 - report, and skip the 8-bit recipes
        bnb_version = f"unavailable ({type(err).__name__})"
    rows = []
    for name, cfg in recipes.items():
        if cfg.use_8bit_adam and bnb_version.startswith("unavailable"):
            rows.append({"recipe": name, "error": f"bitsandbytes {bnb_version}"})
            continue
        measured = measure(cfg, args.steps, device)
        gc.collect()  # the recipe's models and optimizer are gone: the next one starts from an empty GPU
        torch.cuda.empty_cache()
        est = estimate(cfg)["total"] / GiB
        rows.append(
            {
                "recipe": name,
                "estimate_gib": est,
                **measured,
                "error_pct": 100 * (est - measured["allocated_gib"]) / measured["allocated_gib"],
                "fits_t4": measured["reserved_gib"] + CUDA_CONTEXT_GIB <= T4_GIB,
                "config": asdict(cfg),
            }
        )

    print(f"{torch.cuda.get_device_name(0)}, {args.resolution} px, {args.steps} steps, 2 samples a step")
    print(f"{'recipe':40} {'allocated':>9} {'reserved':>9} {'estimate':>9} {'error':>7}  fits T4*")
    for r in rows:
        if "error" in r:
            print(f"{r['recipe']:40} skipped: {r['error']}")
            continue
        print(
            f"{r['recipe']:40} {r['allocated_gib']:8.2f}G {r['reserved_gib']:8.2f}G {r['estimate_gib']:8.2f}G "
            f"{r['error_pct']:+6.1f}%  {'yes' if r['fits_t4'] else 'no'}"
        )
    print(
        f"GiB = 2**30 bytes; error = (estimate - allocated) / allocated; *fits T4: reserved + "
        f"{CUDA_CONTEXT_GIB} GiB CUDA context <= {T4_GIB} GiB"
    )
    report = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "bitsandbytes": bnb_version,
        "resolution": args.resolution,
        "steps": args.steps,
        "t4_gib": T4_GIB,
        "cuda_context_gib": CUDA_CONTEXT_GIB,
        "recipes": rows,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
