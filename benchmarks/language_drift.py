"""Language drift over several seeds: the same fine-tune with and without prior preservation, and the base model.

    python benchmarks/language_drift.py --seeds 0 1 2 [--identifier sks] [--train_text_encoder [--text_encoder_lr 1e-3]]
        [--prior_loss_weight 1.0] [--use_8bit_adam] [--sample_sets 4]
    python benchmarks/language_drift.py --model toy-flow [--lora_rank 16 --learning_rate 2e-3 --steps 200]
        (the toy flow model's LoRA recipe, notebook 12's)

For each seed, two DreamBooth runs that differ only in --with_prior_preservation, on the toy SD or the toy
flow model (``--model``), with notebooks 05's recipe on the toy (class images drawn unguided, the text
encoder frozen, 32-bit AdamW), then subject fidelity,
prompt fidelity, PRES and DIV of each and of the base model (helpers.evaluation.evaluate.evaluate_model,
the same sample seeds for all three), and what the toy judge reads in the class-prompt samples: how
many colours and backgrounds appear in a set of ``--num_samples``. Every number is the mean over
``--sample_sets`` sets drawn from their own seeds: in one set of 24 the count of colours hangs on the
rarest ones (the base model's blue and green come up 2 and 1 times in 96 samples), and four sets of
the base model's own samples count anywhere from 7 to 10.

Prints every run, a table of mean and standard deviation over seeds, and per seed whether prior
preservation keeps the class (DIV at least 90% of the base model's, colours and backgrounds within
one of the base model's counts, subject fidelity within 10% of the run without it) and whether the
run without it drifts (PRES above the run with it, DIV below). The subject-fidelity ceiling (new
photos of the subject, raw and through the VAE) closes the report.
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
from helpers.diffusion.profiles import PROFILES, TOY_JUDGE, load_pipeline
from helpers.dreambooth.trainer import TrainConfig, train
from helpers.evaluation.evaluate import evaluate_model, fidelity_ceiling, toy_scorers
from helpers.toy.judge import judge_images, load_judge
from helpers.toy.world import new_subject_photos

METRICS = ("subject_fidelity", "prompt_fidelity", "pres", "div", "colours", "backgrounds")
RUNS = ("base model", "with", "without")


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--model", choices=["toy", "toy-flow"], default="toy", help="the toy SD or the toy flow model")
    parser.add_argument("--lora_rank", type=int, default=None, help="train LoRA adapters of this rank instead")
    parser.add_argument("--identifier", default="sks", help="the rare word of the instance prompt")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--num_class_images", type=int, default=200)
    parser.add_argument("--prior_loss_weight", type=float, default=1.0)
    parser.add_argument(
        "--class_guidance_scale", type=float, default=1.0, help="the course's toy recipe draws class images unguided"
    )
    parser.add_argument("--num_samples", type=int, default=24)
    parser.add_argument(
        "--sample_sets",
        type=int,
        default=4,
        help="sets of --num_samples per prompt, each from its own seed: metrics and counts are their means",
    )
    parser.add_argument("--subject", default="toy_dog", help="a toy subject in data/subjects/")
    parser.add_argument("--class_noun", default="dog")
    parser.add_argument("--train_text_encoder", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument(
        "--text_encoder_lr", type=float, default=None, help="with --train_text_encoder (default: --learning_rate)"
    )
    parser.add_argument(
        "--use_8bit_adam", action=argparse.BooleanOptionalAction, default=False, help="as notebook 05 on a GPU"
    )
    return parser.parse_args()


def _finetune(args: argparse.Namespace, work: Path, seed: int, prior: bool, prompts: tuple[str, str]) -> Path:
    out = work / f"{'with' if prior else 'without'}-{seed}"
    train(
        TrainConfig(
            pretrained_model_name_or_path=args.model,
            lora_rank=args.lora_rank,
            instance_data_dir=str(ROOT / "data" / "subjects" / args.subject),
            instance_prompt=prompts[0],
            class_prompt=prompts[1],
            with_prior_preservation=prior,
            class_data_dir=str(work / f"class-{seed}"),
            num_class_images=args.num_class_images,
            prior_loss_weight=args.prior_loss_weight,
            class_guidance_scale=args.class_guidance_scale,
            train_batch_size=2,
            learning_rate=args.learning_rate,
            max_train_steps=args.steps,
            train_text_encoder=args.train_text_encoder,
            text_encoder_lr=args.text_encoder_lr,
            use_8bit_adam=args.use_8bit_adam,
            checkpointing_steps=0,
            seed=seed,
            output_dir=str(out),
            progress=False,
        )
    )
    return out


def _score(pipe, photos, prompts: tuple[str, str], seed: int, args: argparse.Namespace, judge) -> dict:
    """The metrics and the judge's counts, each the mean over ``args.sample_sets`` sets of samples."""
    samples, profile = args.num_samples, PROFILES[args.model]
    report = evaluate_model(
        pipe,
        photos,
        *prompts,
        num_samples=samples,
        seeds=tuple(seed + 100 * k for k in range(args.sample_sets)),
        num_inference_steps=profile.num_inference_steps,
        guidance_scale=profile.guidance_scale,
        pipe_kwargs=profile.pipeline_kwargs,
        keep_class_samples=True,
    )
    labels = judge_images(judge, report.pop("class_samples")).labels
    sets = range(0, samples * args.sample_sets, samples)
    return {k: report[k] for k in METRICS[:4]} | {
        kind: statistics.mean(len(set(labels[label][i : i + samples])) for i in sets)
        for kind, label in (("colours", "colour"), ("backgrounds", "background"))
    }


def _checks(base: dict, w: dict, wo: dict) -> dict[str, bool]:
    return {
        "div_at_least_90%_of_base": w["div"] >= 0.9 * base["div"],
        "colours_within_one_of_base": w["colours"] >= base["colours"] - 1,
        "backgrounds_within_one_of_base": w["backgrounds"] >= base["backgrounds"] - 1,
        "fidelity_within_10%": abs(w["subject_fidelity"] / wo["subject_fidelity"] - 1) <= 0.10,
        "without_drifts": wo["pres"] > w["pres"] and wo["div"] < w["div"],
    }


def main() -> None:
    args = _parse()
    configure_cpu()
    prompts = (f"a photo of {args.identifier} {args.class_noun}", f"a photo of {args.class_noun}")
    photos = load_image_folder(ROOT / "data" / "subjects" / args.subject)
    judge, base_pipe = load_judge(TOY_JUDGE), load_pipeline(args.model)
    results: dict[str, list[dict]] = {name: [] for name in RUNS}
    with tempfile.TemporaryDirectory(prefix="drift-") as folder:  # the fine-tunes and class images: gone after
        for seed in args.seeds:
            results["base model"].append(_score(base_pipe, photos, prompts, seed, args, judge))
            for prior in (True, False):
                out = _finetune(args, Path(folder), seed, prior, prompts)
                results["with" if prior else "without"].append(
                    _score(load_pipeline(str(out)), photos, prompts, seed, args, judge)
                )
            for name in RUNS:
                print(json.dumps({"seed": seed, "run": name, **results[name][-1]}), flush=True)
    print(f"\n{'':28s}" + "".join(f"{m:>20s}" for m in METRICS))
    for name, rows in results.items():
        cells = "".join(
            f"{statistics.mean(r[m] for r in rows):12.3f} ± {statistics.pstdev(r[m] for r in rows):.3f}"
            for m in METRICS
        )
        label = name if name == "base model" else f"{name} prior preservation"
        print(f"{label:28s}{cells}")
    print(
        f"{args.model}{f' LoRA rank {args.lora_rank}' if args.lora_rank else ''}, seeds {args.seeds}, "
        f"identifier {args.identifier!r}, {args.steps} steps, lr {args.learning_rate}, "
        f"{args.num_class_images} class images at guidance {args.class_guidance_scale}, prior loss weight "
        f"{args.prior_loss_weight}, text encoder "
        f"{'trained' if args.train_text_encoder else 'frozen'}, {'8' if args.use_8bit_adam else '32'}-bit AdamW, "
        f"{args.sample_sets} sets of {args.num_samples} samples per prompt"
    )
    for seed, base, w, wo in zip(args.seeds, *results.values()):
        print(f"seed {seed}: DIV with / base {w['div'] / base['div']:.2f}; {json.dumps(_checks(base, w, wo))}")
    ceiling = fidelity_ceiling(toy_scorers(), photos, new_subject_photos(args.subject, 24, seed=7), vae=base_pipe.vae)
    for name in ("with", "without"):
        shares = [r["subject_fidelity"] / ceiling["through_vae"] for r in results[name]]
        per_seed = ", ".join(f"{share:.3f}" for share in shares)
        print(
            f"{name} prior preservation: subject fidelity {statistics.mean(shares):.3f} of the ceiling through "
            f"the VAE (seeds {args.seeds}: {per_seed})"
        )
    print(f"ceiling: {json.dumps({k: round(v, 4) for k, v in ceiling.items()})}")


if __name__ == "__main__":
    main()
