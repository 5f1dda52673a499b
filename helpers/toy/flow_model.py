"""The toy flow-matching model: a real ``StableDiffusion3Pipeline``, sized for a laptop CPU.

It is built from the shipped toy SD (``data/toy-sd``, ``helpers.toy.model``) so that the two toys read
the same words and draw in the same latent space, and only the denoiser is new:

- ``SD3Transformer2DModel`` (MMDiT): patch 2 on the toy's 8x16x16 latents (8x8 = 64 image tokens),
  6 joint blocks of 4 heads of 32, RMS-normed queries and keys as in SD 3.5; about 3.5 M parameters,
  about what the toy UNet costs per training step on a CPU.
- ``FlowMatchEulerDiscreteScheduler`` with ``shift`` 1.0 (``SHIFT`` says why).
- The toy VAE, with ``shift_factor`` 0.0 (``flow_vae`` says why).
- Two ``CLIPTextModelWithProjection`` made from the toy text encoder (``projected``), and no T5
  (``MAX_SEQUENCE_LENGTH`` says what the pipeline feeds the transformer in its place).

SD 3.5 feeds its transformer the penultimate hidden states of CLIP-L (768) and CLIP-G (1280), side by
side and zero-padded to T5's width (4096), then T5's tokens; the pooled outputs of both CLIPs, side by
side (2048), steer the adaptive norms. The toy does the same at width 96 + 96 = 192: ``joint_attention_dim``
and ``pooled_projection_dim`` are both 192, so that nothing is padded.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from helpers.core.paths import DATA
from helpers.diffusion.loading import absent_parts
from helpers.toy import model as toymodel

TOY_SD = DATA / "toy-sd"
PATCH_SIZE = 2
NUM_LAYERS = 6
NUM_HEADS = 4
HEAD_DIM = 32
TEXT_WIDTH = 2 * toymodel.TEXT_DIM  # the two CLIP encoders' features side by side

# Without a T5 encoder the pipeline feeds the transformer ``max_sequence_length`` tokens of zeros in T5's
# place (256 unless the call says otherwise). They are not masked: every zero token becomes the same
# token in every block, and N identical keys act as one key whose attention logit gains log N. A model
# trained with one N therefore draws differently with another, and 256 tokens beside the toy's 24 CLIP
# tokens and 64 image tokens make a training step about five times as slow on a CPU. The toy is trained
# with none, so every call to the toy pipeline passes ``max_sequence_length=MAX_SEQUENCE_LENGTH``.
MAX_SEQUENCE_LENGTH = 0

# The timestep shift moves training and sampling towards the noisy end: sigma -> s sigma / (1 + (s - 1) sigma).
# It exists because a bigger image keeps more of itself at a given noise level (neighbouring pixels
# average the noise away), so its structure is decided later. SD3 uses 3.0 at 128x128 latents (4096
# tokens); its paper's rule, shift proportional to the square root of the token count, gives
# 3.0 * sqrt(64 / 4096) = 0.375 at the toy's 64 tokens, and FLUX's rule (log shift linear in the
# token count, 0.5 at 256 tokens, 1.15 at 4096) extrapolates to 1.6. The two bracket 1.0, and the toy
# world's layout ("on the left") is decided at the noisiest steps, which a shift below 1 would starve
# (the toy UNet needed extra high-noise batches to learn it). 1.0 is no shift at all: the scheduler's
# sigma is then the t of x_t = (1 - t) x_0 + t eps, as notebook 11 writes it.
SHIFT = 1.0


def transformer(
    num_layers: int = NUM_LAYERS, heads: int = NUM_HEADS, head_dim: int = HEAD_DIM
) -> SD3Transformer2DModel:
    """A randomly initialised MMDiT for the toy's latents; ``pos_embed_max_size`` is the toy's 8x8 patch
    grid (SD3's 192 leaves room for images larger than its 128x128 latents; the toy draws 64x64 only)."""
    grid = toymodel.LATENT_SIZE // PATCH_SIZE
    return SD3Transformer2DModel(
        sample_size=toymodel.LATENT_SIZE,
        patch_size=PATCH_SIZE,
        in_channels=toymodel.LATENT_CHANNELS,
        out_channels=toymodel.LATENT_CHANNELS,
        num_layers=num_layers,
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=TEXT_WIDTH,
        caption_projection_dim=heads * head_dim,
        pooled_projection_dim=TEXT_WIDTH,
        pos_embed_max_size=grid,
        qk_norm="rms_norm",
    )


def scheduler() -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=SHIFT)


def flow_vae(toy_sd: Path = TOY_SD) -> AutoencoderKL:
    """The toy VAE with the ``shift_factor`` that SD3's pipeline reads (``latents / scale + shift``).

    0.0, not the latents' mean: the mean of the scaled toy latents is -0.06 of their standard deviation
    (SD3's VAE shifts by 0.0609 raw), and 0.0 keeps ``helpers.toy.pretrain``'s cached latents (means times
    the scaling factor, no shift) exactly what the flow model trains on. The channels' own means differ
    more (-0.16 to +0.22 raw), but one scalar cannot remove those."""
    vae = AutoencoderKL.from_pretrained(toy_sd, subfolder="vae")
    vae.register_to_config(shift_factor=0.0)
    return vae.eval()


def projected(text_encoder: CLIPTextModel, extra_layer: bool) -> CLIPTextModelWithProjection:
    """The toy text encoder as SD3's CLIPs are, with a projection (the identity: the toy's pooled output
    already has the width the transformer reads, and SD3's CLIP-L projection started as a diagonal).

    SD3's pipeline reads the penultimate hidden states, never the last: the toy encoder (3 layers) would
    give its second layer's output, not the third's that the toy UNet was trained on. ``extra_layer``
    appends a fourth layer whose output projections are zero, an exact identity, so that this encoder's
    penultimate states are the third layer's: the second encoder is the same toy encoder read one layer
    deeper. Two copies of one encoder would feed the transformer the same 96 numbers twice; a second,
    untrained tiny encoder would add words with no meaning learnt."""
    config = copy.deepcopy(text_encoder.config)
    config.num_hidden_layers += int(extra_layer)
    encoder = CLIPTextModelWithProjection(config)
    result = encoder.text_model.load_state_dict(text_encoder.state_dict(), strict=False)
    new = f"encoder.layers.{text_encoder.config.num_hidden_layers}."
    assert not result.unexpected_keys and all(k.startswith(new) for k in result.missing_keys), result
    with torch.no_grad():
        encoder.text_projection.weight.copy_(torch.eye(config.projection_dim, config.hidden_size))
        if extra_layer:
            last = encoder.text_model.encoder.layers[-1]
            for linear in (last.self_attn.out_proj, last.mlp.fc2):
                linear.weight.zero_()
                linear.bias.zero_()
    return encoder.eval()


def build_pipeline(toy_sd: Path = TOY_SD, seed: int = 0) -> StableDiffusion3Pipeline:
    """The toy flow pipeline with a randomly initialised transformer (``seed``), everything else from ``toy_sd``."""
    tokenizer = CLIPTokenizer.from_pretrained(toy_sd, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(toy_sd, subfolder="text_encoder")
    torch.manual_seed(seed)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer(),
        scheduler=scheduler(),
        vae=flow_vae(toy_sd),
        text_encoder=projected(text_encoder, extra_layer=False),
        tokenizer=tokenizer,
        text_encoder_2=projected(text_encoder, extra_layer=True),
        tokenizer_2=tokenizer,
        text_encoder_3=None,
        tokenizer_3=None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_pipeline(folder: str | Path) -> StableDiffusion3Pipeline:
    """``StableDiffusion3Pipeline.from_pretrained`` of a folder that ``save_pretrained`` wrote, with the
    T5 parts it lacks passed as None (``helpers.diffusion.loading.absent_parts`` says why)."""
    pipe = StableDiffusion3Pipeline.from_pretrained(folder, **absent_parts(str(folder)))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
