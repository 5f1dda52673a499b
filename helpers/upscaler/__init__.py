"""A toy cascaded-diffusion super-resolution stage: 64 px in, 128 px out, in pixel space.

DreamBooth's base models (Imagen in the paper) draw small images and hand them to a diffusion
upscaler. An upscaler trained on the world at large turns a blur into *some* plausible detail; the
paper's step (b) fine-tunes it on low/high-resolution pairs of the subject's own photos so that
*its* details (an emblem, a texture) come back. This package is that stage for the toy world: a
`UNet2DModel` that denoises the 128 px image while seeing the bicubic-upsampled 64 px image as
three extra input channels, as SR3 and Imagen's super-resolution models do. It denoises the
difference from that bicubic image (the detail), not the whole image, as SRDiff does.

    python -m helpers.upscaler pretrain --output data/toy-upscaler
    python -m helpers.upscaler finetune --model data/toy-upscaler --instance_data_dir DIR --output_dir OUT
    python -m helpers.upscaler upscale  --model OUT --images DIR --output_dir UP

The package re-exports its parts' public names (``from helpers import upscaler``, then
``upscaler.pretrain``); ``python -m helpers.upscaler`` runs ``helpers.upscaler.cli``."""

from helpers.upscaler.model import (
    HIGH,
    LOW,
    RESIDUAL_SCALE,
    ToyUpscalePipeline,
    build_upscaler,
    check_sizes,
    condition,
    downsample,
    load_upscaler,
    to_images,
    to_tensor,
)
from helpers.upscaler.quality import bicubic, psnr, score, subject_views_with_boxes
from helpers.upscaler.training import (
    MAX_BLUR,
    MAX_NOISE,
    TOOL,
    FinetuneConfig,
    FitResult,
    degrade,
    finetune,
    loss_on,
    pretrain,
    world_images,
)

__all__ = [
    "TOOL",
    "LOW",
    "HIGH",
    "RESIDUAL_SCALE",
    "to_tensor",
    "to_images",
    "downsample",
    "condition",
    "check_sizes",
    "ToyUpscalePipeline",
    "build_upscaler",
    "load_upscaler",
    "MAX_BLUR",
    "MAX_NOISE",
    "world_images",
    "degrade",
    "loss_on",
    "FitResult",
    "pretrain",
    "FinetuneConfig",
    "finetune",
    "psnr",
    "bicubic",
    "subject_views_with_boxes",
    "score",
]
