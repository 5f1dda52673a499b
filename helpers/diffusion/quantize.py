"""A 4-bit base for QLoRA: the frozen transformer's linear layers stored in bitsandbytes' NF4.

A LoRA run never changes the base weights, so they need not be kept at full precision: NF4 stores each
weight in 4 bits (16 levels spaced as the quantiles of a normal distribution, which is how trained
weights are spread), with one fp32 scale per block of 64 weights: about 0.56 bytes a weight instead of
fp16's 2. Each forward pass dequantizes a layer's block to the compute dtype, multiplies, and drops the
copy; the adapters beside it stay in fp32 and are all that trains (QLoRA, Dettmers et al. 2023).

This is what diffusers' ``from_pretrained(..., quantization_config=BitsAndBytesConfig(load_in_4bit=True))``
does to a model (``replace_with_bnb_linear``: every ``nn.Linear`` becomes a ``bnb.nn.Linear4bit``, its
weights quantized when they move to the device), done by hand on a loaded model so that the same code runs
on the GPU and, through bitsandbytes' CPU backend, in the course's tests (diffusers' loader refuses a
machine without a GPU). The settings come from the JSON file diffusers' newer DreamBooth scripts read with
``--bnb_quantization_config_path``: ``BitsAndBytesConfig``'s keyword arguments.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from helpers.core.errors import UsageError, first_line

QUANT_TYPES = ("nf4", "fp4")
# The keys the 4-bit path reads; the compute dtype follows --mixed_precision, as in diffusers' scripts.
KEYS = {"load_in_4bit", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant", "bnb_4bit_compute_dtype"}


@dataclass(frozen=True)
class Quantization:
    """How the base is stored: the 4-bit data type, and whether the per-block scales are quantized too
    (double quantization: 8-bit scales with one fp32 scale per 256 blocks, about 0.4 bits a weight saved)."""

    quant_type: str = "nf4"
    double_quant: bool = False


def read_quantization(path: str | Path) -> Quantization:
    """The 4-bit settings of a ``BitsAndBytesConfig`` JSON file (e.g. ``configs/nf4.json``); anything else is
    one line that says what to write instead."""
    path = Path(path).expanduser()
    fix = 'write e.g. {"load_in_4bit": true, "bnb_4bit_quant_type": "nf4"} (configs/nf4.json)'
    if path.is_dir():
        raise UsageError(
            f"--bnb_quantization_config_path {path} is a folder: pass a JSON file such as configs/nf4.json"
        )
    try:
        settings = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"--bnb_quantization_config_path {path} does not exist: {fix}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"--bnb_quantization_config_path {path} is not a JSON file ({err}): {fix}") from None
    if not isinstance(settings, dict):
        raise UsageError(f"--bnb_quantization_config_path {path} holds no JSON object: {fix}")
    if settings.get("load_in_8bit"):
        raise UsageError(f"{path} asks for an 8-bit base: a LoRA base here is 4-bit (QLoRA): {fix}")
    unknown = sorted(set(settings) - KEYS - {"load_in_8bit"})
    if unknown:
        raise UsageError(f"{path} has keys the 4-bit base does not read ({', '.join(unknown)}): {fix}")
    if settings.get("load_in_4bit") is not True:
        raise UsageError(f"{path} does not set load_in_4bit to true: {fix}")
    quant_type = settings.get("bnb_4bit_quant_type", "nf4")
    if quant_type not in QUANT_TYPES:
        raise UsageError(f"{path}: bnb_4bit_quant_type {quant_type!r} is unknown: pass one of {', '.join(QUANT_TYPES)}")
    return Quantization(quant_type, bool(settings.get("bnb_4bit_use_double_quant", False)))


def check_backend(device: torch.device | str) -> None:
    """One line, before any loading, when bitsandbytes cannot run a 4-bit layer on ``device``."""
    try:
        import bitsandbytes as bnb

        probe = bnb.nn.Linear4bit(64, 64, compute_dtype=torch.float32, quant_type="nf4").to(device)
        probe(torch.zeros(1, 64, device=device))
    except Exception as err:  # an import, a missing kernel, a driver: all end the same way for the learner
        reason = first_line(err)
        raise UsageError(
            f"a 4-bit base needs bitsandbytes' 4-bit kernels on {device}, which did not run ({reason}): "
            "pip install 'bitsandbytes>=0.50', or leave out --bnb_quantization_config_path"
        ) from None


def quantize_linears(
    model: torch.nn.Module, quantization: Quantization, compute_dtype: torch.dtype, device: torch.device | str
) -> int:
    """Swap every ``nn.Linear`` of ``model`` for a frozen ``bnb.nn.Linear4bit`` holding its weights, move the
    model to ``device`` (where bitsandbytes quantizes them) and return how many layers were swapped. Biases,
    norms and embeddings keep their dtype; call it before adding adapters."""
    import bitsandbytes as bnb

    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not torch.nn.Linear:
                continue
            layer = bnb.nn.Linear4bit(
                child.in_features,
                child.out_features,
                bias=child.bias is not None,
                compute_dtype=compute_dtype,
                compress_statistics=quantization.double_quant,
                quant_type=quantization.quant_type,
                device="meta",
            )
            layer.weight = bnb.nn.Params4bit(
                child.weight.data,
                requires_grad=False,
                quant_type=quantization.quant_type,
                compress_statistics=quantization.double_quant,
            )
            # bitsandbytes' CPU inference kernel repacks the weights in place and only for widths divisible by 32;
            # on a CPU (the tests' tiny models) every forward takes the plain dequantize-and-multiply path instead.
            layer.support_avx512bf16_for_cpu = False
            if child.bias is not None:
                layer.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
            setattr(parent, name, layer)
            swapped += 1
    model.requires_grad_(False)
    model.is_loaded_in_4bit = True  # as diffusers' loader marks it: peft then wraps these layers in its 4-bit LoRA
    model.to(device)
    return swapped


def quantized_bytes(model: torch.nn.Module) -> int:
    """What the model's weights take on its device: packed 4-bit weights, their scales, everything else."""
    import bitsandbytes as bnb

    total = 0
    for module in model.modules():
        for param in module.parameters(recurse=False):
            total += param.numel() * param.element_size()
        if isinstance(module, bnb.nn.Linear4bit) and module.weight.quant_state is not None:
            state = module.weight.quant_state
            total += state.absmax.numel() * state.absmax.element_size()
            if state.state2 is not None:
                total += state.state2.absmax.numel() * state.state2.absmax.element_size()
    return total
