"""How much detail comes back: PSNR over the image and over the subject's emblem."""

from __future__ import annotations

import numpy as np
from PIL import Image

from helpers.toy import world as toyworld
from helpers.upscaler.model import HIGH, condition, to_images, to_tensor


def psnr(a: list[Image.Image], b: list[Image.Image], box: tuple[int, int, int, int] | None = None) -> float:
    """Mean peak signal-to-noise ratio in dB between paired images (optionally inside one crop box)."""
    vals = []
    for x, y in zip(a, b, strict=True):
        if box is not None:
            x, y = x.crop(box), y.crop(box)
        mse = np.mean((np.asarray(x, dtype=np.float64) - np.asarray(y, dtype=np.float64)) ** 2)
        vals.append(10 * np.log10(255.0**2 / max(mse, 1e-10)))
    return float(np.mean(vals))


def bicubic(images: list[Image.Image]) -> list[Image.Image]:
    """The non-learned baseline every upscaler must beat."""
    return to_images(condition(to_tensor(images)))


def subject_views_with_boxes(
    instance: toyworld.Instance, count: int, seed: int
) -> tuple[list[Image.Image], list[tuple[int, int, int, int]]]:
    """128 px renders of a toy subject in new scenes, with each emblem's box (held-out views for metrics)."""
    scenes = toyworld.subject_scenes(instance, count, seed)
    images = toyworld.subject_views(instance, count, seed, size=HIGH, detail=True)
    return images, [toyworld.emblem_box(s.objects[0], HIGH) for s in scenes]


def score(
    upscaled: list[Image.Image], originals: list[Image.Image], boxes: list[tuple[int, int, int, int]]
) -> dict[str, float]:
    """PSNR over the whole image and over the emblem alone, where the fine detail lives."""
    return {
        "PSNR (dB)": psnr(upscaled, originals),
        "emblem PSNR (dB)": float(np.mean([psnr([u], [o], b) for u, o, b in zip(upscaled, originals, boxes)])),
    }
