"""The model profiles, and the one place where device and dtype are chosen.

Two families, each with a toy and a real model:

- Stable Diffusion 1.x (UNet, DDPM noise, notebooks 00-10): `toy` is the embedded 64x64 Stable
  Diffusion under `data/toy-sd`: CPU, float32, runs everywhere, offline. `sd15` is Stable Diffusion 1.5
  (or any SD 1.x/2.x id or local folder) on a CUDA GPU with its frozen parts in float16, which is what
  makes a DreamBooth fine-tune fit a free Colab T4.
- Stable Diffusion 3 (MMDiT transformer, flow matching, notebooks 11-12): `toy-flow` is the embedded
  64x64 flow-matching model under `data/toy-flow`, `sd35` is Stable Diffusion 3.5 Medium on a GPU.

A profile changes values only (model, resolution, steps, dtype); the same functions run for every
profile of a family.
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
from helpers.diffusion.loading import CLIP_MODEL, DINO_MODEL, SD15_MODEL, SD35_MODEL, absent_parts, loading
from helpers.diffusion.lora import WEIGHTS as LORA_WEIGHTS
from helpers.diffusion.lora import base_model as lora_base_model
from helpers.diffusion.lora import is_lora_folder

TOY_MODEL = DATA / "toy-sd"
TOY_FLOW_MODEL = DATA / "toy-flow"
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
    family: str = "sd"  # "sd": a UNet on DDPM noise (SD 1.x); "sd3": an MMDiT trained by flow matching
    # SD3's pipeline feeds its transformer this many T5 tokens (zeros when the model has no T5); None: the
    # pipeline's own default. The toy flow model was trained with none (helpers.toy.flow_model says why).
    max_sequence_length: int | None = None
    # Guidance for drawing DreamBooth's class images; None: ``guidance_scale``, as diffusers' script draws
    # them. The toy draws them unguided: guided class images teach the fine-tune the guided look, and
    # guided sampling of the fine-tune compounds it (notebook 05 measures the collapse it causes).
    class_guidance_scale: float | None = None
    # The DreamBooth trainer's --learning_rate when left out: diffusers' 5e-6 suits SD 1.x's 860 M parameters
    # and barely moves the toy's 4.6 M in a few hundred steps, which learn the subject at 1e-4 (notebook 04).
    learning_rate: float = 5e-6
    # Whether an SD3-family pipeline loads its T5 encoder. SD 3.5 Medium's T5-XXL is 4.9 B of its 8.3 B weights
    # (about 12 GB in fp16, its feed-forward outputs kept in fp32): more than a free Colab's 12.7 GB of RAM
    # holds beside anything else, and with it the pipeline outgrows a T4's 15 GB. Without it the pipeline
    # gives the transformer zeros in T5's place (diffusers' SD3 documentation: "dropping the T5").
    t5: bool = True

    @property
    def is_toy(self) -> bool:
        return self.name in ("toy", "toy-flow")

    @property
    def is_flow(self) -> bool:
        return self.family == "sd3"

    @property
    def pipeline_kwargs(self) -> dict:
        """What every call of this profile's pipeline passes besides the prompt, steps and guidance."""
        return {} if self.max_sequence_length is None else {"max_sequence_length": self.max_sequence_length}


TOY = Profile("toy", str(TOY_MODEL), "cpu", torch.float32, 64, 50, 4.0, class_guidance_scale=1.0, learning_rate=1e-4)
SD15 = Profile("sd15", SD15_MODEL, "cuda", torch.float16, 512, 50, 7.5, "fp16", DINO_MODEL, CLIP_MODEL)
# 28 Euler steps and guidance 7: the SD3 pipeline's defaults. Notebook 11 measures the toy's class accuracy
# near its 32-step figure from 16 steps on; guidance 7 draws the class the prompt names more often than the
# toy SD's 4 does (benchmarks/toy_model.py --guidance_scale 4).
TOY_FLOW = Profile(
    "toy-flow",
    str(TOY_FLOW_MODEL),
    "cpu",
    torch.float32,
    64,
    28,
    7.0,
    family="sd3",
    max_sequence_length=0,
    class_guidance_scale=1.0,  # the toy SD's reason holds for any model sampled with guidance
    learning_rate=1e-4,  # a full fine-tune's, as the toy SD's (LoRA's adapters start at zero and want more)
)
# 512: the size a T4 fine-tunes it at (it draws up to 1440); 4.5 and 28 steps: its model card's guidance, the
# pipeline's default steps.
# No T5 on a T4 (``Profile.t5``), so its tokens are zeros: 77 of them, the SD3 script's training default, when
# sampling too (the pipeline's own default is 256).
SD35 = Profile(
    "sd35",
    SD35_MODEL,
    "cuda",
    torch.float16,
    512,
    28,
    4.5,
    "fp16",
    DINO_MODEL,
    CLIP_MODEL,
    family="sd3",
    max_sequence_length=77,
    t5=False,
)
PROFILES = {"toy": TOY, "sd15": SD15, "toy-flow": TOY_FLOW, "sd35": SD35}
FAMILIES = {"sd": (TOY, SD15), "sd3": (TOY_FLOW, SD35)}  # each family's toy and real profile


def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the Hugging Face hub answers (never true with HF_HUB_OFFLINE=1)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def choose_profile(name: str | Profile | None = None, family: str = "sd") -> Profile:
    """``name`` if given (or $COURSE_PROFILE), else the ``family``'s real profile (sd15, sd35) when a CUDA
    GPU and the hub are there, else its toy (toy, toy-flow).

    $COURSE_PROFILE picks toy or real for every notebook: a profile of the other family stands for the one
    in the same place in this family (``toy`` runs the flow notebooks on ``toy-flow``). A `Profile` is
    taken as it is: that is how the real-model branch of every notebook runs in CI, on the CPU against a
    tiny model of the hub's shape (``tests/course/test_real_branches.py``)."""
    if isinstance(name, Profile):
        return name
    toy, real = FAMILIES[family]
    name = name or _same_place(os.environ.get("COURSE_PROFILE"), family)
    if name is None:
        name = real.name if torch.cuda.is_available() and hub_reachable() else toy.name
    if name not in PROFILES:
        raise UsageError(f"unknown profile {name!r}: choose one of {', '.join(PROFILES)}")
    profile = PROFILES[name]
    if profile.device == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            f"the {name} profile needs a CUDA GPU and none is visible: use the {toy.name} profile on a CPU"
        )
    return profile


def _same_place(name: str | None, family: str) -> str | None:
    """``name``, or the profile of ``family`` in its place (toy or real) when it names another family's."""
    for other in FAMILIES.values():
        if name in (p.name for p in other):
            return FAMILIES[family][[p.name for p in other].index(name)].name
    return name


def profile_for_model(model: str) -> Profile:
    """The profile a ``--model`` value implies: the family's toy for a toy model or a fine-tune of it, its
    real profile otherwise; the family is read from the folder (SD3 hub ids by their name)."""
    path = resolve_model(model)
    if is_lora_folder(Path(path)):
        return profile_for_model(lora_base_model(Path(path)))
    toy, real = FAMILIES[model_family(path)]
    if Path(path).is_dir() and _is_toy_folder(Path(path)):
        return replace(toy, model=path)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    return replace(real, model=path, device=device, dtype=dtype, resolution=native_resolution(path, real.resolution))


def model_family(path: str) -> str:
    """ "sd3" for a StableDiffusion3Pipeline folder, an SD3 hub id or the toy-flow profile's name, "sd" otherwise."""
    if path in PROFILES:
        return PROFILES[path].family
    index = Path(path).expanduser() / "model_index.json"
    if index.is_file():
        return "sd3" if json.loads(index.read_text()).get("_class_name") == "StableDiffusion3Pipeline" else "sd"
    return "sd3" if "stable-diffusion-3" in path.lower() else "sd"


def require_sd(path: str, flag: str = "--pretrained_model_name_or_path") -> None:
    """One line for a flow-matching model given to a command that trains SD 1.x/2.x's UNet: it has none,
    and loading would fail later with a line about missing files."""
    if model_family(path) == "sd3":
        raise UsageError(
            f"{flag} {path} is a flow-matching model (StableDiffusion3Pipeline), which has no UNet: this command "
            f"trains Stable Diffusion 1.x/2.x; pass toy, a folder of one, or a hub id such as {SD15_MODEL}"
        )


def native_resolution(path: str, default: int) -> int:
    """The image size a local pipeline folder was made for (its denoiser's latent size times the VAE's
    downsampling), which is also the trainers' default ``--resolution``; ``default`` for a hub id."""
    folder = Path(path)
    try:
        denoiser = json.loads((folder / _denoiser(folder) / "config.json").read_text())
        vae = json.loads((folder / "vae" / "config.json").read_text())
    except (OSError, ValueError):
        return default
    return denoiser["sample_size"] * vae_scale_factor(vae)


def _denoiser(folder: Path) -> str:
    return "transformer" if (folder / "transformer").is_dir() else "unet"


def _is_toy_folder(path: Path) -> bool:
    """A toy model, or a fine-tune of one: a denoiser on the toy VAE's 8-channel 16x16 latents (SD 1.x
    has 4 channels, SD3 16)."""
    config = path / _denoiser(path) / "config.json"
    if not config.exists():
        return False
    shape = json.loads(config.read_text())
    return (shape.get("sample_size"), shape.get("in_channels")) == (16, 8)


def resolve_model(model: str) -> str:
    """`toy`, `toy-flow`, a local folder written by `save_pretrained`, or a hub id; fails with one clear line."""
    toys = {"toy": (TOY_MODEL, "all"), "toy-flow": (TOY_FLOW_MODEL, "flow")}
    if model in toys:
        folder, stage = toys[model]
        if not folder.is_dir():
            raise UsageError(f"the {model} model is not in {folder}: make it with `python -m helpers.pretrain {stage}`")
        model = str(folder)
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
    """The model's pipeline on the profile's device and dtype: a StableDiffusionPipeline sampling with DDIM,
    or a StableDiffusion3Pipeline with its own flow-matching Euler scheduler. A model that cannot be loaded
    (a typo, offline, a missing variant) is one clear line."""
    from diffusers import DDIMScheduler, StableDiffusion3Pipeline, StableDiffusionPipeline

    path = resolve_model(model)
    if is_lora_folder(Path(path)):  # a LoRA fine-tune: its base pipeline with the adapters loaded
        from helpers.diffusion.lora import load_lora

        return load_lora(load_pipeline(lora_base_model(Path(path)), profile, revision, variant), Path(path))
    profile = profile or profile_for_model(model)
    load = dict(dtype=profile.dtype, revision=revision, variant=variant)
    with loading(path, variant, revision):
        if model_family(path) == "sd3":
            without = {} if profile.t5 else {"text_encoder_3": None, "tokenizer_3": None}
            pipe = StableDiffusion3Pipeline.from_pretrained(path, **(absent_parts(path) | without), **load)
        else:
            pipe = StableDiffusionPipeline.from_pretrained(
                path, safety_checker=None, requires_safety_checker=False, **load
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
