"""Grids and figures, saved where `make course` collects them."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from helpers.core.paths import outputs


def image_grid(images: list[Image.Image], cols: int, scale: int = 1) -> Image.Image:
    """Paste equally sized images into one grid image (scaled up with nearest neighbour)."""
    if not images:
        raise ValueError("no images to put in a grid")
    w, h = images[0].size
    rows = -(-len(images) // cols)
    grid = Image.new("RGB", (cols * w, rows * h), (255, 255, 255))
    for i, img in enumerate(images):
        grid.paste(img.convert("RGB").resize((w, h)), ((i % cols) * w, (i // cols) * h))
    return grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST) if scale > 1 else grid


def figures_dir() -> Path:
    """``figures/`` in the outputs folder (``helpers.core.paths.outputs``)."""
    out = outputs() / "figures"
    out.mkdir(parents=True, exist_ok=True)
    return out


def show_images(
    images: list[Image.Image],
    titles: list[str] | None = None,
    cols: int = 8,
    name: str | None = None,
    size: float = 1.6,
):
    """A matplotlib figure of images with optional titles; saved as ``figures/<name>.png`` if named."""
    import matplotlib.pyplot as plt

    rows = -(-len(images) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * size * (1.25 if titles else 1)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, img in enumerate(images):
        ax = axes.flat[i]
        ax.imshow(img, interpolation="nearest")
        if titles:
            ax.set_title(titles[i], fontsize=8)
    fig.tight_layout()
    if name:
        save_figure(fig, name)
    return fig


def save_figure(fig, name: str) -> None:
    """Save ``fig`` as ``<figures>/<name>.png``; returns nothing, so that a notebook cell ending in
    this call shows the figure and no stray path."""
    fig.savefig(figures_dir() / f"{name}.png", dpi=110, bbox_inches="tight")
