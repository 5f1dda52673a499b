"""`python -m helpers.upscaler pretrain | finetune | upscale`, and the saved model's card."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from helpers.core.atomic import replace_dir_atomic, write_text_atomic
from helpers.core.images import load_image_folder
from helpers.core.paths import DATA
from helpers.core.runtime import configure_cpu
from helpers.training.loop import HISTORY
from helpers.upscaler.model import (
    HIGH,
    LOW,
    RESIDUAL_SCALE,
    ToyUpscalePipeline,
    build_upscaler,
    check_sizes,
    load_upscaler,
)
from helpers.upscaler.training import MAX_BLUR, MAX_NOISE, FinetuneConfig, finetune, fit

STAGES = "stages.json"


def save(pipe: ToyUpscalePipeline, output: str | Path, stages: list[dict]) -> Path:
    """Write the pipeline, its training history and a model card; the old folder survives a crash."""
    output = Path(output).expanduser().resolve()
    build = output.with_name(f".{output.name}.build")
    pipe.save_pretrained(build, safe_serialization=True)
    write_text_atomic(build / STAGES, json.dumps(stages, indent=2))
    write_text_atomic(build / "README.md", _model_card(stages))
    for kept in [*output.glob("checkpoint-*"), output / HISTORY]:  # a fine-tune's, beside the model it made
        if kept.exists():
            os.replace(kept, build / kept.name)
    replace_dir_atomic(build, output)
    return output


def _model_card(stages: list[dict]) -> str:
    rows = "\n".join(
        f"| {s['stage']} | `{s['command']}` | {s['steps']} | {s['batch_size']} | {s['seed']} | "
        f"{s['seconds']} s | {s['final_loss']:.4f} |"
        for s in stages
    )
    return f"""---
library_name: diffusers
tags: [super-resolution, toy, education]
---
# Toy diffusion upscaler ({LOW} px -> {HIGH} px, CPU)

A pixel-space `UNet2DModel` (v-prediction, cosine noise schedule) that sees the bicubic-upsampled
{LOW} px image as three extra input channels and denoises the {HIGH} px detail that bicubic
misses (the residual, times {RESIDUAL_SCALE}): the super-resolution stage of a cascaded model, for
the course's toy world. Trained on random 64 px crops of {HIGH} px toy scenes whose objects
carry small emblems that {LOW} px cannot hold, with conditioning augmentation (each low-resolution
input blurred by up to {MAX_BLUR} px and noised by up to {MAX_NOISE} std, at random); sampled with
10 DDIM steps.

| stage | command | steps | batch | seed | wall time | final loss |
|---|---|---|---|---|---|---|
{rows}

Load it with `helpers.upscaler.load_upscaler(path)` (a `ToyUpscalePipeline`, a `DiffusionPipeline`).
"""


def _stages_of(model: Path) -> list[dict]:
    path = model / STAGES
    return json.loads(path.read_text()) if path.exists() else []


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m helpers.upscaler", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    pre = sub.add_parser("pretrain", help="train from scratch on fresh toy scenes")
    pre.add_argument("--output", type=Path, default=DATA / "toy-upscaler")
    pre.add_argument("--max_train_steps", type=int, default=2000)
    pre.add_argument("--learning_rate", type=float, default=1e-3)
    pre.add_argument("--train_batch_size", type=int, default=16)
    pre.add_argument("--seed", type=int, default=0)
    fine = sub.add_parser("finetune", help="fine-tune on a subject's 128 px photos (DreamBooth step b)")
    fine.add_argument("--model", type=Path, default=DATA / "toy-upscaler")
    fine.add_argument("--instance_data_dir", type=Path, required=True)
    fine.add_argument("--output_dir", type=Path, required=True)
    fine.add_argument("--max_train_steps", type=int, default=150)
    fine.add_argument("--learning_rate", type=float, default=1e-3)
    fine.add_argument("--train_batch_size", type=int, default=4)
    fine.add_argument(
        "--augment",
        type=float,
        default=0.25,
        help="conditioning augmentation, as a fraction of pretraining's (the paper keeps it low)",
    )
    fine.add_argument("--checkpointing_steps", type=int, default=50)
    fine.add_argument("--checkpoints_total_limit", type=int, default=1)
    fine.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint-N folder or 'latest'")
    fine.add_argument("--seed", type=int, default=0)
    up = sub.add_parser("upscale", help=f"upscale a folder of {LOW} px images to {HIGH} px")
    up.add_argument("--model", type=Path, default=DATA / "toy-upscaler")
    up.add_argument("--images", type=Path, required=True)
    up.add_argument("--output_dir", type=Path, required=True)
    up.add_argument("--num_inference_steps", type=int, default=10)
    up.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(argv)
    configure_cpu()
    command = "python -m helpers.upscaler " + " ".join(shlex.quote(a) for a in argv)
    if args.command == "upscale":
        images = load_image_folder(args.images)
        check_sizes(images)
        out = load_upscaler(args.model)(images, args.num_inference_steps, seed=args.seed, progress=True)
        args.output_dir.mkdir(parents=True, exist_ok=True)
        for k, img in enumerate(out):
            img.save(args.output_dir / f"{k:04d}.png")
        print(json.dumps({"images": len(out), "output_dir": str(args.output_dir)}))
        return
    if args.command == "pretrain":
        torch.manual_seed(args.seed)
        pipe, stages = build_upscaler(), []
        result = fit(
            pipe,
            args.max_train_steps,
            args.learning_rate,
            args.train_batch_size,
            seed=args.seed,
            world_seed=1_000_000 * (args.seed + 1),
        )
    else:
        pipe, stages = load_upscaler(args.model), _stages_of(args.model)
        config = FinetuneConfig(
            output_dir=str(args.output_dir),
            max_train_steps=args.max_train_steps,
            learning_rate=args.learning_rate,
            train_batch_size=args.train_batch_size,
            augment=args.augment,
            checkpointing_steps=args.checkpointing_steps,
            checkpoints_total_limit=args.checkpoints_total_limit,
            resume_from_checkpoint=args.resume_from_checkpoint,
            seed=args.seed,
        )
        result = finetune(pipe, load_image_folder(args.instance_data_dir), config)
    stages.append(
        {
            "stage": args.command,
            "command": command,
            "steps": args.max_train_steps,
            "batch_size": args.train_batch_size,
            "seed": args.seed,
            "seconds": round(result.seconds, 1),
            "final_loss": float(np.mean(result.losses[-50:])),
        }
    )
    out = save(pipe, args.output if args.command == "pretrain" else args.output_dir, stages)
    print(json.dumps(stages[-1] | {"output": str(out)}))
