"""Language drift over several seeds: the same fine-tune with and without prior preservation.

    python benchmarks/language_drift.py --seeds 0 1 2 [--no-train_text_encoder]

For each seed, two toy DreamBooth runs that differ only in --with_prior_preservation (both train the
text encoder too, as notebooks 04 and 05 do on the toy: its frozen encoder barely tells "sks dog"
from "dog"), then subject fidelity, prompt fidelity, PRES and DIV of each
(helpers.evaluation.evaluate.evaluate_model). Prints every run, a table of mean and standard deviation over
seeds, the subject-fidelity ceiling (new photos of the subject, raw and through the VAE) with each
mean as a share of it, and, per seed, whether the drift goes the way the paper's ablation does: with
prior preservation PRES lower and DIV higher than without, subject fidelity within 10%.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from helpers.core.images import load_image_folder
from helpers.core.paths import ROOT
from helpers.core.runtime import configure_cpu
from helpers.diffusion.profiles import TOY, load_pipeline
from helpers.dreambooth.trainer import TrainConfig, train
from helpers.evaluation.evaluate import evaluate_model, fidelity_ceiling, toy_scorers
from helpers.toy.world import new_subject_photos

METRICS = ("subject_fidelity", "prompt_fidelity", "pres", "div")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--num_class_images", type=int, default=32)
    parser.add_argument("--num_samples", type=int, default=24)
    parser.add_argument("--subject", default="toy_dog", help="a toy subject in data/subjects/")
    parser.add_argument("--class_noun", default="dog")
    parser.add_argument("--train_text_encoder", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    configure_cpu()
    instance_prompt, class_prompt = f"a photo of sks {args.class_noun}", f"a photo of {args.class_noun}"
    subject_dir = ROOT / "data" / "subjects" / args.subject
    photos = load_image_folder(subject_dir)
    work = Path(tempfile.mkdtemp(prefix="drift-"))
    results: dict[str, list[dict]] = {"with": [], "without": []}
    for seed in args.seeds:
        for prior in (True, False):
            out = work / f"{'with' if prior else 'without'}-{seed}"
            run = train(
                TrainConfig(
                    instance_data_dir=str(subject_dir),
                    instance_prompt=instance_prompt,
                    class_prompt=class_prompt,
                    with_prior_preservation=prior,
                    class_data_dir=str(work / f"class-{seed}"),
                    num_class_images=args.num_class_images,
                    train_batch_size=2,
                    learning_rate=args.learning_rate,
                    max_train_steps=args.steps,
                    train_text_encoder=args.train_text_encoder,
                    use_8bit_adam=True,
                    checkpointing_steps=0,
                    seed=seed,
                    output_dir=str(out),
                    progress=False,
                )
            )
            report = evaluate_model(
                load_pipeline(str(out)),
                photos,
                instance_prompt,
                class_prompt,
                num_samples=args.num_samples,
                seeds=(seed,),
                guidance_scale=TOY.guidance_scale,
            )
            report["train_seconds"] = round(run.seconds, 1)
            results["with" if prior else "without"].append(report)
            print(
                json.dumps({"seed": seed, "prior_preservation": prior, **{k: report[k] for k in METRICS}}), flush=True
            )
    print(f"\n{'':28s}" + "".join(f"{m:>22s}" for m in METRICS))
    for name, rows in results.items():
        cells = "".join(
            f"{statistics.mean(r[m] for r in rows):14.3f} ± {statistics.pstdev(r[m] for r in rows):.3f}"
            for m in METRICS
        )
        print(f"{name + ' prior preservation':28s}{cells}")
    print(
        f"seeds {args.seeds}, {args.steps} steps, lr {args.learning_rate}, text encoder "
        f"{'trained' if args.train_text_encoder else 'frozen'}, {args.num_samples} samples per prompt"
    )
    ceiling = fidelity_ceiling(
        toy_scorers(), photos, new_subject_photos(args.subject, 24, seed=7), vae=load_pipeline("toy").vae
    )
    for name, rows in results.items():
        share = statistics.mean(r["subject_fidelity"] for r in rows) / ceiling["through_vae"]
        print(f"{name} prior preservation: subject fidelity {share:.3f} of the ceiling through the VAE")
    print(f"ceiling: {json.dumps({k: round(v, 4) for k, v in ceiling.items()})}")
    for seed, w, wo in zip(args.seeds, results["with"], results["without"]):
        holds = {
            "pres_lower": w["pres"] < wo["pres"],
            "div_higher": w["div"] > wo["div"],
            "fidelity_within_10%": abs(w["subject_fidelity"] / wo["subject_fidelity"] - 1) <= 0.10,
        }
        print(f"seed {seed}: {json.dumps(holds)}")


if __name__ == "__main__":
    main()
