"""Trainer throughput on the toy profile: steps per second for six configurations.

    python benchmarks/train_throughput.py [--steps 60]

UNet only, UNet + prior preservation, UNet + text encoder; each with torch AdamW and with
bitsandbytes AdamW8bit. Batch 2 (plus 2 class images with prior preservation), 64 px. Only the
training loop is timed: model loading, latent caching and class-image generation are not.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from helpers.core.paths import ROOT
from helpers.core.runtime import configure_cpu
from helpers.dreambooth.trainer import TrainConfig, train

CONFIGS = {
    "unet": {},
    "unet + prior preservation": {"with_prior_preservation": True},
    "unet + text encoder": {"train_text_encoder": True},
}


def measure(work: Path, steps: int) -> list[dict]:
    """Train each configuration in 32 and 8 bits for ``steps`` steps in ``work``; a row of figures each."""
    rows = []
    for name, extra in CONFIGS.items():
        for eight_bit in (False, True):
            result = train(
                TrainConfig(
                    instance_data_dir=str(ROOT / "data" / "subjects" / "toy_dog"),
                    instance_prompt="a photo of sks dog",
                    class_prompt="a photo of dog",
                    class_data_dir=str(work / "class"),
                    num_class_images=16,
                    train_batch_size=2,
                    learning_rate=1e-4,
                    max_train_steps=steps,
                    use_8bit_adam=eight_bit,
                    checkpointing_steps=0,
                    output_dir=str(work / "out"),
                    progress=False,
                    **extra,
                )
            )
            rows.append(
                {
                    "config": name,
                    "optimizer": "AdamW8bit" if eight_bit else "AdamW",
                    "steps_per_second": round(result.steps_per_second, 2),
                    "optimizer_state_MiB": round(result.optimizer_state_bytes / 2**20, 2),
                    "trainable_parameters": result.trainable_parameters,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    configure_cpu()
    with tempfile.TemporaryDirectory(prefix="throughput-") as tmp:  # class images and fine-tunes, removed after
        rows = measure(Path(tmp), args.steps)
    print(f"\n{'config':28s} {'optimizer':10s} {'steps/s':>8s} {'opt. state MiB':>15s}")
    for r in rows:
        print(f"{r['config']:28s} {r['optimizer']:10s} {r['steps_per_second']:8.2f} {r['optimizer_state_MiB']:15.2f}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} steps each")


if __name__ == "__main__":
    main()
