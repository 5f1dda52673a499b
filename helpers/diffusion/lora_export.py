"""A LoRA for other tools: the kohya / A1111 key format that AUTOMATIC1111, ComfyUI and kohya's
sd-scripts read.

diffusers saves LoRA weights under its own module names (``unet.down_blocks.0...lora.down.weight``);
the other tools want kohya's (``lora_unet_down_blocks_0_..._to_q.lora_down.weight``) with one
``.alpha`` per module, and ignore keys they do not know: "my LoRA does nothing in A1111". diffusers
and peft have the conversion (``convert_all_state_dict_to_peft``, then ``convert_state_dict_to_kohya``);
three things are set around it, because the converter assumes SDXL, one key style and alpha = rank:

- the UNet's and the text encoder's weights are converted separately (diffusers saves them in two
  styles, ``lora.down`` and ``lora_linear_layer.down``), and the text encoder's keep CLIP's
  ``text_model.`` (``lora_te_text_model_encoder_layers_0_...``, the name A1111 looks up);
- SD 1.x has one text encoder, which kohya calls ``lora_te`` (``lora_te1``/``lora_te2`` are SDXL's two);
- the alpha of every module is the run's ``--lora_alpha`` (the converter writes the rank), so that
  the file scales its update by alpha/rank as training did.

    python -m helpers.export_lora out/sks-dog-lora     # writes pytorch_lora_weights_kohya.safetensors there
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from helpers.core.atomic import save_safetensors_atomic
from helpers.core.errors import UsageError
from helpers.diffusion.lora import BASE, WEIGHTS, is_lora_folder

KOHYA_WEIGHTS = "pytorch_lora_weights_kohya.safetensors"  # the name diffusers' scripts give it


def kohya_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """The LoRA saved in ``folder`` (diffusers' format), in kohya's keys with its alphas."""
    from diffusers.utils import convert_all_state_dict_to_peft, convert_state_dict_to_kohya
    from safetensors.torch import load_file

    folder = Path(folder)
    if not is_lora_folder(folder):
        raise UsageError(
            f"{folder} holds no LoRA ({WEIGHTS}): pass the --output_dir of a DreamBooth run with --lora_rank"
        )
    alpha = float(json.loads((folder / BASE).read_text())["alpha"]) if (folder / BASE).exists() else None
    saved, peft = load_file(str(folder / WEIGHTS)), {}
    for part in ("unet.", "text_encoder."):  # one at a time: diffusers writes their keys in two styles
        weights = {k.removeprefix(part): v for k, v in saved.items() if k.startswith(part)}
        if not weights:
            continue
        for key, value in convert_all_state_dict_to_peft(weights).items():
            if part == "text_encoder." and not key.startswith("text_model."):
                key = f"text_model.{key}"  # CLIP's module path, which kohya's names spell out
            peft[part + key] = value
    kohya = convert_state_dict_to_kohya(peft)
    out = {}
    for key, value in kohya.items():
        key = key.replace("lora_te1_", "lora_te_", 1)
        if key.endswith(".alpha"):
            value = torch.tensor(alpha if alpha is not None else float(value), dtype=torch.float32)
        out[key] = value.contiguous()
    return out


def export_kohya(folder: Path) -> Path:
    """Write ``folder``'s LoRA as one kohya-format safetensors file beside it; its path."""
    path = Path(folder) / KOHYA_WEIGHTS
    save_safetensors_atomic(kohya_state_dict(folder), path)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m helpers.export_lora", description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="a LoRA run's --output_dir (holds pytorch_lora_weights.safetensors)")
    print(export_kohya(parser.parse_args(argv).folder))
