"""ControlNet for the toy model and SD 1.x: a trainable copy of the UNet's encoder that reads a structure image.

ControlNet (Zhang et al., 2023) copies the frozen UNet's down blocks and middle block, feeds the
copy the noisy latents plus an embedding of the condition image (edges, a sketch, a layout), and
adds the copy's features back into the frozen UNet through **zero convolutions**: 1x1 convolutions
whose weights and biases start at zero. At step 0 the ControlNet therefore changes nothing, and
training starts from exactly the base model's behaviour.

This module builds, loads and samples ControlNets, and scores how well they follow held-out
two-object layouts; the trainer is `helpers.control.trainer`, run from a terminal as

    python -m helpers.controlnet --train_data_dir outputs/control-data --output_dir outputs/controlnet
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from PIL import Image

from helpers.control import tikz
from helpers.core.errors import UsageError
from helpers.diffusion.loading import loading
from helpers.diffusion.profiles import HUB_ID, TOY_CONTROLNET, TOY_LOCATOR
from helpers.toy import relations

# The condition image enters at full resolution and a small convolutional embedding brings it down to
# the latent grid, one stride-2 step per halving of the VAE: two take the toy's 64 px to its 16 x 16
# latents (4x), three take SD 1.x/2.x's 512 px to 64 x 64 (8x, the channels of diffusers' default).
CONDITIONING_CHANNELS = {4: (16, 32, 32), 8: (16, 32, 96, 256)}
# What a ControlNet copies from its base UNet and must match: the residuals it adds have these shapes.
BASE_SHAPE = ("in_channels", "block_out_channels", "layers_per_block", "down_block_types", "cross_attention_dim")


def conditioning_channels(scale_factor: int) -> tuple[int, ...]:
    """The condition embedding's channels for a VAE that downsamples ``scale_factor`` times."""
    if scale_factor not in CONDITIONING_CHANNELS:
        raise UsageError(
            f"the base model's VAE downsamples {scale_factor}x, and a ControlNet condition embedding "
            "is defined here for 4x (the toy model) and 8x (SD 1.x/2.x) only: use one of those bases"
        )
    return CONDITIONING_CHANNELS[scale_factor]


def build_controlnet(unet: UNet2DConditionModel, scale_factor: int) -> ControlNetModel:
    """A ControlNet initialised from ``unet``'s encoder weights, its zero convolutions at zero, whose condition
    embedding brings images down by the VAE's ``scale_factor`` (``pipe.vae_scale_factor``) to the latent grid."""
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=conditioning_channels(scale_factor))


def _shape(config, scale_factor: int) -> dict[str, object]:
    return {
        key: tuple(config[key]) if isinstance(config[key], (list, tuple)) else config[key] for key in BASE_SHAPE
    } | {"vae_scale_factor": scale_factor}


def _describe(shape: dict[str, object], keys: list[str]) -> str:
    return ", ".join(f"{key} {shape[key]}" for key in keys)


def check_fits(
    controlnet: ControlNetModel, unet: UNet2DConditionModel, scale_factor: int, where: str, base: str
) -> None:
    """One line, instead of a shape error deep in the UNet, when ``controlnet`` was made for another base
    than the one whose ``unet`` (and VAE of ``scale_factor``) it is to steer."""
    steps = len(controlnet.config.conditioning_embedding_out_channels) - 1
    made_for, here = _shape(controlnet.config, 2**steps), _shape(unet.config, scale_factor)
    differ = [key for key in made_for if made_for[key] != here[key]]
    if differ:
        raise UsageError(
            f"the ControlNet in {where} was trained for a base with {_describe(made_for, differ)}, but "
            f"{base} has {_describe(here, differ)}: train a new one for this base, or pass the base it "
            "was made for"
        )


def zero_convolutions(controlnet: ControlNetModel) -> dict[str, object]:
    """The layers through which the ControlNet speaks to the UNet (and the embedding's last conv)."""
    layers = {f"controlnet_down_blocks.{i}": m for i, m in enumerate(controlnet.controlnet_down_blocks)}
    layers["controlnet_mid_block"] = controlnet.controlnet_mid_block
    layers["controlnet_cond_embedding.conv_out"] = controlnet.controlnet_cond_embedding.conv_out
    return layers


def controlnet_pipeline(pipe, controlnet: ControlNetModel):
    """A StableDiffusionControlNetPipeline that shares ``pipe``'s frozen parts (nothing is copied)."""
    from diffusers import StableDiffusionControlNetPipeline

    out = StableDiffusionControlNetPipeline(**pipe.components, controlnet=controlnet.to(pipe.device))
    out.set_progress_bar_config(disable=True)
    return out


def load_controlnet(path: str | Path = TOY_CONTROLNET) -> ControlNetModel:
    """A ControlNet saved by the trainer (``save_pretrained``) or on the hub; one clear line if there is none."""
    folder = Path(path).expanduser()
    local = folder.is_dir() or not HUB_ID.fullmatch(str(path))
    if local and not (folder / "config.json").exists():
        raise UsageError(
            f"no ControlNet in {str(path)!r} (no config.json): train one with "
            "`python -m helpers.controlnet --train_data_dir DIR --output_dir DIR`"
        )
    source = str(folder) if local else str(path)
    with loading(source):
        return ControlNetModel.from_pretrained(source).eval()


def load_controlnet_pipeline(path: str | Path = TOY_CONTROLNET, model: str = "toy"):
    """The base pipeline with a trained ControlNet, and with its UNet if the decoder was trained too;
    a ControlNet made for another base is one clear line."""
    from helpers.diffusion.profiles import load_pipeline

    controlnet = load_controlnet(path)
    pipe = load_pipeline(model)
    check_fits(controlnet, pipe.unet, pipe.vae_scale_factor, str(path), model)
    unet = Path(path).expanduser() / "unet"
    if unet.is_dir():  # trained with --unlock_unet_decoder
        pipe.unet = UNet2DConditionModel.from_pretrained(unet).to(pipe.device, pipe.unet.dtype).eval()
    return controlnet_pipeline(pipe, controlnet)


# Two-object prompts want little classifier-free guidance: the prompt names both classes but cannot say which
# goes where, so guidance pushes both everywhere and overrules the sketch; a conditioning scale above 1 lets the
# sketch speak louder. The shipped toy ControlNet on its card's 128 held-out true layouts (object accuracy;
# relation within 3 points): guidance 7 and scale 1, 0.59; guidance 7 and scale 2, 0.60; guidance 1.5 and
# scale 2, 0.76. The 8000-step ControlNet before it: guidance 7 and scale 1.5, 0.40; guidance 2 and scale 1.5,
# 0.67-0.74 and guidance 1.5 and scale 2, 0.70-0.76 on three sets of 128 (benchmarks/controlgpt_relations.py
# --seeds 0 --count 128 --guidance_scale G --conditioning_scale S measures any pair).
GUIDANCE_SCALE = 1.5
CONDITIONING_SCALE = 2.0


def held_out_samples(count: int, seed: int = 0) -> list[relations.RelationSample]:
    """Two-object scenes of the held-out class pairs, the same ones for the same seed."""
    first = 10**9 + seed * 100_003
    return [relations.relation_sample(first + k, relations.HELD_OUT_PAIRS) for k in range(count)]


def true_layout(sample: relations.RelationSample, size: int = 64) -> Image.Image:
    """The sketch a perfect planner would draw for the sample: its objects' real boxes."""
    return tikz.render(relations.layout_code(sample, size), size, labels="glyph")


@torch.no_grad()
def draw(
    pipe,
    prompts: list[str],
    sketches: list[Image.Image] | None = None,
    seed: int = 0,
    steps: int = 20,
    guidance_scale: float = GUIDANCE_SCALE,
    conditioning_scale: float = CONDITIONING_SCALE,
    batch_size: int = 16,
) -> list[Image.Image]:
    """Images for prompts, each from its own seeded generator; through the ControlNet when sketches are given."""
    images: list[Image.Image] = []
    for i in range(0, len(prompts), batch_size):
        batch = prompts[i : i + batch_size]
        kw = dict(
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            generator=[torch.Generator().manual_seed(seed + i + k) for k in range(len(batch))],
        )
        if sketches is not None:
            kw |= dict(image=sketches[i : i + batch_size], controlnet_conditioning_scale=conditioning_scale)
        images += pipe(batch, **kw).images
    return images


def layout_scores(pipe, count: int, seed: int = 0, **draw_kwargs) -> dict[str, float]:
    """How well a ControlNet pipeline follows true layouts of held-out scenes, read by the locator."""
    from helpers.toy.locator import load_locator, locate, score_relations

    samples = held_out_samples(count, seed)
    images = draw(pipe, [s.prompt for s in samples], [true_layout(s) for s in samples], seed, **draw_kwargs)
    return score_relations(locate(load_locator(TOY_LOCATOR), images), samples)


def sudden_convergence(curve: list[dict], key: str = "relation_accuracy") -> dict:
    """Where a validation curve jumps: the step after the largest rise between two validations.

    The ControlNet authors report that a ControlNet does not learn gradually: for many steps it
    ignores the condition, then within a short stretch it follows it. A curve of how well samples
    follow the condition shows that as one large rise; this names where it is.
    """
    if len(curve) < 2:
        raise ValueError("a curve needs at least two validations to have a jump")
    a, b = max(zip(curve, curve[1:]), key=lambda pair: pair[1][key] - pair[0][key])
    return {"step": b["step"], "from_step": a["step"], "before": a[key], "after": b[key], "rise": b[key] - a[key]}
