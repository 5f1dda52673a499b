"""The model card written beside every DreamBooth and LoRA output (``README.md``, the hub's format).

A folder of weights says nothing of how it was made. The card records what a learner needs to use
the model and to make it again: the base model, the prompts, steps and learning rate, the exact
command, the samples drawn during training, and, when the photos came from the DreamBooth paper's
dataset, their licence and photographers. It is ``huggingface_hub``'s ``ModelCard``, so the hub
shows it as the model's page when the folder is pushed; so it names no path of this machine (a
folder of the course by its path from the course's root, any other by its name: `shareable_path`).
"""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path

from helpers.core.cli import settings_command
from helpers.core.paths import ROOT
from helpers.diffusion.profiles import TOY_FLOW_MODEL, TOY_MODEL, model_family
from helpers.dreambooth.identifiers import identifier_words

DATASET = ROOT / "data" / "dreambooth"
CARD = "README.md"
PATH_SETTINGS = ("resume_from_checkpoint",)  # path settings besides every *_dir, *_path and the base model
LICENCES = {
    "toy": "apache-2.0",
    "toy-flow": "apache-2.0",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "creativeml-openrail-m",
}
# ComfyUI's LoRA loader maps diffusers' SD3 keys (transformer.transformer_blocks.N.attn.to_q.lora_A.weight, ...)
# onto its MMDiT (comfy/lora.py, model_lora_keys_unet), so the file needs no conversion.
COMFYUI = (
    "ComfyUI: put `pytorch_lora_weights.safetensors` in `models/loras` and load it with a LoRA loader node as it is."
)
TOY_FOLDERS = {"toy": "data/toy-sd", "toy-flow": "data/toy-flow"}  # where a learner's clone keeps each toy


def photo_credit(instance_data_dir: str) -> str | None:
    """The licence and photographer of the DreamBooth dataset's photos, when they came from it."""
    folder = Path(instance_data_dir).resolve()
    if folder.parent != DATASET.resolve():
        return None
    blocks = (DATASET / "references_and_licenses.txt").read_text(encoding="utf-8").split("--")
    block = next((b.strip() for b in blocks if b.strip().startswith(f"{folder.name}:")), "")
    credit = next((line.strip("() ") for line in block.splitlines() if "credit" in line), "see the dataset's README")
    return (
        f"The photos are the `{folder.name}` subject of the DreamBooth dataset (Ruiz et al., 2023), licensed "
        f"CC-BY-4.0 ({credit}); each photo's source is in `data/dreambooth/references_and_licenses.txt`."
    )


def shareable_path(value: str) -> str:
    """A path setting as a card shows it, with nothing of this machine in it: a folder inside the course
    as its path from the course's root (the same in every clone), any other local path as its folder's
    name; a value that is no local path (a hub id, ``latest``) as it is."""
    path = Path(value).expanduser()
    if not (path.is_absolute() or value.startswith("~") or path.exists()):
        return value
    path = path.resolve()
    return path.relative_to(ROOT.resolve()).as_posix() if path.is_relative_to(ROOT.resolve()) else path.name


def base_name(base: str) -> str:
    """How the card names the base model: ``toy`` for the embedded toy model however it was passed, a
    local folder by `shareable_path`, a hub id as it is."""
    for name, folder in (("toy", TOY_MODEL), ("toy-flow", TOY_FLOW_MODEL)):
        if base != name and Path(base).expanduser().resolve() == folder.resolve():
            return name
    return shareable_path(base)


def shown_settings(config):
    """``config`` with its paths made shareable (`shareable_path`), for the card's command: a copy, so no
    check runs again and the run's own settings are untouched."""
    shown = copy.copy(config)
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, str) and (f.name in PATH_SETTINGS or f.name.endswith(("_dir", "_path"))):
            setattr(shown, f.name, shareable_path(value))
    shown.pretrained_model_name_or_path = base_name(config.pretrained_model_name_or_path)
    return shown


def _relative(path: str, folder: Path) -> str:
    return Path(os.path.relpath(path, folder)).as_posix()


def model_card(config, result, output_dir: Path):
    """The ``ModelCard`` of a finished run (``config``: a TrainConfig, ``result``: its TrainResult)."""
    from huggingface_hub import ModelCard, ModelCardData

    base = base_name(config.pretrained_model_name_or_path)
    lora = config.lora_rank is not None
    samples = [_relative(p, output_dir) for p in result.validation_grids]
    data = ModelCardData(
        license=LICENCES.get(base),
        base_model=base if base in LICENCES and base != "toy" else None,
        library_name="diffusers",
        pipeline_tag="text-to-image",
        tags=["text-to-image", "diffusers", "dreambooth"] + (["lora"] if lora else []),
        instance_prompt=config.instance_prompt,
        widget=[{"text": config.validation_prompt, "output": {"url": samples[-1]}}] if samples else None,
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n" + _body(config, result, samples))


def _body(config, result, samples: list[str]) -> str:
    base, lora = base_name(config.pretrained_model_name_or_path), config.lora_rank is not None
    identifier = " ".join(identifier_words(config.instance_prompt, config.class_prompt)) or config.instance_prompt
    kind = f"LoRA adapters (rank {config.lora_rank}, alpha {config.lora_alpha or config.lora_rank})" if lora else "A"
    flow = model_family(config.pretrained_model_name_or_path) == "sd3"
    pipeline = "StableDiffusion3Pipeline" if flow else "StableDiffusionPipeline"
    without_t5 = base == "toy-flow" or config.without_t5  # the toy was saved without T5
    no_t5 = ", text_encoder_3=None, tokenizer_3=None" if without_t5 else ""
    load = (
        f'pipe = {pipeline}.from_pretrained("{TOY_FOLDERS.get(base, base)}"{no_t5})\n'
        'pipe.load_lora_weights("path/to/this/folder")'
        if lora
        else f'pipe = {pipeline}.from_pretrained("path/to/this/folder"{no_t5})'
    )
    call = f", max_sequence_length={config.t5_tokens()}" if flow else ""
    rows = [
        ("base model", f"`{base}`"),
        ("instance prompt", f"`{config.instance_prompt}`"),
        ("captions", f"{result.captioned_images} photos had their own caption file"),
        ("class prompt", f"`{config.class_prompt}`" if config.with_prior_preservation else "none"),
        ("prior preservation", f"weight {config.prior_loss_weight}" if config.with_prior_preservation else "off"),
        ("steps", f"{result.steps}, batch {config.train_batch_size} x {config.gradient_accumulation_steps}"),
        (
            "learning rate",
            ("the model's default" if config.learning_rate is None else f"{config.learning_rate:g}")
            + f" ({config.lr_scheduler})"
            + (", scaled" if config.scale_lr else ""),
        ),
        ("text encoder", "trained" if config.train_text_encoder else "frozen"),
        *(
            [("T5", "left out (`--without_t5`): load the pipeline without it to use the model")]
            if config.without_t5
            else []
        ),
        *(
            [("base in training", "4-bit NF4 (QLoRA); the adapters load into the full-precision base")]
            if config.bnb_quantization_config_path
            else []
        ),
        ("seed", str(config.seed)),
        ("training time", f"{result.seconds:.0f} s ({result.steps_per_second:.2f} steps/s)"),
    ]
    lines = [
        f"# DreamBooth: `{identifier}` on `{base}`",
        "",
        f"{kind} DreamBooth fine-tune of `{base}` that draws the subject of its photos when a prompt names "
        f"`{identifier}`, trained by the course's trainer (`helpers.dreambooth`).",
        "",
        "## Use it",
        "",
        "```python",
        f"from diffusers import {pipeline}",
        "",
        load,
        f'image = pipe("{config.instance_prompt}"{call}).images[0]',
        "```",
        *(["", COMFYUI] if flow and lora else []),
        "",
        "## Training",
        "",
        "| setting | value |",
        "|---|---|",
        *[f"| {name} | {value} |" for name, value in rows],
        "",
        "Made by:",
        "",
        "```",
        settings_command("helpers.dreambooth", shown_settings(config)),
        "```",
        "",
        "## Samples",
        "",
    ]
    if samples:
        lines += [f'"{config.validation_prompt}", seeds {config.seed} and on, by step:', ""]
        lines += [f"![step {Path(p).stem.removeprefix('step-').lstrip('0')}]({p})" for p in samples]
    else:
        lines += ["None drawn: pass `--validation_prompt` (and `--validation_steps`) to draw some during training."]
    credit = photo_credit(config.instance_data_dir)
    if credit:
        lines += ["", "## Photos", "", credit]
    return "\n".join(lines) + "\n"
