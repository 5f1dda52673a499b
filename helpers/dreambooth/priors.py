"""Class images for prior preservation: generated once by the frozen model, cached with a manifest.

DreamBooth's prior-preservation loss needs a few hundred images of the class ("a photo of dog")
drawn by the model *before* fine-tuning. Generating them is the slowest step of a DreamBooth run,
so they are cached on disk next to a manifest of every setting that shaped them (model and its
weight files, prompt, seed, scheduler, steps, guidance, resolution). A re-run with the same
settings reuses them; any change draws them again: a cache is never silently reused for different
settings.

The folder may also hold class images of the learner's own (real photos of dogs, as diffusers'
``train_dreambooth.py`` users put there): those are kept and used, the model draws only as many as
``--num_class_images`` still lacks, and the manifest lists only the drawn ones, the only files this
module ever deletes.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image

from helpers.core.atomic import save_image_atomic, write_text_atomic
from helpers.core.errors import UsageError
from helpers.core.folders import is_inside
from helpers.core.images import IMAGE_SUFFIXES, load_rgb
from helpers.core.paths import DATA
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
    max_sequence_length: int | None = None  # a flow-matching model's T5 tokens (the profile's); None on SD 1.x

    @property
    def pipeline_kwargs(self) -> dict:
        return {} if self.max_sequence_length is None else {"max_sequence_length": self.max_sequence_length}

    @classmethod
    def for_model(
        cls, model: str, prompt: str, count: int, seed: int = 0, guidance_scale: float | None = None
    ) -> "PriorSettings":
        """The settings the trainer uses for ``model``: its profile's sampler steps and size, and its
        class-image guidance unless ``guidance_scale`` is given (the trainer's --class_guidance_scale)."""
        from helpers.diffusion.profiles import profile_for_model, resolve_model

        profile, resolved = profile_for_model(model), resolve_model(model)
        if guidance_scale is None:
            guidance_scale = profile.class_guidance_scale or profile.guidance_scale
        return cls(
            model=resolved,
            weights=weights_fingerprint(resolved),
            prompt=prompt,
            count=count,
            seed=seed,
            num_inference_steps=profile.num_inference_steps,
            guidance_scale=guidance_scale,
            resolution=profile.resolution,
            max_sequence_length=profile.max_sequence_length,
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
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None


def _changed(manifest: dict, settings: PriorSettings) -> list[str]:
    """The settings that differ from the manifest's, the count aside (more or fewer images of the same
    settings are the same images: image i is drawn from seed + i)."""
    saved = manifest.get("settings", {})
    return [k for k, v in asdict(settings).items() if k != "count" and saved.get(k) != v]


def learner_images(folder: str | Path, manifest: dict | None = None) -> list[Path]:
    """The images a learner put in the class folder themselves (any image the manifest does not list),
    sorted: they are kept and used, as diffusers' DreamBooth script uses the images it finds there."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    ours = set((manifest or read_manifest(folder) or {}).get("files", []))
    return [
        p
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES and p.name not in ours
    ]


def cache_status(folder: str | Path, settings: PriorSettings) -> str:
    """'valid', 'missing' or a sentence saying what must be drawn again and why."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    return _status(folder, settings, manifest, max(0, settings.count - len(learner_images(folder, manifest))))


def _status(folder: Path, settings: PriorSettings, manifest: dict | None, needed: int) -> str:
    """``cache_status`` of a folder whose manifest is read and which lacks ``needed`` drawn images."""
    if manifest is None:
        return "valid" if needed == 0 else "missing"
    changed = _changed(manifest, settings)
    if changed and needed:
        return "settings changed: " + ", ".join(
            f"{k} {manifest['settings'].get(k)!r} -> {getattr(settings, k)!r}" for k in changed
        )
    files = manifest.get("files", [])[:needed]
    if any(not (folder / name).exists() for name in files):
        return "files missing"
    if len(files) < needed:
        return f"{needed - len(files)} more to draw"
    return "valid"


def check_class_folder(class_dir: str | Path, instance_dir: str | Path) -> None:
    """The class folder is written into (generated images and a manifest): never the course's data/ and never
    the subject's own photos, which would then be trained on as "any dog" and lose their meaning."""
    if is_inside(Path(class_dir), DATA):
        raise UsageError(
            f"--class_data_dir {class_dir} is inside the course's data/ folder, which holds the shipped models and "
            "photos: pass a folder of your own, for example outputs/class_images/dog"
        )
    if is_inside(Path(class_dir), Path(instance_dir)) or is_inside(Path(instance_dir), Path(class_dir)):
        raise UsageError(
            f"--class_data_dir {class_dir} and --instance_data_dir {instance_dir} overlap: the class images must be "
            "other members of the class, kept apart from the subject's photos; pass another --class_data_dir"
        )


def class_images(
    folder: str | Path, settings: PriorSettings, pipe_factory, batch_size: int | None = None, progress: bool = True
) -> tuple[list[Path], dict]:
    """``settings.count`` class images: the learner's own images in ``folder`` first, then images drawn by the
    frozen model to make up the count, cached with a manifest that lists only those.

    ``pipe_factory()`` returns the frozen pipeline; it is only called when images must be drawn. Drawn
    images of other settings are deleted (they are the cache's own); the learner's are never touched.
    Each image is written whole as soon as its batch is drawn and the manifest follows each batch, so an
    interrupted call keeps what it drew. Returns the image paths and a report {"reused", "reason",
    "seconds", "learner", "generated"}.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    learner = learner_images(folder, manifest)[: settings.count]
    needed = settings.count - len(learner)
    status = _status(folder, settings, manifest, needed)
    drawn = (manifest or {}).get("files", [])
    start = time.perf_counter()
    if status != "valid":
        folder.mkdir(parents=True, exist_ok=True)
        kept = [] if manifest is None or _changed(manifest, settings) else drawn
        drawn = _draw(folder, settings, pipe_factory, drawn, kept, needed, batch_size, progress)
    seconds = time.perf_counter() - start
    report = {"reused": status == "valid", "reason": status, "seconds": seconds, "learner": len(learner)}
    return learner + [folder / name for name in drawn[:needed]], report | {"generated": needed}


def _draw(
    folder: Path,
    settings: PriorSettings,
    pipe_factory,
    listed: list[str],
    kept: list[str],
    needed: int,
    batch_size: int | None,
    progress: bool,
) -> list[str]:
    """Draw the images ``kept`` lacks of the first ``needed`` (image i from seed + i), after deleting the drawn
    images the manifest ``listed`` and this call does not keep; the manifest is rewritten after every batch."""
    from helpers.diffusion.generate import iter_batches

    for stale in set(listed) - set(kept):
        (folder / stale).unlink(missing_ok=True)
    # drawn image i comes from seed + i: one missing from the middle means drawing again from there on
    kept = list(itertools.takewhile(lambda name: (folder / name).exists(), kept))[:needed]
    _write_manifest(folder, settings, kept)
    if len(kept) == needed:
        return kept
    batches = iter_batches(
        pipe_factory(),
        settings.prompt,
        needed - len(kept),
        seed=settings.seed + len(kept),
        num_inference_steps=settings.num_inference_steps,
        guidance_scale=settings.guidance_scale,
        batch_size=batch_size,
        progress=progress,
        resolution=settings.resolution,
        desc="class images (batches)",
        **settings.pipeline_kwargs,
    )
    for images in batches:
        for image in images:
            name = _name(folder, len(kept), kept)
            save_image_atomic(image, folder / name)
            kept.append(name)
        _write_manifest(folder, settings, kept)
    return kept


def _name(folder: Path, index: int, kept: list[str]) -> str:
    """The file name of drawn image ``index``: ``class-00012.png``, or with a suffix when the learner already
    has a file of that name (never overwritten)."""
    name = f"class-{index:05d}.png"
    while (folder / name).exists() and name not in kept:
        name = name.replace(".png", "-drawn.png")
    return name


def _write_manifest(folder: Path, settings: PriorSettings, files: list[str]) -> None:
    write_text_atomic(folder / MANIFEST, json.dumps({"settings": asdict(settings), "files": files}, indent=2))


def load_class_images(paths: list[Path]) -> list[Image.Image]:
    """The class images, upright and RGB (a learner's photos may carry EXIF rotations or alpha)."""
    return [load_rgb(p) for p in paths]
