"""What a DreamBooth configuration costs in GPU memory, before you run it.

Peak training memory is the sum of a few terms that a learner can reason about:

- trainable weights kept in float32 (mixed precision keeps fp32 master weights), 4 bytes/param;
- their gradients, 4 bytes/param;
- AdamW's two moments: 8 bytes/param in 32-bit, about 2 bytes/param with bitsandbytes' 8-bit
  blockwise state (one fp32 scale per 256 values and moment);
- the optimizer step's temporaries: torch's AdamW updates all tensors at once (foreach) with one
  fp32 scratch value per parameter, 4 bytes/param; bitsandbytes goes tensor by tensor, next to nothing;
- half-precision copies of the trainable weights that autocast makes for the forward pass;
- frozen parts (VAE, and the text encoder unless trained) in fp16 on a GPU, 2 bytes/param;
- activations saved for the backward pass: the only term that grows with batch and resolution,
  and the one gradient checkpointing cuts (it recomputes them block by block instead).

Not all of them are live at once. Weights, optimizer state and frozen parts stay; the others come
and go within a step, so the peak is the largest of three moments:

- the end of the forward pass: saved activations and autocast's weight copies, but no gradients yet
  (``zero_grad(set_to_none=True)`` freed them); gradient checkpointing saves so little that this
  moment stops mattering;
- the end of the backward pass: all gradients, and with checkpointing the block being recomputed;
- the optimizer step: all gradients and the step's temporaries (the peak with 32-bit AdamW).

``estimate`` reports the terms live at the peak moment (the others as 0), so they add up to the total.
The activation coefficients are per sample per latent pixel and were measured with
``benchmarks/sd15_memory.py`` on a randomly initialised SD 1.5-sized UNet; everything else is
counted exactly. With LoRA (``lora_rank``) the UNet joins the frozen parts and only the adapters
train; the backward pass still runs through the whole UNet to reach the first adapters, so the
activations are taken to be a full fine-tune's (an assumption: LoRA runs were not measured).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

GiB = 1024**3

# SD 1.5's parameter counts (UNet2DConditionModel, CLIPTextModel ViT-L/14, AutoencoderKL).
SD15_PARAMS = {"unet": 859_520_964, "text_encoder": 123_060_480, "vae": 83_653_863}


SD15_TRANSFORMER_WIDTHS = [320, 320, 640, 640, 1280, 1280] + [1280] + [1280] * 3 + [640] * 3 + [320] * 3


def sd15_lora_matrix_sizes(rank: int) -> list[int]:
    """The number of values in each LoRA matrix (A: r x d_in, B: d_out x r) on SD 1.5's UNet targets.

    Each of the UNet's 16 transformer blocks (width d) has self-attention q, k, v, out and
    cross-attention q, out (d x d: an r x d and a d x r matrix each) and cross-attention k, v
    (768 -> d: an r x 768 and a d x r matrix each)."""
    sizes = []
    for d in SD15_TRANSFORMER_WIDTHS:
        sizes += [rank * d] * 12 + [rank * 768, rank * d] * 2
    return sizes


def sd15_lora_params_per_rank() -> dict[str, int]:
    """LoRA parameters per unit of rank on SD 1.5's attention projections (helpers.diffusion.lora's targets):
    a rank-r adapter on a d_out x d_in projection adds r(d_in + d_out); the text encoder's 12 layers
    have q, k, v, out of 768 x 768."""
    return {"unet": sum(sd15_lora_matrix_sizes(1)), "text_encoder": 12 * 4 * (768 + 768)}


# Measured on an NVIDIA H100 80GB HBM3 on 2026-11-25 (torch 2.11.0+cu130, diffusers 0.42.1,
# bitsandbytes 0.50.2; 512 and 768 px, 2 samples a step); the byte counts are the same on any CUDA GPU
# up to a few percent of kernel workspaces.
# Activation bytes per sample per latent pixel with fp16 autocast and PyTorch SDPA attention
# (resolution 512 has 64x64 = 4096 latent pixels). "full": everything the forward pass saves for the
# backward pass (measured 303-305 kB at 512 and 768 px: linear in pixels); "checkpointed": what is
# live at the end of the backward pass, the checkpoint inputs and the block being recomputed
# (33-35 kB). Without autocast, activations take FP32_ACTIVATION_SCALE times as much (measured 1.51
# in full, 1.5 checkpointed: normalisations and softmax already run in fp32 under autocast). One
# miss: in fp32 without checkpointing the backward pass overlaps gradients with activations, and
# the peak is about 0.7 GiB (7%) above this estimate.
ACTIVATION_BYTES_PER_LATENT_PIXEL = {"full": 304_000, "checkpointed": 34_000}
FP32_ACTIVATION_SCALE = 1.5
# Text encoder activations per sample (77 tokens): measured 71 MB full, 7 MB checkpointed.
TEXT_ENCODER_ACTIVATION_BYTES = {"full": 71e6, "checkpointed": 7e6}
WORKSPACE_BYTES = 0.2 * GiB  # cuBLAS workspaces (about 0.1 GiB) and a step's short-lived buffers


@dataclass(frozen=True)
class MemoryConfig:
    unet_params: int = SD15_PARAMS["unet"]
    text_encoder_params: int = SD15_PARAMS["text_encoder"]
    vae_params: int = SD15_PARAMS["vae"]
    resolution: int = 512
    vae_factor: int = 8
    train_batch_size: int = 1
    with_prior_preservation: bool = True
    mixed_precision: str = "fp16"
    use_8bit_adam: bool = True
    gradient_checkpointing: bool = True
    train_text_encoder: bool = False
    lora_rank: int | None = None  # adapters only: the UNet (and text encoder) stay frozen


def adam_state_bytes(params: int, eight_bit: bool) -> float:
    """Two moments per parameter: fp32 (8 bytes) or 8-bit blockwise (2 bytes + fp32 scales per 256)."""
    return params * (2 + 2 * 4 / 256) if eight_bit else params * 8


def _moments(cfg: MemoryConfig) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """What comes and goes within a step, at each candidate for the peak; and what is always live."""
    trainable = cfg.unet_params + (cfg.text_encoder_params if cfg.train_text_encoder else 0)
    half = cfg.mixed_precision in ("fp16", "bf16")
    frozen = cfg.vae_params + (0 if cfg.train_text_encoder else cfg.text_encoder_params)
    if cfg.lora_rank:  # the base joins the frozen parts; the adapters are all that trains
        frozen, per_rank = frozen + trainable, sd15_lora_params_per_rank()
        trainable = cfg.lora_rank * (per_rank["unet"] + (per_rank["text_encoder"] if cfg.train_text_encoder else 0))
    samples = cfg.train_batch_size * (2 if cfg.with_prior_preservation else 1)
    latent_pixels = (cfg.resolution // cfg.vae_factor) ** 2
    mode = "checkpointed" if cfg.gradient_checkpointing else "full"
    activations = samples * latent_pixels * ACTIVATION_BYTES_PER_LATENT_PIXEL[mode] + (
        samples * TEXT_ENCODER_ACTIVATION_BYTES[mode] if cfg.train_text_encoder else 0
    )
    activations *= 1.0 if half else FP32_ACTIVATION_SCALE
    gradients = trainable * 4
    step_temporaries = 0 if cfg.use_8bit_adam else trainable * 4
    moments = {
        "end of forward": {"autocast weight copies": trainable * 2 if half else 0, "activations": activations},
        "end of backward": {"gradients": gradients},
        "optimizer step": {"gradients": gradients, "optimizer step temporaries": step_temporaries},
    }
    if cfg.gradient_checkpointing:  # little is saved in the forward; the recomputed block meets all gradients
        moments["end of forward"] = {}
        moments["end of backward"]["activations"] = activations
    always = {
        "weights (trainable, fp32)": trainable * 4,
        "optimizer state": adam_state_bytes(trainable, cfg.use_8bit_adam),
        "frozen parts": frozen * (2 if half else 4),
        "workspace": WORKSPACE_BYTES,
    }
    return moments, always


def peak_moment(cfg: MemoryConfig) -> str:
    """When in a step the peak falls: a trick that shrinks one moment's memory can move the peak to another."""
    moments, _ = _moments(cfg)
    return max(moments, key=lambda name: sum(moments[name].values()))


def estimate(cfg: MemoryConfig) -> dict[str, float]:
    """Peak training memory in bytes, term by term, plus ``total``; terms not live at the peak are 0."""
    moments, always = _moments(cfg)
    peak = moments[peak_moment(cfg)]
    parts = {
        "weights (trainable, fp32)": always["weights (trainable, fp32)"],
        "gradients": peak.get("gradients", 0),
        "optimizer state": always["optimizer state"],
        "optimizer step temporaries": peak.get("optimizer step temporaries", 0),
        "autocast weight copies": peak.get("autocast weight copies", 0),
        "frozen parts": always["frozen parts"],
        "activations": peak.get("activations", 0),
        "workspace": always["workspace"],
    }
    parts["total"] = sum(parts.values())
    return parts


def sd15_recipes() -> dict[str, MemoryConfig]:
    """From a plain full fine-tune to the recipe that fits a free Colab T4 (15 GiB)."""
    plain = MemoryConfig(mixed_precision="no", use_8bit_adam=False, gradient_checkpointing=False)
    fp16 = replace(plain, mixed_precision="fp16")
    eight = replace(fp16, use_8bit_adam=True)
    t4 = replace(eight, gradient_checkpointing=True)
    return {
        "fp32, AdamW": plain,
        "+ fp16 mixed precision": fp16,
        "+ 8-bit AdamW": eight,
        "+ gradient checkpointing (T4 recipe)": t4,
        "T4 recipe + text encoder": replace(t4, train_text_encoder=True),
    }


def table(recipes: dict[str, MemoryConfig] | None = None) -> list[dict[str, str | float]]:
    """Rows of (recipe, GiB per term, total GiB, the moment of the step where the peak falls) for display."""
    rows = []
    for name, cfg in (recipes or sd15_recipes()).items():
        parts = estimate(cfg)
        rows.append({"recipe": name, **{k: round(v / GiB, 2) for k, v in parts.items()}, "peak at": peak_moment(cfg)})
    return rows
