"""Randomly initialised pipelines shaped like the hub's Stable Diffusion 3.5 Medium, built locally in seconds.

The toy flow model (``helpers.toy.flow_model``) hides what SD 3.5 Medium brings to a learner's Colab: a
16-channel VAE that downsamples 8x and shifts its latents (``shift_factor``) before scaling them, no
quantisation convolutions in that VAE, an MMDiT-X transformer with dual attention in its first layers,
the shift-3.0 flow-matching scheduler, two CLIP encoders of different widths whose features are padded to
T5's width, and a T5 encoder with its own SentencePiece-style tokenizer. ``build`` writes all of them,
in fp32 and saved in fp16, so that tests exercise those code paths on a CPU without touching the hub
(the hub's repository is gated, and its diffusers folders hold about 16 GB in fp16).

``size="sd35"`` builds the same folders at SD 3.5 Medium's real sizes (random weights: 8.3 billion numbers,
the transformer 2.47 billion with its 384x384 position table, T5's encoder 4.9 billion; about 33 GB in
fp32) for a GPU memory check; it is never built in tests.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import sd_shaped
import torch

if TYPE_CHECKING:  # the heavy imports wait until a function needs them, as in sd_shaped
    from diffusers import AutoencoderKL, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel, T5TokenizerFast


# SD 3.5 Medium's configs (its transformer/, vae/, text_encoder*/ config.json on the hub), and a tiny
# twin with the same structure. Every tiny width differs from every other (CLIP-L 32 -> 24, CLIP-G
# 48 -> 40, T5 96) so that a test catches a mix-up: the pipeline puts the CLIPs' hidden states side by
# side (32 + 48 = 80), zero-pads them to T5's width (96, as 768 + 1280 = 2048 is padded to 4096), and
# feeds their projections side by side (24 + 40 = 64, as 768 + 1280 = 2048) to the adaptive norms.
CLIP_L = {
    "sd35": dict(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        projection_dim=768,
        hidden_act="quick_gelu",
    ),
    "tiny": dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        projection_dim=24,
        hidden_act="quick_gelu",
    ),
}
CLIP_G = {
    "sd35": dict(
        hidden_size=1280,
        intermediate_size=5120,
        num_hidden_layers=32,
        num_attention_heads=20,
        projection_dim=1280,
        hidden_act="gelu",
    ),
    "tiny": dict(
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        projection_dim=40,
        hidden_act="gelu",
    ),
}
T5 = {  # google/t5-v1_1-xxl, the encoder half
    "sd35": dict(d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24, vocab_size=32128),
    "tiny": dict(d_model=96, d_ff=128, d_kv=16, num_heads=4, num_layers=2),  # vocab_size: the tokenizer's
}
# The transformer's widths that follow from the encoders' are filled in by ``transformer``.
TRANSFORMER = {
    "sd35": dict(
        sample_size=128,
        num_layers=24,
        attention_head_dim=64,
        num_attention_heads=24,
        pos_embed_max_size=384,
        dual_attention_layers=tuple(range(13)),  # MMDiT-X: self-attention on the image tokens too
    ),
    "tiny": dict(
        sample_size=8,  # 64x64 pixels
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        pos_embed_max_size=16,  # up to 256x256 pixels
        dual_attention_layers=(0,),
    ),
}
VAE = {
    "sd35": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=1024),
    "tiny": dict(block_out_channels=(16, 16, 32, 32), layers_per_block=1, norm_num_groups=8, sample_size=64),
}
LATENT_CHANNELS = 16
SCALING_FACTOR = 1.5305
SHIFT_FACTOR = 0.0609
SHIFT = 3.0

# What the tiny T5 tokenizer learns: the toy world's words, the DreamBooth identifier, and the letters
# so that any other lower-case word still tokenizes (letter by letter) instead of becoming <unk>.
T5_WORDS = (
    "a photo of sks dog cat sunglasses cup house tree car flower red green blue yellow white black "
    "small big on the left right in center with and"
).split()
T5_SPECIAL = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2, as T5's
T5_MAX_LENGTH = 512  # T5's; the pipeline pads and truncates to its own max_sequence_length (256 by default)


@dataclass(frozen=True)
class Folders:
    """What ``build`` writes: the SD3-shaped pipeline in fp32 and saved in fp16 (plain file names), and the
    tiny DINO and CLIP scorers of ``sd_shaped`` beside it."""

    fp32: Path
    fp16: Path
    dino: Path
    clip: Path


def t5_tokenizer() -> T5TokenizerFast:
    """A T5 tokenizer (Unigram, Metaspace, ``</s>`` appended) trained in milliseconds on ``T5_WORDS``.

    The ``tokenizers`` Unigram trainer seeds its vocabulary only with substrings that occur at least twice
    among the distinct pre-tokenized words, so a corpus of words seen once each yields single letters
    only. Training on each word written twice in one unsplit piece ("▁dog▁dog") makes every word a seed;
    the Metaspace pre-tokenizer then splits on spaces, as T5's does, when it encodes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import T5TokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(split=False)
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=64,
        special_tokens=list(T5_SPECIAL),
        unk_token="<unk>",
        initial_alphabet=list(string.ascii_lowercase),
        show_progress=False,
    )
    tok.train_from_iterator([f"{word} {word}" for word in T5_WORDS], trainer=trainer)
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    pad, eos, unk = T5_SPECIAL
    return T5TokenizerFast(
        tokenizer_object=tok,
        pad_token=pad,
        eos_token=eos,
        unk_token=unk,
        extra_ids=0,
        model_max_length=T5_MAX_LENGTH,
    )


def clip_encoder(tok: CLIPTokenizer, shape: dict, size: str) -> CLIPTextModelWithProjection:
    """A CLIPTextModelWithProjection of ``shape`` (``CLIP_L[size]`` or ``CLIP_G[size]``)."""
    from transformers import CLIPTextModelWithProjection

    return CLIPTextModelWithProjection(sd_shaped.clip_config(tok, size, **shape))


def t5_encoder(tok: T5TokenizerFast, size: str) -> T5EncoderModel:
    """A T5 v1.1-style encoder (gated GELU, no biases, relative positions); its vocabulary covers ``tok``."""
    from transformers import T5Config, T5EncoderModel

    shape = {"vocab_size": len(tok), **T5[size]}
    assert shape["vocab_size"] >= len(tok)
    return T5EncoderModel(
        T5Config(
            feed_forward_proj="gated-gelu",
            relative_attention_num_buckets=32,
            relative_attention_max_distance=128,
            layer_norm_epsilon=1e-6,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            **shape,
        )
    )


def transformer(size: str) -> SD3Transformer2DModel:
    """An SD3Transformer2DModel shaped as SD 3.5 Medium's MMDiT-X: patch 2 on 16 latent channels, RMS-normed
    queries and keys, dual attention in the first layers, text widths from the encoders'."""
    from diffusers import SD3Transformer2DModel

    shape = TRANSFORMER[size]
    return SD3Transformer2DModel(
        patch_size=2,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        joint_attention_dim=T5[size]["d_model"],
        caption_projection_dim=shape["num_attention_heads"] * shape["attention_head_dim"],
        pooled_projection_dim=CLIP_L[size]["projection_dim"] + CLIP_G[size]["projection_dim"],
        qk_norm="rms_norm",
        **shape,
    )


def vae(size: str) -> AutoencoderKL:
    """SD3's 16-channel AutoencoderKL: 8x downsampling, its latent shift and scale, no quant convolutions."""
    from diffusers import AutoencoderKL

    blocks = len(VAE[size]["block_out_channels"])
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        latent_channels=LATENT_CHANNELS,
        scaling_factor=SCALING_FACTOR,
        shift_factor=SHIFT_FACTOR,
        use_quant_conv=False,
        use_post_quant_conv=False,
        **VAE[size],
    )


def pipeline(size: str = "tiny", seed: int = 0, t5: bool = True) -> StableDiffusion3Pipeline:
    """An SD 3.5 Medium-shaped StableDiffusion3Pipeline with random weights (``t5=False``: saved without T5, as
    the sd35 profile loads it)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    if size not in TRANSFORMER:
        raise ValueError(f"size must be one of {sorted(TRANSFORMER)}, not {size!r}")
    torch.manual_seed(seed)
    clip_tok, t5_tok = sd_shaped.tokenizer(), t5_tokenizer()
    return StableDiffusion3Pipeline(
        transformer=transformer(size),
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=SHIFT),
        vae=vae(size),
        text_encoder=clip_encoder(clip_tok, CLIP_L[size], size),
        tokenizer=clip_tok,
        text_encoder_2=clip_encoder(clip_tok, CLIP_G[size], size),
        tokenizer_2=clip_tok,
        text_encoder_3=t5_encoder(t5_tok, size) if t5 else None,
        tokenizer_3=t5_tok if t5 else None,
    )


def build(root: Path, size: str = "tiny", fp32: bool = True, t5: bool = True) -> Folders:
    """Write the SD3-shaped pipeline in fp32 and in fp16 (plain file names, as the hub's copy). A GPU check at
    SD 3.5 Medium's size writes only what the sd35 profile loads (``fp32=False, t5=False``: 6.7 GB, not 50)."""
    root = Path(root)
    folders = Folders(*(root / name for name in ("sd3-fp32", "sd3-fp16", "dino", "clip")))
    sd_shaped.dino(folders.dino, size)
    sd_shaped.clip(folders.clip, size)
    pipe = pipeline(size, t5=t5)
    if fp32:
        pipe.save_pretrained(folders.fp32)
    pipe.to(torch.float16).save_pretrained(folders.fp16)
    return folders


def cpu_profile(folders: Folders, resolution: int = 64):
    """The sd35 profile as a Colab learner gets it, moved to the CPU and onto the tiny model: the fp16-saved
    folder sampled in fp16, the tiny scorers, bf16 mixed precision for training (the CPU has no fp16
    training), and 16 T5 tokens (the pipeline's 256 would only slow the CPU); only sizes shrink."""
    from dataclasses import replace

    from helpers.diffusion.profiles import SD35

    return replace(
        SD35,
        model=str(folders.fp16),
        device="cpu",
        resolution=resolution,
        num_inference_steps=3,
        mixed_precision="bf16",
        max_sequence_length=16,
        dino_model=str(folders.dino),
        clip_model=str(folders.clip),
    )
