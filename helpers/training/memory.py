"""What a DreamBooth configuration costs in GPU memory, before you run it.

Peak training memory is the sum of a few terms that a learner can reason about:

- trainable weights kept in float32 (mixed precision keeps fp32 master weights), 4 bytes/param;
- their gradients, 4 bytes/param;
- AdamW's two moments: 8 bytes/param in 32-bit, about 2 bytes/param with bitsandbytes' 8-bit
  blockwise state (one fp32 scale per 256 values and moment);
- the optimizer step's temporaries: torch's AdamW updates all tensors at once (foreach) with one
  fp32 scratch value per parameter, 4 bytes/param; bitsandbytes goes tensor by tensor, next to nothing;
- half-precision copies of the trainable weights that autocast makes for the forward pass;
- frozen parts in fp16 on a GPU, 2 bytes/param: the encoders and VAE (the text encoder unless trained), and
  with LoRA the base (UNet or transformer), which a 4-bit base (QLoRA) stores in about 0.56 bytes/param;
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

``model="sd35"`` counts SD 3.5 Medium instead: its MMDiT-X transformer, two CLIP encoders, T5 (if loaded)
and VAE, LoRA on the SD3 script's projections, a 4-bit base, and encoders and VAE parked off the GPU once
the trainer has cached their output (``helpers.dreambooth.flow_trainer``). Its activations are per token
(image tokens and text tokens), measured by ``benchmarks/sd35_activations.py`` on a CPU.
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


# SD 3.5 Medium, counted from its configs (tests/sd3_shaped.py builds them; tests/training/test_memory.py
# counts them again): the transformer, the two CLIPs with their projections, T5-XXL's encoder, the VAE.
SD35_PARAMS = {
    "transformer": 2_243_171_520,
    "clip_l": 123_650_304,
    "clip_g": 694_659_840,
    "t5": 4_893_906_944,
    "vae": 83_819_683,
}
SD35_LINEAR_WEIGHTS = 2_241_822_720  # the transformer's nn.Linear weights: what a 4-bit base stores in NF4
SD35_POSITION_TABLE = 384 * 384 * 1536  # a buffer (pos_embed_max_size 384, width 1536), in the weights' dtype
SD35_T5_FP32 = 1_006_632_960  # T5's feed-forward output weights (wo), which transformers keeps in fp32
SD35_LORA_PARAMS_PER_RANK = 586_752  # the SD3 script's 8 projections in each of the 24 blocks
NF4_BYTES_PER_WEIGHT = 0.5 + 4 / 64  # 4 bits, and one fp32 scale per block of 64
# benchmarks/sd35_activations.py (bf16 autocast on a CPU, rank-16 LoRA, 2 bytes a value as fp16): bytes a
# sample saves per image token (patch 2: a 512 px image is 1024) and per text token (77 CLIP + 77 T5).
SD35_ACTIVATION_BYTES_PER_TOKEN = {
    "full": {"image": 1_857_000, "text": 1_592_000},
    "checkpointed": {"image": 170_000, "text": 142_000},
}
CLIP_TOKENS = 77


@dataclass(frozen=True)
class MemoryConfig:
    model: str = "sd15"  # "sd15", or "sd35" (SD 3.5 Medium; the *_params fields below are SD 1.5's)
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
    quantized_base: bool = False  # sd35 with LoRA: the transformer's linear weights in 4-bit NF4 (QLoRA)
    t5: bool = True  # sd35: T5 loaded (the course's sd35 profile leaves it out on a T4)
    park_encoders: bool = False  # sd35: encoders and VAE off the GPU after caching (the flow trainer's way)
    max_sequence_length: int = 77  # sd35: T5's tokens after CLIP's 77 (zeros without T5)


def adam_state_bytes(params: int, eight_bit: bool) -> float:
    """Two moments per parameter: fp32 (8 bytes) or 8-bit blockwise (2 bytes + fp32 scales per 256)."""
    return params * (2 + 2 * 4 / 256) if eight_bit else params * 8


def _sd15_parts(cfg: MemoryConfig) -> tuple[int, float, float, float]:
    """(trainable parameters, frozen base bytes, encoder and VAE bytes, activation bytes) of SD 1.5."""
    trainable = cfg.unet_params + (cfg.text_encoder_params if cfg.train_text_encoder else 0)
    half = cfg.mixed_precision in ("fp16", "bf16")
    encoders = cfg.vae_params + (0 if cfg.train_text_encoder else cfg.text_encoder_params)
    base = 0
    if cfg.lora_rank:  # the base joins the frozen parts; the adapters are all that trains
        base, per_rank = trainable, sd15_lora_params_per_rank()
        trainable = cfg.lora_rank * (per_rank["unet"] + (per_rank["text_encoder"] if cfg.train_text_encoder else 0))
    samples = cfg.train_batch_size * (2 if cfg.with_prior_preservation else 1)
    latent_pixels = (cfg.resolution // cfg.vae_factor) ** 2
    mode = "checkpointed" if cfg.gradient_checkpointing else "full"
    activations = samples * latent_pixels * ACTIVATION_BYTES_PER_LATENT_PIXEL[mode] + (
        samples * TEXT_ENCODER_ACTIVATION_BYTES[mode] if cfg.train_text_encoder else 0
    )
    activations *= 1.0 if half else FP32_ACTIVATION_SCALE
    size = 2 if half else 4
    return trainable, base * size, encoders * size, activations


def _sd35_parts(cfg: MemoryConfig) -> tuple[int, float, float, float]:
    """The same for SD 3.5 Medium; measured in half precision only, and with its CLIP encoders frozen."""
    if cfg.mixed_precision not in ("fp16", "bf16") or cfg.train_text_encoder:
        raise ValueError("SD 3.5 Medium's terms are measured with fp16 mixed precision and frozen text encoders")
    if cfg.quantized_base and not cfg.lora_rank:
        raise ValueError("a 4-bit base trains adapters only: set lora_rank")
    p = SD35_PARAMS
    trainable = cfg.lora_rank * SD35_LORA_PARAMS_PER_RANK if cfg.lora_rank else p["transformer"]
    base = SD35_POSITION_TABLE * (2 if cfg.lora_rank else 4)  # a full fine-tune's transformer is fp32
    if cfg.lora_rank and cfg.quantized_base:
        base += SD35_LINEAR_WEIGHTS * NF4_BYTES_PER_WEIGHT + (p["transformer"] - SD35_LINEAR_WEIGHTS) * 2
    elif cfg.lora_rank:
        base += p["transformer"] * 2
    encoders = (p["clip_l"] + p["clip_g"] + p["vae"]) * 2
    encoders += ((p["t5"] - SD35_T5_FP32) * 2 + SD35_T5_FP32 * 4) if cfg.t5 else 0
    samples = cfg.train_batch_size * (2 if cfg.with_prior_preservation else 1)
    image_tokens = (cfg.resolution // cfg.vae_factor // 2) ** 2
    per_token = SD35_ACTIVATION_BYTES_PER_TOKEN["checkpointed" if cfg.gradient_checkpointing else "full"]
    activations = samples * (
        image_tokens * per_token["image"] + (CLIP_TOKENS + cfg.max_sequence_length) * per_token["text"]
    )
    return trainable, base, 0 if cfg.park_encoders else encoders, activations


def _moments(cfg: MemoryConfig) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """What comes and goes within a step, at each candidate for the peak; and what is always live."""
    trainable, base, encoders, activations = (_sd35_parts if cfg.model == "sd35" else _sd15_parts)(cfg)
    half = cfg.mixed_precision in ("fp16", "bf16")
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
        "frozen base": base,
        "encoders and VAE": encoders,
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
        "frozen base": always["frozen base"],
        "encoders and VAE": always["encoders and VAE"],
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


def sd35_recipes(rank: int = 16) -> dict[str, MemoryConfig]:
    """SD 3.5 Medium LoRA at 512 px with prior preservation: from everything on the GPU to the T4 recipe of
    notebook 12 (rank-``rank`` adapters throughout; a full fine-tune is not a T4's to try)."""
    plain = MemoryConfig(
        model="sd35", lora_rank=rank, use_8bit_adam=False, gradient_checkpointing=False, t5=True, park_encoders=False
    )
    no_t5 = replace(plain, t5=False)
    parked = replace(no_t5, park_encoders=True)
    checkpointed = replace(parked, gradient_checkpointing=True)
    eight = replace(checkpointed, use_8bit_adam=True)
    return {
        "fp16 base, T5, all on the GPU": plain,
        "+ no T5 (the sd35 profile)": no_t5,
        "+ encoders and VAE parked": parked,
        "+ gradient checkpointing": checkpointed,
        "+ 8-bit AdamW": eight,
        "+ 4-bit NF4 base (T4 recipe)": replace(eight, quantized_base=True),
    }


def table(recipes: dict[str, MemoryConfig] | None = None) -> list[dict[str, str | float]]:
    """Rows of (recipe, GiB per term, total GiB, the moment of the step where the peak falls) for display."""
    rows = []
    for name, cfg in (recipes or sd15_recipes()).items():
        parts = estimate(cfg)
        rows.append({"recipe": name, **{k: round(v / GiB, 2) for k, v in parts.items()}, "peak at": peak_moment(cfg)})
    return rows
