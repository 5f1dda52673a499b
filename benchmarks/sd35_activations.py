"""What SD 3.5 Medium's MMDiT-X saves for its backward pass, per sample: the activation terms of
``helpers.training.memory`` for the flow-matching transformer, measured on a CPU in seconds.

    python benchmarks/sd35_activations.py [--rank 16]

A full SD 3.5 Medium transformer does not fit a short CPU run, but its activations add up block by block:
every block of one kind saves the same. So the script builds the transformer at its real width (1536, 24
heads of 64) with 2 and 3 blocks, with and without dual attention (MMDiT-X's image-only attention in blocks
0-12), adds rank-``--rank`` LoRA adapters on the SD3 script's projections, runs one forward pass under
bf16 autocast (2 bytes a value, as fp16) and counts the distinct storages that autograd saves
(``torch.autograd.graph.saved_tensors_hooks``), leaving out weights and buffers. Differences give one dual
block, one plain block, and the rest (embedders, the last block, the output layer); at two resolutions,
the bytes per image token and per text token of the whole 24-block model.

With gradient checkpointing, diffusers keeps each block's inputs (image and text tokens, the timestep
embedding) and what the embedders and output layer save, and at the backward pass recomputes one block at a
time: the largest block's activations on top. The script prints those three parts too.

What it cannot see: the CUDA kernels' own workspaces, and any op whose fp16 autocast rule on a GPU differs
from bf16's on a CPU; ``benchmarks/gpu_notebooks.py`` measures the real peak on a GPU under a T4's cap.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import sd3_shaped  # noqa: E402

from helpers.diffusion.lora import add_lora  # noqa: E402
from helpers.dreambooth.flow_trainer import SD3_LORA_TARGETS  # noqa: E402

WIDTH = 1536
CLIP_TOKENS, T5_TOKENS = 77, 77  # the SD3 script's prompt: CLIP's 77 tokens, then --max_sequence_length 77
SIDES = (32, 64)  # latent sides: 256 and 512 px, 256 and 1024 image tokens (patch 2)
LAYERS, DUAL = 24, 13  # SD 3.5 Medium: 24 blocks, dual attention in blocks 0-12, the last one text-output-free


def transformer(blocks: int, dual: int, rank: int):
    """SD 3.5 Medium's transformer with ``blocks`` blocks (the first ``dual`` with dual attention), in bf16,
    with LoRA adapters as a DreamBooth LoRA run has them."""
    from diffusers import SD3Transformer2DModel

    shape = dict(sd3_shaped.TRANSFORMER["sd35"], num_layers=blocks, dual_attention_layers=tuple(range(dual)))
    torch.manual_seed(0)
    model = SD3Transformer2DModel(
        patch_size=2,
        in_channels=16,
        out_channels=16,
        joint_attention_dim=sd3_shaped.T5["sd35"]["d_model"],
        caption_projection_dim=WIDTH,
        pooled_projection_dim=2048,
        qk_norm="rms_norm",
        **shape,
    ).to(torch.bfloat16)
    add_lora(model, rank, rank, SD3_LORA_TARGETS)
    return model


def saved_bytes(model, side: int, outside_blocks: bool = False) -> int:
    """The bytes autograd saves in one forward pass of one sample (distinct storages, weights left out);
    ``outside_blocks``: only what the embedders and output layer save."""
    depth = [0]
    for block in model.transformer_blocks:
        block.register_forward_pre_hook(lambda *_: depth.__setitem__(0, depth[0] + 1))
        block.register_forward_hook(lambda *_: depth.__setitem__(0, depth[0] - 1))
    weights = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights and not (outside_blocks and depth[0]):
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    g = torch.Generator().manual_seed(0)
    inputs = dict(
        hidden_states=torch.randn(1, 16, side, side, generator=g).bfloat16(),
        encoder_hidden_states=torch.randn(1, CLIP_TOKENS + T5_TOKENS, 4096, generator=g).bfloat16(),
        pooled_projections=torch.randn(1, 2048, generator=g).bfloat16(),
        timestep=torch.tensor([500.0]),
    )
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        model(**inputs)
    return sum(seen.values())


def measure(rank: int) -> dict:
    sizes = {}
    for blocks, dual in ((2, 1), (3, 1), (3, 2)):
        model = transformer(blocks, dual, rank)
        sizes[blocks, dual] = {side: saved_bytes(model, side) for side in SIDES}
        if (blocks, dual) == (2, 1):
            outer = {side: saved_bytes(model, side, outside_blocks=True) for side in SIDES}
    text = CLIP_TOKENS + T5_TOKENS
    rows = {}
    for side in SIDES:
        plain = sizes[3, 1][side] - sizes[2, 1][side]
        dual = plain + sizes[3, 2][side] - sizes[3, 1][side]
        rest = sizes[2, 1][side] - dual  # embedders, output layer, and the last block
        tokens = (side // 2) ** 2 + text
        rows[side] = dict(
            image_tokens=(side // 2) ** 2,
            dual_block=dual,
            plain_block=plain,
            rest=rest,
            full=rest + DUAL * dual + (LAYERS - 1 - DUAL) * plain,
            checkpointed=outer[side] + LAYERS * (tokens + 1) * WIDTH * 2 + max(dual, plain, rest - outer[side]),
        )
    small, large = rows[SIDES[0]], rows[SIDES[1]]
    per_image_token = {m: (large[m] - small[m]) / (large["image_tokens"] - small["image_tokens"]) for m in ("full",)}
    per_image_token["checkpointed"] = (large["checkpointed"] - small["checkpointed"]) / (
        large["image_tokens"] - small["image_tokens"]
    )
    per_text_token = {m: (large[m] - large["image_tokens"] * per_image_token[m]) / text for m in per_image_token}
    return {"rows": rows, "per_image_token": per_image_token, "per_text_token": per_text_token}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rank", type=int, default=16)
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    result = measure(args.rank)
    print(
        f"{'latent side':>12} {'image tokens':>13} {'dual block':>11} {'plain block':>12} {'rest':>8} "
        f"{'full, 24 blocks':>16} {'checkpointed':>13}   (MB a sample)"
    )
    for side, r in result["rows"].items():
        print(
            f"{side:>12} {r['image_tokens']:>13} {r['dual_block'] / 1e6:>11.1f} {r['plain_block'] / 1e6:>12.1f} "
            f"{r['rest'] / 1e6:>8.1f} {r['full'] / 1e6:>16.1f} {r['checkpointed'] / 1e6:>13.1f}"
        )
    for mode in ("full", "checkpointed"):
        print(
            f"{mode}: {result['per_image_token'][mode]:,.0f} bytes per image token, "
            f"{result['per_text_token'][mode]:,.0f} per text token"
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
