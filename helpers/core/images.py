"""Reading image folders the way learners fill them: phone photos, PNG screenshots, stray files.

Photos arrive rotated by an EXIF tag, with alpha channels, as palettes or greyscale; a folder may
hold a `.DS_Store` or a half-downloaded JPEG. Each image is turned upright and into RGB, and a file
that is not a readable image stops the run with its name, instead of failing deep inside training.
"""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from helpers.core.errors import UsageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def image_files(folder: str | Path) -> list[Path]:
    """The image files of a folder, sorted; hidden files and other suffixes are ignored."""
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise UsageError(f"image folder {str(folder)!r} does not exist: check the path")
    if not folder.is_dir():
        raise UsageError(f"{str(folder)!r} is not a folder: pass the folder that holds the images")
    files = sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not files:
        raise UsageError(f"image folder {str(folder)!r} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def load_rgb(path: Path) -> Image.Image:
    """One image, turned upright by its EXIF orientation, as RGB (alpha composited onto white)."""
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise _too_large(path, err) from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise UsageError(f"cannot read image {path}: {type(err).__name__}; remove or replace the file") from None
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(canvas, rgba)
    return img.convert("RGB")


def _too_large(path: Path, err: Exception) -> UsageError:
    """PIL refuses, with a traceback, an image whose header claims more pixels than it reads safely (a
    "decompression bomb": a few KB on disk, gigabytes in memory); as a warning when warnings are errors.
    This names the file, its size (which only PIL's message holds) and the fix."""
    found = re.search(r"\((\d+) pixels\)", str(err))
    size = f"{int(found[1]) / 1e6:.0f} megapixels" if found else "too many pixels"
    limit = Image.MAX_IMAGE_PIXELS / 1e6
    return UsageError(
        f"image {path} has {size}, more than the {limit:.0f} megapixels read safely: resize it below "
        f"{limit:.0f} megapixels (the models train at 512 px or less), or remove it"
    )


def load_image_folder(folder: str | Path) -> list[Image.Image]:
    """Every image of a folder, upright and RGB."""
    return [load_rgb(p) for p in image_files(folder)]
