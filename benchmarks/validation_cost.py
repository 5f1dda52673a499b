"""What samples during training cost on the toy profile, as a share of the training time.

    python benchmarks/validation_cost.py [--steps 400] [--validation_steps 100] [--num_validation_images 4]

Two runs of notebook 04's toy recipe (batch 2, prior preservation, text encoder trained, 8-bit AdamW)
side by side, one without and one with ``--validation_prompt``: the seconds of one validation
(``num_validation_images`` samples at 25 DDIM steps from the models being trained), its cost in
training steps, and the share of the run that validation took.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from helpers.core.paths import ROOT
from helpers.core.runtime import configure_cpu
from helpers.dreambooth.trainer import TrainConfig, train


def run(out: Path, steps: int, **validation) -> dict:
    result = train(
        TrainConfig(
            instance_data_dir=str(ROOT / "data" / "subjects" / "toy_dog"),
            instance_prompt="a photo of sks dog",
            class_prompt="a photo of dog",
            class_data_dir=str(out.parent / "class"),
            with_prior_preservation=True,
            num_class_images=32,
            train_text_encoder=True,
            use_8bit_adam=True,
            train_batch_size=2,
            learning_rate=1e-4,
            max_train_steps=steps,
            checkpointing_steps=0,
            progress=False,
            output_dir=str(out),
            **validation,
        )
    )
    return {"seconds": result.seconds, "validation_seconds": result.validation_seconds, "steps": result.steps}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--validation_steps", type=int, default=100)
    parser.add_argument("--num_validation_images", type=int, default=4)
    args = parser.parse_args()
    configure_cpu()
    with tempfile.TemporaryDirectory(prefix="validation-cost-") as tmp:  # both fine-tunes, removed after
        work = Path(tmp)
        plain = run(work / "plain", args.steps)
        sampled = run(
            work / "sampled",
            args.steps,
            validation_prompt="a photo of sks dog in the snow",
            validation_steps=args.validation_steps,
            num_validation_images=args.num_validation_images,
        )
    validations = args.steps // args.validation_steps
    per_validation = sampled["validation_seconds"] / validations
    step_seconds = plain["seconds"] / args.steps
    print(
        json.dumps(
            {
                "steps": args.steps,
                "validation_steps": args.validation_steps,
                "num_validation_images": args.num_validation_images,
                "validations": validations,
                "seconds_per_training_step": round(step_seconds, 4),
                "seconds_per_validation": round(per_validation, 3),
                "validation_in_training_steps": round(per_validation / step_seconds, 1),
                "validation_per_step_seconds": round(sampled["validation_seconds"] / args.steps, 4),
                "run_seconds_without_validation": round(plain["seconds"], 1),
                "run_seconds_with_validation": round(sampled["seconds"], 1),
                "validation_share_of_the_run": round(sampled["validation_seconds"] / sampled["seconds"], 4),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
