"""Loading Stable Diffusion parts from a folder or the hub, with every failure as one line.

A learner on Colab meets the hub's failures before any of the course's own: an id with a typo, a
model that is not in the cache while the runtime is offline, a folder that holds only
``*.fp16.safetensors`` (a ``variant``), a revision that does not exist. diffusers and transformers
report them as tracebacks that end in a sentence about files; here each becomes a `UsageError`
that names the problem and the fix, raised before anything is written to an output folder.

Trainable parts are always loaded in float32, whatever dtype the folder was saved in: transformers
loads a model in the dtype it was saved in, so an fp16 copy of SD 1.5 would otherwise give an fp16
text encoder whose gradients fp16 mixed precision cannot unscale ("Attempting to unscale FP16
gradients"). diffusers' training scripts refuse such a start; the trainers here check it too
(`check_float32`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from helpers.core.errors import UsageError, first_line

WEIGHT_SUFFIXES = (".safetensors", ".bin")
# The hub models the course fetches: SD 1.5, SD 3.5 Medium (the flow-matching family's real model), and
# the DreamBooth paper's photo scorers (helpers.evaluation.photo_scorers).
SD15_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SD35_MODEL = "stabilityai/stable-diffusion-3.5-medium"
DINO_MODEL = "facebook/dino-vits16"
CLIP_MODEL = "openai/clip-vit-base-patch32"


def weight_files(folder: Path) -> list[Path]:
    """The weight files under a local pipeline folder, every part and variant."""
    return [p for p in folder.rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file()]


def _variants(folder: Path) -> set[str]:
    """The variants whose weights a local pipeline folder holds ("" for plain file names)."""
    found = set()
    for p in weight_files(folder):
        stem = p.name[: -len(p.suffix)]
        parts = stem.rsplit(".", 1)
        found.add(parts[1] if len(parts) == 2 else "")
    return found


def check_variant(model: str, variant: str | None) -> None:
    """For a local folder: fail in one line when the asked-for variant (or the plain weights) is absent."""
    folder = Path(model).expanduser()
    if not folder.is_dir():
        return
    have = _variants(folder)
    if not have:
        return
    if variant is None and "" not in have:
        only = ", ".join(sorted(have))
        raise UsageError(f"{model} holds only {only}-variant weights (*.{only}.safetensors): pass --variant {only}")
    if variant is not None and variant not in have:
        plain = " (it has plain weights: leave out --variant)" if "" in have else ""
        raise UsageError(f"{model} has no {variant!r} variant (no *.{variant}.safetensors){plain}")


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def explain(model: str, err: BaseException, revision: str | None = None) -> str:
    """One line for a failed load: what went wrong with ``model``, and what to do about it."""
    from huggingface_hub import errors

    names = {type(e).__name__ for e in _chain(err)}
    first = first_line(err)
    if Path(model).expanduser().is_dir():
        return f"could not load {model!r} ({first}): is it a complete folder written by save_pretrained?"
    if names & {errors.RevisionNotFoundError.__name__}:
        return f"{model!r} has no revision {revision!r} on the hub: check --revision (a branch, tag or commit)"
    if names & {errors.GatedRepoError.__name__}:
        return (
            f"{model!r} is gated on the hub: accept its licence on its page, then log in "
            "(`huggingface-cli login`, or HF_TOKEN)"
        )
    if names & {errors.RepositoryNotFoundError.__name__}:
        return (
            f"{model!r} is not a model on the hub, nor a local folder: check the spelling "
            f"(for example {SD15_MODEL}); a private model needs `huggingface-cli login`"
        )
    if names & {errors.LocalEntryNotFoundError.__name__, errors.OfflineModeIsEnabled.__name__}:
        return (
            f"could not load {model!r}: it is not in the local cache and the hub cannot be reached (offline); "
            f"run `python -m helpers.profiles download {model}` on a connected machine first, "
            "or pass a local folder"
        )
    return f"could not load {model!r} ({first}): check the model id or folder, and the network"


@contextmanager
def loading(model: str, variant: str | None = None, revision: str | None = None) -> Iterator[None]:
    """Checks the variant up front, and turns a failed load inside the block into one line."""
    check_variant(model, variant)
    try:
        yield
    except (OSError, ValueError) as err:
        if isinstance(err, UsageError):
            raise
        raise UsageError(explain(model, err, revision)) from None


def load_parts(path: str, revision: str | None = None, variant: str | None = None):
    """Tokenizer, DDPM noise scheduler, text encoder, VAE and UNet of a Stable Diffusion folder or hub id,
    every model in float32 whatever the folder's dtype (the trainers cast the frozen ones afterwards)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    hub = dict(revision=revision)
    weights = dict(hub, variant=variant)
    with loading(path, variant, revision):
        return (
            CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", **hub),
            DDPMScheduler.from_pretrained(path, subfolder="scheduler", **hub),
            CLIPTextModel.from_pretrained(path, subfolder="text_encoder", dtype=torch.float32, **weights),
            AutoencoderKL.from_pretrained(path, subfolder="vae", dtype=torch.float32, **weights),
            UNet2DConditionModel.from_pretrained(path, subfolder="unet", dtype=torch.float32, **weights),
        )


def absent_parts(model: str) -> dict[str, None]:
    """The T5 encoder and tokenizer as None when a local SD3 folder was saved without them.

    ``StableDiffusion3Pipeline.from_pretrained`` refuses such a folder unless the call passes both as None
    (the pipeline lists them as required, unlike its optional image encoder); a folder with a T5, or a hub
    id, keeps it."""
    index = Path(model).expanduser() / "model_index.json"
    if not index.is_file():
        return {}
    parts = json.loads(index.read_text())
    return {name: None for name in ("text_encoder_3", "tokenizer_3") if name in parts and parts[name][0] is None}


def check_float32(**models: torch.nn.Module) -> None:
    """diffusers' guard before training: trainable weights start in float32, even with mixed precision
    (autocast makes the half-precision copies; the optimizer must step on float32 masters)."""
    for name, model in models.items():
        low = {p.dtype for p in model.parameters() if p.requires_grad and p.dtype != torch.float32}
        if low:
            raise RuntimeError(
                f"the {name} was loaded as {low.pop()}: trainable weights must be float32 even with "
                "mixed precision (load them with dtype=torch.float32)"
            )
