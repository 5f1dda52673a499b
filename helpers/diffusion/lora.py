"""LoRA DreamBooth: train small low-rank updates of the attention projections, not the whole UNet.

A rank-r update B·A of a d_out x d_in weight has r·(d_in + d_out) parameters instead of
d_in·d_out. On SD 1.5's attention projections at rank 4 that is about 0.8 M trainable parameters
instead of 860 M: a file of a few MB instead of 3.4 GB, and optimizer state to match. peft adds
the adapters (as diffusers' ``train_dreambooth_lora.py`` does); the weights are saved in diffusers'
LoRA format, which ``pipe.load_lora_weights(folder)`` reads into any pipeline built on the same base.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch

from helpers.core.atomic import write_text_atomic
from helpers.core.errors import UsageError

UNET_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
WEIGHTS = "pytorch_lora_weights.safetensors"
BASE = "lora_base.json"  # which base model the adapters belong to, for a clear error on a mismatch
_SUFFIXES = (
    ".lora.down.weight",
    ".lora.up.weight",
    ".lora_linear_layer.down.weight",
    ".lora_linear_layer.up.weight",
    ".lora_A.weight",
    ".lora_B.weight",
)


def add_lora(model: torch.nn.Module, rank: int, alpha: float | None, targets: list[str]) -> int:
    """Freeze ``model`` and give its ``targets`` trainable rank-``rank`` adapters (kept in fp32, as
    diffusers' LoRA script does, even when the frozen base is fp16). Returns the trainable count."""
    from peft import LoraConfig

    model.requires_grad_(False)
    model.add_adapter(
        LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights="gaussian", target_modules=targets)
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.data = p.data.float()
    return sum(p.numel() for p in trainable)


def _family(denoiser: torch.nn.Module) -> tuple[type, str]:
    """The pipeline class whose LoRA format holds ``denoiser``'s adapters, and their key prefix."""
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline, StableDiffusionPipeline

    if isinstance(denoiser, SD3Transformer2DModel):
        return StableDiffusion3Pipeline, "transformer"
    return StableDiffusionPipeline, "unet"


def _encoder_prefixes(text_encoders: list[torch.nn.Module]) -> list[str]:
    """The key prefixes of the text encoders' adapters, in the pipeline's order: ``text_encoder`` and, for the
    SD3 family's second CLIP, ``text_encoder_2``."""
    return ["text_encoder", "text_encoder_2"][: len(text_encoders)]


def save_lora(
    folder: Path,
    base_model: str,
    denoiser: torch.nn.Module,
    text_encoders: list[torch.nn.Module],
    rank: int,
    alpha: float | None,
) -> None:
    """The adapters in diffusers' LoRA format (the UNet's, or a flow-matching transformer's under
    ``transformer.``; those of the trained text encoders, if any, under ``text_encoder.`` and
    ``text_encoder_2.``), with a note of the base model they were trained on."""
    from diffusers.training_utils import _collate_lora_metadata
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    pipeline, part = _family(denoiser)

    def layers(model):
        state = get_peft_model_state_dict(model, save_embedding_layers=False)
        # SD 1.x's loader reads the UNet's attention adapters in diffusers' older names (to_q.lora.down);
        # SD3's reads peft's own (to_q.lora_A), which is what its training script saves
        return convert_state_dict_to_diffusers(state) if part == "unet" else state

    models = {part: denoiser} | dict(zip(_encoder_prefixes(text_encoders), text_encoders))
    pipeline.save_lora_weights(
        folder,
        **{f"{name}_lora_layers": layers(model) for name, model in models.items()},
        safe_serialization=True,
        **_collate_lora_metadata(models),  # alpha: else read back as rank
    )
    write_text_atomic(
        folder / BASE, json.dumps({"base_model": base_model, "rank": rank, "alpha": alpha or rank}, indent=2)
    )


def _text_encoder_mismatch(state: dict, text_encoders: list[torch.nn.Module]) -> str | None:
    """Loading copies whichever half is saved and skips the other without a word, so a run resumed
    with the other text-encoder choice would go on from adapters it never loaded."""
    saved = any(k.startswith("text_encoder.") for k in state)
    if saved == bool(text_encoders):
        return None
    return (
        "it holds text-encoder adapters and this run trains none"
        if saved
        else "it holds no text-encoder adapters and this run trains the text encoder"
    )


def load_adapters(folder: Path, denoiser: torch.nn.Module, text_encoders: list[torch.nn.Module]) -> None:
    """Copy the adapters saved in ``folder`` into models that already carry adapters of the same shape
    (in place, so an optimizer holding those parameters keeps working)."""
    from diffusers.training_utils import _set_state_dict_into_text_encoder
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft import set_peft_model_state_dict

    pipeline, part = _family(denoiser)
    state = pipeline.lora_state_dict(str(folder))
    state = state[0] if isinstance(state, tuple) else state  # SD 1.x's comes with its network alphas
    own = convert_unet_state_dict_to_peft(
        {k.removeprefix(f"{part}."): v for k, v in state.items() if k.startswith(f"{part}.")}
    )
    problem = _text_encoder_mismatch(state, text_encoders)
    if problem is None:
        try:
            unexpected = set_peft_model_state_dict(denoiser, own, adapter_name="default").unexpected_keys
            for prefix, encoder in zip(_encoder_prefixes(text_encoders), text_encoders):
                _set_state_dict_into_text_encoder(state, prefix=f"{prefix}.", text_encoder=encoder)
            problem = f"{unexpected[0]} is unknown here" if unexpected else None
        except RuntimeError as err:  # torch's size-mismatch report
            problem = str(err).strip().splitlines()[-1].strip()
    if problem:
        raise UsageError(
            f"the LoRA checkpoint in {folder} does not fit this model ({problem}); "
            f"resume with the --lora_rank, text-encoder choice and base model it was trained with"
        )


def adapters_only_checkpoints(accelerator, base_model: str, rank: int, alpha: float | None) -> None:
    """Make ``accelerator.save_state``/``load_state`` keep the adapters only, as diffusers'
    ``train_dreambooth_lora.py`` does: otherwise every checkpoint of a LoRA run holds the whole frozen
    UNet (1.6 GiB of fp16 weights on SD 1.5) or transformer next to a few MB of what was actually trained."""
    from diffusers import SD3Transformer2DModel, UNet2DConditionModel

    def split(models: list) -> tuple[torch.nn.Module, list[torch.nn.Module]]:
        """The denoiser, and the text encoders in the order the trainer prepared them."""
        unwrapped = [accelerator.unwrap_model(m) for m in models]
        denoiser = next(m for m in unwrapped if isinstance(m, (UNet2DConditionModel, SD3Transformer2DModel)))
        return denoiser, [m for m in unwrapped if m is not denoiser]

    def save(models: list, weights: list, output_dir: str) -> None:
        save_lora(Path(output_dir), base_model, *split(models), rank, alpha)
        weights.clear()  # nothing else for accelerate to write

    def load(models: list, input_dir: str) -> None:
        load_adapters(Path(input_dir), *split(models))
        models.clear()  # nothing else for accelerate to read

    accelerator.register_save_state_pre_hook(save)
    accelerator.register_load_state_pre_hook(load)


def is_lora_folder(path: Path) -> bool:
    return (path / WEIGHTS).is_file()


def base_model(folder: Path) -> str:
    """The base model recorded next to the adapters (``toy`` if none was recorded)."""
    note = folder / BASE
    return json.loads(note.read_text())["base_model"] if note.exists() else "toy"


def _target_shapes(folder: Path) -> dict[str, tuple[int, int]]:
    """(d_out, d_in) of every adapted weight, read from the LoRA's down (A) and up (B) matrices."""
    from safetensors import safe_open

    shapes: dict[str, list[int]] = {}
    with safe_open(str(folder / WEIGHTS), "pt") as f:
        for key in f.keys():
            suffix = next((s for s in _SUFFIXES if key.endswith(s)), None)
            if suffix is None:
                continue
            shape = f.get_slice(key).get_shape()
            entry = shapes.setdefault(key[: -len(suffix)], [0, 0])
            if "down" in suffix or "lora_A" in suffix:
                entry[1] = shape[1]
            else:
                entry[0] = shape[0]
    return {k: (v[0], v[1]) for k, v in shapes.items()}


def check_fits(pipe, folder: Path) -> None:
    """Fail with one line if the adapters were trained on a base of another shape."""
    parts = [(name, getattr(pipe, name, None)) for name in ("unet", "transformer", "text_encoder", "text_encoder_2")]
    modules = {part: dict(model.named_modules()) for part, model in parts if model is not None}
    for name, (d_out, d_in) in _target_shapes(folder).items():
        part, _, path = name.partition(".")
        found_in = modules.get(part, {})
        module = found_in.get(path) or found_in.get(f"text_model.{path}")  # CLIP's modules sit under text_model
        have = tuple(module.weight.shape) if module is not None and hasattr(module, "weight") else None
        if have != (d_out, d_in):
            found = "missing" if have is None else f"{have[0]}x{have[1]}"
            raise UsageError(
                f"the LoRA in {folder} does not fit this pipeline: {name} is {d_out}x{d_in} in the LoRA "
                f"but {found} here; it was trained on {base_model(folder)!r}, so load it into that model"
            )


def load_lora(pipe, folder: Path):
    """``pipe`` with the adapters of ``folder`` loaded, after checking that they fit."""
    check_fits(pipe, folder)
    pipe.load_lora_weights(str(folder))
    return pipe


@contextlib.contextmanager
def loaded(pipe, folder: Path) -> Iterator:
    """``pipe`` with the adapters of ``folder`` for the time of the ``with`` block, then without them again:
    one copy of a large base scores several LoRA runs or checkpoints in turn."""
    load_lora(pipe, folder)
    try:
        yield pipe
    finally:
        pipe.unload_lora_weights()
