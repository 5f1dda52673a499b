"""Scoring real photos the DreamBooth paper's way: DINO for the subject, CLIP for the prompt.

The paper measures subject fidelity with DINO ViT-S/16: the mean pairwise cosine similarity of the
CLS embeddings of generated and real photos. It prefers DINO to CLIP's image embedding because a
self-supervised model keeps the details that tell one dog from another, where CLIP, trained to
match captions, maps two corgis to much the same point. Prompt fidelity is CLIP-T: the cosine
similarity of CLIP's embeddings of the image and of the prompt.

On the toy profile the toy judge plays both parts (it knows the toy world and runs offline); these
scorers are for photos from the sd15 profile. Their weights come from the hub on first use, on a
learner's machine; offline, pass a local folder (``python -m helpers.profiles download MODEL_ID``
fills the cache beforehand).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from helpers.core.errors import UsageError
from helpers.diffusion.loading import CLIP_MODEL, DINO_MODEL

BATCH = 32


def _from_pretrained(cls, model: str, what: str, **kwargs):
    try:
        return cls.from_pretrained(model, **kwargs)
    except OSError as err:
        raise UsageError(
            f"could not load the {what} {model!r} ({str(err).splitlines()[0][:120]}); offline, pass a "
            f"local folder, or run `python -m helpers.profiles download {model}` on a connected "
            "machine first"
        ) from None


def _rgb(images: Sequence[Image.Image]) -> list[Image.Image]:
    return [im.convert("RGB") for im in images]


class DinoEmbedder:
    """DINO CLS embeddings of images, the paper's subject-fidelity features."""

    def __init__(self, model: str = DINO_MODEL, device: str = "cpu") -> None:
        from transformers import AutoImageProcessor, ViTModel

        self.processor = _from_pretrained(AutoImageProcessor, model, "DINO image processor")
        self.model = _from_pretrained(ViTModel, model, "DINO model", add_pooling_layer=False).eval().to(device)
        self.device = device

    def to(self, device: str) -> "DinoEmbedder":
        self.model, self.device = self.model.to(device), device
        return self

    @torch.no_grad()
    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """One row per image: the last layer's CLS token, as the paper's DINO score uses."""
        rows = []
        for i in range(0, len(images), BATCH):
            pixels = self.processor(images=_rgb(images[i : i + BATCH]), return_tensors="pt").pixel_values
            rows.append(self.model(pixel_values=pixels.to(self.device)).last_hidden_state[:, 0].float().cpu())
        return torch.cat(rows)


class ClipTextScorer:
    """CLIP-T: how well images match a prompt, as CLIP sees it."""

    def __init__(self, model: str = CLIP_MODEL, device: str = "cpu") -> None:
        from transformers import CLIPModel, CLIPProcessor

        self.processor = _from_pretrained(CLIPProcessor, model, "CLIP processor")
        self.model = _from_pretrained(CLIPModel, model, "CLIP model").eval().to(device)
        self.device = device

    def to(self, device: str) -> "ClipTextScorer":
        self.model, self.device = self.model.to(device), device
        return self

    @torch.no_grad()
    def __call__(self, images: Sequence[Image.Image], prompt: str) -> list[float]:
        """The cosine similarity of each image's CLIP embedding with the prompt's."""
        text = self.processor(text=[prompt], return_tensors="pt", padding=True, truncation=True)
        t = self.model.get_text_features(**{k: v.to(self.device) for k, v in text.items()})
        scores: list[float] = []
        for i in range(0, len(images), BATCH):
            pixels = self.processor(images=_rgb(images[i : i + BATCH]), return_tensors="pt").pixel_values
            v = self.model.get_image_features(pixel_values=pixels.to(self.device))
            scores += torch.nn.functional.cosine_similarity(_features(v), _features(t)).float().cpu().tolist()
        return scores


def _features(output) -> torch.Tensor:
    """CLIP's projected features, whether transformers returns a tensor or an output object."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output
