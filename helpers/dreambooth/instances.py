"""The subject's photos, and the caption of each when a learner wrote one.

One prompt for every photo ("a photo of sks dog") binds the identifier to everything the photos
share, the rug they were all taken on included. A caption file beside a photo (``03.jpg`` +
``03.txt``, as kohya's sd-scripts and ShivamShrirao's ``--read_prompts_from_txts`` read them) says
what else is in it ("a photo of sks dog on the beach"), so that those words, not the identifier,
take the background. A photo without one keeps ``--instance_prompt``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from helpers.core.errors import UsageError
from helpers.core.images import image_files, load_rgb
from helpers.dreambooth.identifiers import identifier_words


@dataclass
class Instances:
    """The photos, upright and RGB, and one prompt per photo."""

    images: list[Image.Image]
    prompts: list[str]
    captions: dict[Path, str] = field(default_factory=dict)  # the photos that have a caption file, and its text

    @property
    def captioned(self) -> int:
        """How many prompts came from caption files."""
        return len(self.captions)


def caption_of(photo: Path) -> str | None:
    """The caption file's text for ``photo`` (``photo.txt``), or None when there is none."""
    path = photo.with_suffix(".txt")
    if not path.is_file():
        return None
    caption = " ".join(path.read_text(encoding="utf-8").split())
    if not caption:
        raise UsageError(
            f"caption file {path} is empty: write the photo's caption in it (with the identifier, for example "
            "'a photo of sks dog on the beach') or delete it to use --instance_prompt"
        )
    return caption


def load_instances(folder: str, resolution: int, instance_prompt: str, class_prompt: str | None) -> Instances:
    """The subject photos with their prompts. A caption that lacks the identifier is a warning (its
    photo then teaches the class words, not the subject's name); small photos are upscaled with a
    warning that says so."""
    identifier = identifier_words(instance_prompt, class_prompt)
    images, prompts, captions = [], [], {}
    for path in image_files(folder):
        img = load_rgb(path)
        if min(img.size) < resolution:
            warnings.warn(
                f"{path.name} is {img.size[0]}x{img.size[1]}, smaller than --resolution {resolution}: "
                "it is upscaled, which blurs it; use photos at least that large",
                stacklevel=2,
            )
        caption = caption_of(path)
        if caption is not None:
            captions[path] = caption
            missing = [w for w in identifier if w not in caption.lower().split()]
            if missing:
                warnings.warn(
                    f"{path.with_suffix('.txt').name} does not name the identifier {' '.join(missing)!r} "
                    f"({caption!r}): this photo will not teach it; add it to the caption",
                    stacklevel=2,
                )
        images.append(img)
        prompts.append(caption or instance_prompt)
    return Instances(images, prompts, captions)
