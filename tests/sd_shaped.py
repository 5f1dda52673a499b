"""Randomly initialised pipelines shaped like the hub's Stable Diffusion 1.x, built locally in seconds.

The toy model hides what the real-model path meets on a learner's Colab: a VAE that downsamples 8x
(the toy's does 4x), the PNDM scheduler SD 1.5 ships, a safety checker and feature extractor, a
77-token CLIP tokenizer, folders saved in fp16 or as an fp16 ``variant`` only. ``build`` writes all
of them, plus tiny DINO and CLIP scorers and a tiny x4 upscaler, so that tests and the real-branch
notebook run exercise those code paths on a CPU without touching the hub.

``size="sd15"`` builds the same folders at SD 1.5's real sizes (random weights) for the GPU check
in ``benchmarks/gpu_notebooks.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
TOY_TOKENIZER = ROOT / "data" / "toy-sd" / "tokenizer"

# SD 1.5's own configs, and a tiny twin with the same structure (8x VAE, cross-attention at both ends).
UNET = {
    "sd15": dict(
        sample_size=64,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768,
        attention_head_dim=8,
    ),
    "tiny": dict(
        sample_size=8,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=16,
    ),
}
VAE = {
    "sd15": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=512),
    "tiny": dict(block_out_channels=(16, 16, 32, 32), layers_per_block=1, norm_num_groups=8, sample_size=64),
}
TEXT = {
    "sd15": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
}
SD15_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
    clip_sample=False,
)


@dataclass(frozen=True)
class Folders:
    """What ``build`` writes: the same pipeline three ways, and the scorers and upscaler beside it."""

    fp32: Path
    fp16: Path
    fp16_variant: Path
    dino: Path
    clip: Path
    upscaler: Path


def tokenizer():
    """A CLIP tokenizer with 77 positions, as SD's; its vocabulary is the toy world's (real CLIP's
    is 49 408 tokens, a download)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(TOY_TOKENIZER, model_max_length=77)


def clip_config(tok, size: str, **shape):
    """A CLIPTextConfig of ``shape`` on ``tok``'s special tokens: the tiny one reads the toy vocabulary,
    a real-sized one CLIP's 49 408-token embedding table, for honest memory figures."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tok) if size == "tiny" else 49408,
        max_position_embeddings=77,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **shape,
    )


def _text_encoder(tok, size: str):
    from transformers import CLIPTextModel

    return CLIPTextModel(clip_config(tok, size, hidden_act="quick_gelu", **TEXT[size]))


def _safety_checker(size: str):
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    vision = (
        dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        )
        if size == "tiny"
        else {}
    )
    projection = 32 if size == "tiny" else 768
    checker = StableDiffusionSafetyChecker(CLIPConfig(vision_config=vision, projection_dim=projection))
    side = 32 if size == "tiny" else 224
    return checker, CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})


def pipeline(size: str = "tiny", seed: int = 0):
    """An SD 1.x-shaped StableDiffusionPipeline with random weights."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    tok = tokenizer()
    vae_blocks = len(VAE[size]["block_out_channels"])
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * vae_blocks,
        up_block_types=("UpDecoderBlock2D",) * vae_blocks,
        latent_channels=4,
        **VAE[size],
    )
    vae.register_to_config(scaling_factor=0.18215)
    checker, features = _safety_checker(size)
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=_text_encoder(tok, size),
        tokenizer=tok,
        unet=UNet2DConditionModel(**UNET[size]),
        scheduler=PNDMScheduler.from_config(SD15_SCHEDULER),
        safety_checker=checker,
        feature_extractor=features,
    )


def upscaler(seed: int = 0):
    """A tiny StableDiffusionUpscalePipeline shaped as stabilityai/stable-diffusion-x4-upscaler: a 4x VAE,
    a UNet that reads 4 latent + 3 image channels and a noise level."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        StableDiffusionUpscalePipeline,
        UNet2DConditionModel,
    )

    torch.manual_seed(seed)
    tok = tokenizer()
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=7,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=16,
        num_class_embeds=1000,
    )
    vae = AutoencoderKL(
        block_out_channels=(16, 16, 32),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        scaling_factor=0.08333,
    )
    return StableDiffusionUpscalePipeline(
        vae=vae,
        text_encoder=_text_encoder(tok, "tiny"),
        tokenizer=tok,
        unet=unet,
        low_res_scheduler=DDPMScheduler(beta_schedule="scaled_linear"),
        scheduler=DDIMScheduler(prediction_type="v_prediction"),
        max_noise_level=350,
    )


def dino(folder: Path, size: str = "tiny", seed: int = 0) -> Path:
    """A ViT saved as facebook/dino-vits16 is (no pooling layer), with its image processor: tiny, or
    ViT-S/16's size."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(seed)
    tiny = dict(image_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    vit_s = dict(image_size=224, hidden_size=384, num_attention_heads=6, intermediate_size=1536)
    shape = tiny if size == "tiny" else vit_s
    ViTModel(ViTConfig(patch_size=16, **shape), add_pooling_layer=False).save_pretrained(folder)
    side = shape["image_size"]
    ViTImageProcessor(size={"height": side, "width": side}).save_pretrained(folder)
    return folder


def clip(folder: Path, size: str = "tiny", seed: int = 0) -> Path:
    """A CLIPModel with its processor, saved as openai/clip-vit-base-patch32 is: tiny, or ViT-B/32's size."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tok = tokenizer()
    torch.manual_seed(seed)
    ids = dict(
        max_position_embeddings=77,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    if size == "tiny":
        text = dict(
            vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, **ids
        )
        vision = dict(
            image_size=32,
            patch_size=16,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
        )
        config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    else:  # transformers' defaults are ViT-B/32's
        config = CLIPConfig(text_config=ids)
    CLIPModel(config).save_pretrained(folder)
    side = config.vision_config.image_size
    images = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    CLIPProcessor(image_processor=images, tokenizer=tok).save_pretrained(folder)
    return folder


def build(root: Path, size: str = "tiny") -> Folders:
    """Write the SD-shaped pipeline in fp32, in fp16 (plain file names, as many hub copies), and as an
    fp16 variant only (``*.fp16.safetensors``, loadable only with ``variant="fp16"``)."""
    root = Path(root)
    folders = Folders(*(root / name for name in ("sd-fp32", "sd-fp16", "sd-fp16-variant", "dino", "clip", "x4")))
    pipe = pipeline(size)
    pipe.save_pretrained(folders.fp32)
    pipe.to(torch.float16).save_pretrained(folders.fp16)
    pipe.save_pretrained(folders.fp16_variant, variant="fp16")
    dino(folders.dino, size)
    clip(folders.clip, size)
    upscaler().save_pretrained(folders.upscaler)
    return folders


def cpu_profile(folders: Folders, resolution: int = 64):
    """The sd15 profile as a Colab learner gets it, moved to the CPU and onto the tiny model: the fp16-saved
    folder sampled in fp16, the tiny scorers, and bf16 mixed precision for training (the CPU has no fp16
    training: the trainers refuse it in one line); only sizes shrink."""
    from dataclasses import replace

    from helpers.diffusion.profiles import SD15

    return replace(
        SD15,
        model=str(folders.fp16),
        device="cpu",
        resolution=resolution,
        num_inference_steps=3,
        mixed_precision="bf16",
        dino_model=str(folders.dino),
        clip_model=str(folders.clip),
    )


def disk_dtypes(folder: Path) -> set[str]:
    """The dtypes of every tensor in a folder's safetensors files, as saved ("F16", "F32")."""
    from safetensors import safe_open

    found = set()
    for path in folder.rglob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            found |= {str(f.get_slice(k).get_dtype()) for k in f.keys()}
    return found
