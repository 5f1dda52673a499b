"""`python -m helpers.upscaler pretrain | finetune | upscale`, and the saved model's card."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from helpers.core.atomic import write_text_atomic
from helpers.core.folders import building, check_output, claim_output, staged
from helpers.core.images import load_image_folder
from helpers.core.numbers import at_least, positive, seed_in_range
from helpers.core.paths import DATA
from helpers.core.runtime import configure_cpu
from helpers.upscaler.model import (
    HIGH,
    LOW,
    RESIDUAL_SCALE,
    ToyUpscalePipeline,
    build_upscaler,
    check_sizes,
    load_upscaler,
)
from helpers.upscaler.training import MAX_BLUR, MAX_NOISE, TOOL, FinetuneConfig, finetune, pretrain

STAGES = "stages.json"
UPSCALED = "helpers.upscaler upscale"  # its images: an `upscale` never replaces a model folder, nor the reverse


def save(pipe: ToyUpscalePipeline, output: str | Path, stages: list[dict], shipped_ok: bool = False) -> Path:
    """Write the pipeline, its training history and a model card into ``output``, a folder this command
    made (``shipped_ok``: the shipped model's, for `pretrain`). A fine-tune's checkpoints and loss history
    stay beside the new model, and a crash or a full disk leaves the earlier model whole."""
    output = claim_output(output, TOOL, shipped_ok=shipped_ok)
    with staged(output) as stage:
        pipe.save_pretrained(stage, safe_serialization=True)
        write_text_atomic(stage / STAGES, json.dumps(stages, indent=2))
        write_text_atomic(stage / "README.md", _model_card(stages))
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
    args = parser.parse_args(argv)
    _check(args)
    return args


def _check(args: argparse.Namespace) -> None:
    """Numbers that cannot work (argparse's float takes inf and nan) end in one line before any model
    loads; a fine-tune's are checked by the rules of its Python API, ``FinetuneConfig.check``."""
    if args.command == "finetune":
        names = {f.name for f in dataclasses.fields(FinetuneConfig)}
        FinetuneConfig(**{k: v for k, v in vars(args).items() if k in names}).check()
        return
    seed_in_range("--seed", args.seed)
    if args.command == "upscale":
        at_least("--num_inference_steps", args.num_inference_steps, 1, "pass e.g. 10")
        return
    at_least("--max_train_steps", args.max_train_steps, 1)
    at_least("--train_batch_size", args.train_batch_size, 1)
    positive("--learning_rate", args.learning_rate, "pass a positive learning rate such as 1e-3")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(argv)
    configure_cpu()
    command = "python -m helpers.upscaler " + " ".join(shlex.quote(a) for a in argv)
    if args.command == "upscale":
        _upscale(args)
        return
    _claim(args)
    if args.command == "pretrain":
        torch.manual_seed(args.seed)
        pipe, stages = build_upscaler(), []
        result = pretrain(
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
    pretrained = args.command == "pretrain"
    out = save(pipe, args.output if pretrained else args.output_dir, stages, shipped_ok=pretrained)
    print(json.dumps(stages[-1] | {"output": str(out)}))


def _claim(args: argparse.Namespace) -> None:
    """The folder a training command writes, checked before the model loads: `pretrain` (which may replace
    the shipped model) makes and marks it here; `finetune` writes its checkpoints there, so never among the
    learner's photos, and ``finetune()`` itself makes and marks it."""
    if args.command == "pretrain":
        claim_output(args.output, TOOL, "--output", shipped_ok=True)
    else:
        check_output(args.output_dir, TOOL, inputs={"--instance_data_dir": args.instance_data_dir})


def _upscale(args: argparse.Namespace) -> None:
    """Upscale a folder of images into ``--output_dir``, replaced whole; the folder is checked before the
    model is loaded, so that the learner's own images are never mixed with or replaced by upscaled ones."""
    check_output(args.output_dir, UPSCALED, inputs={"--images": args.images})
    images = load_image_folder(args.images)
    check_sizes(images)
    out = load_upscaler(args.model)(images, args.num_inference_steps, seed=args.seed, progress=True)
    with building(args.output_dir, UPSCALED) as build:
        for k, img in enumerate(out):
            img.save(build / f"{k:04d}.png")
    print(json.dumps({"images": len(out), "output_dir": str(args.output_dir)}))
