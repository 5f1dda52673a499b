"""Class images for prior preservation: generated once by the frozen model, cached with a manifest.

DreamBooth's prior-preservation loss needs a few hundred images of the class ("a photo of dog")
drawn by the model *before* fine-tuning. Generating them is the slowest step of a DreamBooth run,
so they are cached on disk next to a manifest of every setting that shaped them (model and its
weight files, prompt, seed, scheduler, steps, guidance, count, resolution). A re-run with the same
settings reuses them; any change regenerates them: a cache is never silently reused for different
settings.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image

from helpers.core.atomic import replace_dir_atomic, write_text_atomic
from helpers.diffusion.loading import weight_files

MANIFEST = "manifest.json"


def weights_fingerprint(model: str) -> str:
    """A short hash of a local pipeline folder's weight files (name, size, modification time): a
    folder retrained in place keeps its path, and class images drawn by its old weights must not be
    reused. Cheap for SD 1.5's 5 GB (nothing is read); "" for a hub id, whose name is the version."""
    folder = Path(model)
    if not folder.is_dir():
        return ""
    files = sorted(weight_files(folder))
    listing = [f"{f.relative_to(folder)} {f.stat().st_size} {f.stat().st_mtime_ns}" for f in files]
    return hashlib.sha256("\n".join(listing).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class PriorSettings:
    """Everything that determines the class images."""

    model: str
    prompt: str
    count: int
    seed: int = 0
    scheduler: str = "DDIMScheduler"
    num_inference_steps: int = 50
    guidance_scale: float = 4.0
    resolution: int = 64
    weights: str = ""  # weights_fingerprint(model)

    @classmethod
    def for_model(cls, model: str, prompt: str, count: int, seed: int = 0) -> "PriorSettings":
        """The settings the trainer uses for ``model``: its profile's sampler steps, guidance and size."""
        from helpers.diffusion.profiles import profile_for_model, resolve_model

        profile, resolved = profile_for_model(model), resolve_model(model)
        return cls(
            model=resolved,
            weights=weights_fingerprint(resolved),
            prompt=prompt,
            count=count,
            seed=seed,
            num_inference_steps=profile.num_inference_steps,
            guidance_scale=profile.guidance_scale,
            resolution=profile.resolution,
        )


def class_data_dir(outputs: str | Path, profile: str, class_prompt: str, seed: int = 0) -> Path:
    """Where the notebooks keep the class images of one prompt and seed. The trainer draws them with
    its own seed, so fine-tunes over several seeds need a folder each: sharing one, every change of
    seed would find the other seed's images and draw them all again."""
    name = class_prompt.replace(" ", "_")
    return Path(outputs) / "class_images" / profile / (name if seed == 0 else f"{name}-seed{seed}")


def read_manifest(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def cache_status(folder: str | Path, settings: PriorSettings) -> str:
    """'valid', 'missing' or a sentence saying which setting changed."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        return "missing"
    changed = [k for k, v in asdict(settings).items() if manifest.get("settings", {}).get(k) != v]
    if changed:
        return "settings changed: " + ", ".join(
            f"{k} {manifest['settings'].get(k)!r} -> {getattr(settings, k)!r}" for k in changed
        )
    if (
        any(not (folder / name).exists() for name in manifest.get("files", []))
        or len(manifest.get("files", [])) != settings.count
    ):
        return "files missing"
    return "valid"


def class_images(
    folder: str | Path, settings: PriorSettings, pipe_factory, batch_size: int = 8, progress: bool = True
) -> tuple[list[Path], dict]:
    """The cached class images for ``settings``, generated (atomically) when missing or stale.

    ``pipe_factory()`` returns the frozen pipeline; it is only called when images must be drawn.
    Returns the image paths and a report {"reused": bool, "reason": str, "seconds": float}.
    """
    from helpers.diffusion.generate import generate_images

    folder = Path(folder)
    status = cache_status(folder, settings)
    if status == "valid":
        manifest = read_manifest(folder)
        return [folder / name for name in manifest["files"]], {"reused": True, "reason": status, "seconds": 0.0}
    start = time.perf_counter()
    images: list[Image.Image] = generate_images(
        pipe_factory(),
        settings.prompt,
        settings.count,
        seed=settings.seed,
        num_inference_steps=settings.num_inference_steps,
        guidance_scale=settings.guidance_scale,
        batch_size=batch_size,
        progress=progress,
        resolution=settings.resolution,
    )
    build = folder.with_name(f".{folder.name}.build")
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir(parents=True)
    names = [f"{i:05d}.png" for i in range(len(images))]
    for name, img in zip(names, images):
        img.save(build / name)
    seconds = time.perf_counter() - start
    write_text_atomic(
        build / MANIFEST,
        json.dumps({"settings": asdict(settings), "files": names, "seconds": round(seconds, 2)}, indent=2),
    )
    replace_dir_atomic(build, folder)
    return [folder / n for n in names], {"reused": False, "reason": status, "seconds": seconds}


def load_class_images(paths: list[Path]) -> list[Image.Image]:
    return [Image.open(p).convert("RGB") for p in paths]
