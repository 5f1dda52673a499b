"""Language drift over several seeds: the same fine-tune with and without prior preservation.

    python benchmarks/language_drift.py --seeds 0 1 2

For each seed, two toy DreamBooth runs that differ only in --with_prior_preservation, then
subject fidelity, prompt fidelity, PRES and DIV of each (helpers.evaluate.evaluate_model). Prints
every run and a table of mean and standard deviation over seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from helpers.data import load_image_folder
from helpers.evaluate import evaluate_model
from helpers.profiles import ROOT, TOY, load_pipeline
from helpers.runtime import configure_cpu
from helpers.train import TrainConfig, train

METRICS = ("subject_fidelity", "prompt_fidelity", "pres", "div")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--num_class_images", type=int, default=32)
    parser.add_argument("--num_samples", type=int, default=24)
    parser.add_argument("--subject", type=Path, default=ROOT / "data" / "subjects" / "toy_dog")
    parser.add_argument("--class_noun", default="dog")
    args = parser.parse_args()
    configure_cpu()
    instance_prompt, class_prompt = f"a photo of sks {args.class_noun}", f"a photo of {args.class_noun}"
    photos = load_image_folder(args.subject)
    work = Path(tempfile.mkdtemp(prefix="drift-"))
    results: dict[str, list[dict]] = {"with": [], "without": []}
    for seed in args.seeds:
        for prior in (True, False):
            out = work / f"{'with' if prior else 'without'}-{seed}"
            run = train(TrainConfig(
                instance_data_dir=str(args.subject), instance_prompt=instance_prompt, class_prompt=class_prompt,
                with_prior_preservation=prior, class_data_dir=str(work / f"class-{seed}"),
                num_class_images=args.num_class_images, train_batch_size=2, learning_rate=args.learning_rate,
                max_train_steps=args.steps, use_8bit_adam=True, checkpointing_steps=0, seed=seed,
                output_dir=str(out), progress=False))
            report = evaluate_model(load_pipeline(str(out)), photos, instance_prompt, class_prompt,
                                    num_samples=args.num_samples, seeds=(seed,), guidance_scale=TOY.guidance_scale)
            report["train_seconds"] = round(run.seconds, 1)
            results["with" if prior else "without"].append(report)
            print(json.dumps({"seed": seed, "prior_preservation": prior, **{k: report[k] for k in METRICS}}), flush=True)
    print(f"\n{'':28s}" + "".join(f"{m:>22s}" for m in METRICS))
    for name, rows in results.items():
        cells = "".join(f"{statistics.mean(r[m] for r in rows):14.3f} ± {statistics.pstdev(r[m] for r in rows):.3f}"
                        for m in METRICS)
        print(f"{name + ' prior preservation':28s}{cells}")
    print(f"seeds {args.seeds}, {args.steps} steps, lr {args.learning_rate}, {args.num_samples} samples per prompt")


if __name__ == "__main__":
    main()
