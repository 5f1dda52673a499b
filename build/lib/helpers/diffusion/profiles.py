"""The two model profiles, and the one place where device and dtype are chosen.

`toy` is the embedded 64x64 Stable Diffusion under `data/toy-sd`: CPU, float32, runs everywhere,
offline. `sd15` is Stable Diffusion 1.5 (or any SD 1.x/2.x id or local folder) on a CUDA GPU with
its frozen parts in float16, which is what makes a DreamBooth fine-tune fit a free Colab T4. A
profile changes values only (model, resolution, steps, dtype); the same functions run for both.
"""

from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from helpers.core.errors import UsageError
from helpers.core.paths import DATA
from helpers.diffusion.latents import vae_scale_factor
from helpers.diffusion.loading import CLIP_MODEL, DINO_MODEL, SD15_MODEL, loading
from helpers.diffusion.lora import WEIGHTS as LORA_WEIGHTS
from helpers.diffusion.lora import base_model as lora_base_model
from helpers.diffusion.lora import is_lora_folder

TOY_MODEL = DATA / "toy-sd"
TOY_JUDGE = DATA / "toy-judge"
TOY_LOCATOR = DATA / "toy-locator"
TOY_CONTROLNET = DATA / "toy-controlnet"
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass(frozen=True)
class Profile:
    """Everything that differs between the toy model on a CPU and SD 1.5 on a GPU."""

    name: str
    model: str
    device: str
    dtype: torch.dtype  # of the frozen parts (VAE, text encoder when not trained)
    resolution: int
    num_inference_steps: int
    guidance_scale: float
    mixed_precision: str = "no"  # the trainers' --mixed_precision
    dino_model: str | None = (
        None  # the photo scorers (helpers.evaluation.photo_scorers); the toy judge scores toy images
    )
    clip_model: str | None = None

    @property
    def is_toy(self) -> bool:
        return self.name == "toy"


TOY = Profile("toy", str(TOY_MODEL), "cpu", torch.float32, 64, 50, 4.0)
SD15 = Profile("sd15", SD15_MODEL, "cuda", torch.float16, 512, 50, 7.5, "fp16", DINO_MODEL, CLIP_MODEL)
PROFILES = {"toy": TOY, "sd15": SD15}


def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the Hugging Face hub answers (never true with HF_HUB_OFFLINE=1)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def choose_profile(name: str | Profile | None = None) -> Profile:
    """``name`` if given (or $COURSE_PROFILE), else sd15 when a CUDA GPU and the hub are there, else toy.

    A `Profile` is taken as it is: that is how the real-model branch of every notebook runs in CI, on
    the CPU against a tiny SD-shaped model (``tests/course/test_real_branches.py``)."""
    if isinstance(name, Profile):
        return name
    name = name or os.environ.get("COURSE_PROFILE")
    if name is None:
        name = "sd15" if torch.cuda.is_available() and hub_reachable() else "toy"
    if name not in PROFILES:
        raise UsageError(f"unknown profile {name!r}: choose one of {', '.join(PROFILES)}")
    profile = PROFILES[name]
    if profile.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("the sd15 profile needs a CUDA GPU and none is visible: use the toy profile on a CPU")
    return profile


def profile_for_model(model: str) -> Profile:
    """The profile a ``--model`` value implies: toy for the toy model or a fine-tune of it, sd15 otherwise."""
    path = resolve_model(model)
    if is_lora_folder(Path(path)):
        return profile_for_model(lora_base_model(Path(path)))
    if Path(path).is_dir() and _is_toy_folder(Path(path)):
        return replace(TOY, model=path)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    return replace(SD15, model=path, device=device, dtype=dtype, resolution=native_resolution(path, SD15.resolution))


def native_resolution(path: str, default: int) -> int:
    """The image size a local pipeline folder was made for (its UNet's latent size times the VAE's
    downsampling), which is also the trainers' default ``--resolution``; ``default`` for a hub id."""
    folder = Path(path)
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text())
        vae = json.loads((folder / "vae" / "config.json").read_text())
    except (OSError, ValueError):
        return default
    return unet["sample_size"] * vae_scale_factor(vae)


def _is_toy_folder(path: Path) -> bool:
    config = path / "unet" / "config.json"
    return config.exists() and '"sample_size": 16' in config.read_text()


def resolve_model(model: str) -> str:
    """`toy`, a local folder written by `save_pretrained`, or a hub id; fails with one clear line."""
    if model == "toy":
        model = str(TOY_MODEL)
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").exists() and not is_lora_folder(path):
            raise UsageError(
                f"{model} is a folder but not a diffusers pipeline (no model_index.json) nor LoRA "
                f"weights ({LORA_WEIGHTS}): pass a folder written by save_pretrained or the trainer"
            )
        return str(path)
    if not HUB_ID.fullmatch(model):
        raise UsageError(
            f"model path {model!r} does not exist: pass --model toy, a folder written by "
            f"save_pretrained, or a hub id such as {SD15_MODEL}"
        )
    return model


def load_pipeline(
    model: str = "toy", profile: Profile | None = None, revision: str | None = None, variant: str | None = None
):
    """A StableDiffusionPipeline on the profile's device and dtype, sampling with DDIM; a model that cannot
    be loaded (a typo, offline, a missing variant) is one clear line."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    path = resolve_model(model)
    if is_lora_folder(Path(path)):  # a LoRA fine-tune: its base pipeline with the adapters loaded
        from helpers.diffusion.lora import load_lora

        return load_lora(load_pipeline(lora_base_model(Path(path)), profile, revision, variant), Path(path))
    profile = profile or profile_for_model(model)
    with loading(path, variant, revision):
        pipe = StableDiffusionPipeline.from_pretrained(
            path,
            dtype=profile.dtype,
            safety_checker=None,
            requires_safety_checker=False,
            revision=revision,
            variant=variant,
        )
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(profile.device)


def download(model: str = SD15_MODEL) -> str:
    """Fetch a hub model into the local cache before a workshop (the only network use): a diffusers
    pipeline, or one of the photo scorers (DINO, CLIP), whose files sit at the repository's root."""
    from huggingface_hub import snapshot_download

    if model in (DINO_MODEL, CLIP_MODEL):
        return snapshot_download(model, allow_patterns=["*.json", "*.txt", "*.safetensors", "pytorch_model.bin"])
    return snapshot_download(
        model,
        allow_patterns=["model_index.json", "*/*.json", "*/*.txt", "*/*.safetensors"],
        ignore_patterns=["*non_ema*", "*.fp16.*", "safety_checker/*"],
    )


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m helpers.profiles", description="Fetch a hub model before a workshop, while there is a network."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("download", help="into the local Hugging Face cache")
    fetch.add_argument("model", nargs="?", default=SD15_MODEL, help=f"a hub id (default: {SD15_MODEL})")
    print(download(parser.parse_args(argv).model))
