"""Between pixels and latents: SD diffuses in the VAE's latent space, scaled to unit variance."""

from __future__ import annotations

import random

import torch
from PIL import Image


def vae_scale_factor(vae_config) -> int:
    """Pixels per latent on a side: the VAE halves the image between its blocks (4 on the toy, 8 on SD 1.x)."""
    return 2 ** (len(vae_config["block_out_channels"]) - 1)


def preprocess(
    image: Image.Image,
    resolution: int,
    center_crop: bool = True,
    rng: random.Random | None = None,
    random_flip: bool = False,
) -> torch.Tensor:
    """Resize the short side to ``resolution``, crop a square (centre, or random with ``rng``),
    optionally flip, and scale to [-1, 1] as SD's VAE expects."""
    w, h = image.size
    scale = resolution / min(w, h)
    image = image.convert("RGB").resize(
        (max(resolution, round(w * scale)), max(resolution, round(h * scale))), Image.Resampling.BICUBIC
    )
    w, h = image.size
    if center_crop or rng is None:
        left, top = (w - resolution) // 2, (h - resolution) // 2
    else:
        left, top = rng.randint(0, w - resolution), rng.randint(0, h - resolution)
    image = image.crop((left, top, left + resolution, top + resolution))
    if random_flip and rng is not None and rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    x = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).reshape(resolution, resolution, 3)
    return x.permute(2, 0, 1).float() / 127.5 - 1


@torch.no_grad()
def encode(vae, images: list[Image.Image], resolution: int, batch_size: int = 16) -> torch.Tensor:
    """Scaled latent means of centre-cropped images (float32, on the VAE's device): ``(mean - shift) * scale``,
    as the SD3 pipelines read ``shift_factor`` (SD 1.x's VAE has none, and only scales)."""
    return encode_distribution(vae, torch.stack([preprocess(im, resolution) for im in images]), batch_size)[0]


@torch.no_grad()
def encode_distribution(vae, pixels: torch.Tensor, batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE's latent distribution of preprocessed ``pixels``, scaled (and shifted) as ``encode``'s means: a
    sample is ``mean + std * noise``, which is how diffusers' training scripts take latents
    (``latent_dist.sample()``) where ``encode`` takes the mean."""
    means, stds = [], []
    for i in range(0, len(pixels), batch_size):
        dist = vae.encode(pixels[i : i + batch_size].to(vae.device, vae.dtype)).latent_dist
        means.append(dist.mean.float())
        stds.append(dist.std.float())
    scale = vae.config.scaling_factor
    return (torch.cat(means) - shift_factor(vae)) * scale, torch.cat(stds) * scale


def shift_factor(vae) -> float:
    return getattr(vae.config, "shift_factor", None) or 0.0


@torch.no_grad()
def decode(vae, latents: torch.Tensor) -> list[Image.Image]:
    """Scaled (and shifted) latents back to PIL images."""
    raw = latents / vae.config.scaling_factor + shift_factor(vae)
    x = vae.decode(raw.to(vae.device, vae.dtype)).sample.float()
    arr = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


def through_vae(vae, images: list[Image.Image]) -> list[Image.Image]:
    """Images as the toy model can at best draw them: encoded to its latents and decoded back."""
    return decode(vae, encode(vae, images, images[0].width)) if images else []
