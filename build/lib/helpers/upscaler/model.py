"""The upscaler itself: a pixel-space UNet that sees the bicubic-upsampled low-resolution image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DiffusionPipeline, UNet2DModel
from PIL import Image
from torch.nn import functional as F
from tqdm.auto import tqdm

from helpers.core.errors import UsageError

LOW, HIGH = 64, 128


# The model draws only what bicubic upsampling misses: x0 = (high - bicubic(low)) * RESIDUAL_SCALE.
# That residual is small (std 0.05 on [-1, 1] pixels), so it is scaled toward unit size, as SD
# scales its latents; an imperfect denoiser then leaves a faint grain, not a noisy image.
RESIDUAL_SCALE = 4.0


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """PIL images -> (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.stack([np.asarray(i, dtype=np.float32) for i in images])).permute(0, 3, 1, 2) / 127.5 - 1


def to_images(x: torch.Tensor) -> list[Image.Image]:
    """(N, 3, H, W) in [-1, 1] -> PIL images."""
    arr = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


def downsample(images: list[Image.Image]) -> list[Image.Image]:
    """The low-resolution half of a training pair: a box filter, like a camera's larger pixels."""
    return [i.resize((LOW, LOW), Image.Resampling.BOX) for i in images]


def condition(low: torch.Tensor) -> torch.Tensor:
    """The upscaler's view of the low-resolution image: bicubic-upsampled to the output size."""
    return F.interpolate(low, scale_factor=HIGH // LOW, mode="bicubic", align_corners=False).clamp(-1, 1)


def check_sizes(images: list[Image.Image]) -> None:
    """One line that names the wrong sizes, before any work is done on them."""
    wrong = sorted({i.size for i in images if i.size != (LOW, LOW)})
    if wrong:
        raise UsageError(
            f"the upscaler takes {LOW}x{LOW} images and makes {HIGH}x{HIGH}; got "
            f"{', '.join(f'{w}x{h}' for w, h in wrong)}: resize to {LOW}x{LOW} first "
            f"(image.resize(({LOW}, {LOW})))"
        )


class ToyUpscalePipeline(DiffusionPipeline):
    """Pixel-space diffusion upscaler: low-resolution images in, images twice the size out."""

    def __init__(self, unet: UNet2DModel, scheduler: DDPMScheduler) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @torch.no_grad()
    def __call__(
        self, images: list[Image.Image], num_inference_steps: int = 10, seed: int = 0, progress: bool = False
    ) -> list[Image.Image]:
        check_sizes(images)
        cond = condition(to_tensor(images)).to(self.device)
        sampler = DDIMScheduler.from_config(self.scheduler.config)
        sampler.set_timesteps(num_inference_steps)
        generator = torch.Generator("cpu").manual_seed(seed)
        x = torch.randn(cond.shape, generator=generator).to(self.device)
        for t in tqdm(sampler.timesteps, desc="upscaling", disable=not progress):
            pred = self.unet(torch.cat([x, cond], dim=1), t).sample
            x = sampler.step(pred, t, x).prev_sample
        return to_images(cond + x / RESIDUAL_SCALE)


def build_upscaler(channels: tuple[int, ...] = (16, 32, 64)) -> ToyUpscalePipeline:
    """A fresh, randomly initialised upscaler: no attention (the detail is local), v-prediction."""
    unet = UNet2DModel(
        sample_size=HIGH,
        in_channels=6,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=channels,
        down_block_types=("DownBlock2D",) * len(channels),
        up_block_types=("UpBlock2D",) * len(channels),
        add_attention=False,
        norm_num_groups=8,
    )
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", clip_sample=False
    )
    return ToyUpscalePipeline(unet, scheduler)


def load_upscaler(path: str | Path) -> ToyUpscalePipeline:
    """A saved upscaler, or one line saying the folder holds none."""
    path = Path(path).expanduser()
    if not (path / "model_index.json").exists():
        raise UsageError(
            f"no upscaler in {str(path)!r}: pass the folder that `python -m helpers.upscaler "
            f"pretrain` or `finetune` wrote (data/toy-upscaler is the course's)"
        )
    return ToyUpscalePipeline.from_pretrained(path)
