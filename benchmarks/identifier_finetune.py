"""Can the toy model learn a new identifier? A plain 400-step DreamBooth-style loop, no prior loss.

    python benchmarks/identifier_finetune.py [--subject data/subjects/toy_dog] [--train_text_encoder]

Fine-tunes the toy UNet (and optionally the text encoder) on the subject's photos with the prompt
"a photo of sks <class>", then compares judge-embedding similarity to the subject photos of
(a) "a photo of sks <class>" samples after fine-tuning, (b) the same prompt before, and
(c) plain class-prompt samples before fine-tuning (the class average). Identity is learned when
(a) is clearly above (b) and (c).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from helpers.core.images import load_image_folder
from helpers.core.paths import ROOT
from helpers.core.runtime import configure_cpu, seed_everything
from helpers.diffusion.generate import generate_images
from helpers.diffusion.profiles import TOY, TOY_JUDGE, load_pipeline
from helpers.evaluation import metrics
from helpers.toy.judge import judge_images, load_judge, to_tensor


def fidelity(pipe, judge, prompt: str, subject_emb: torch.Tensor, n: int, seed: int) -> float:
    images = generate_images(pipe, prompt, n, seed=seed, num_inference_steps=50, guidance_scale=TOY.guidance_scale)
    return metrics.subject_fidelity(judge_images(judge, images).embeddings, subject_emb)


def finetune(pipe, images, prompt: str, steps: int, lr: float, train_text_encoder: bool, seed: int) -> float:
    """The loop in its plainest form: encode once, then noise, predict, MSE, step."""
    seed_everything(seed)
    with torch.no_grad():
        latents = pipe.vae.encode(to_tensor(images)).latent_dist.mean * pipe.vae.config.scaling_factor
        latents = torch.cat([latents, latents.flip(-1)])  # horizontal flips: the subject faces both ways
    ids = pipe.tokenizer(
        [prompt], padding="max_length", max_length=pipe.tokenizer.model_max_length, return_tensors="pt"
    ).input_ids
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    params = list(pipe.unet.parameters()) + (list(pipe.text_encoder.parameters()) if train_text_encoder else [])
    pipe.unet.train()
    pipe.text_encoder.train(train_text_encoder)
    opt = torch.optim.AdamW(params, lr=lr)
    start = time.perf_counter()
    for _ in tqdm(range(steps), desc="fine-tune"):
        x0 = latents[torch.randint(0, len(latents), (4,))]
        noise = torch.randn_like(x0)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(x0),))
        with torch.set_grad_enabled(train_text_encoder):
            cond = pipe.text_encoder(ids)[0].expand(len(x0), -1, -1)
        loss = F.mse_loss(pipe.unet(scheduler.add_noise(x0, noise, t), t, cond).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    pipe.unet.eval()
    pipe.text_encoder.eval()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subject", type=Path, default=ROOT / "data" / "subjects" / "toy_dog")
    parser.add_argument("--class_noun", default="dog")
    parser.add_argument("--identifier", default="sks")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--train_text_encoder", action="store_true")
    parser.add_argument("--num_samples", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    configure_cpu()
    pipe, judge = load_pipeline("toy"), load_judge(TOY_JUDGE)
    photos = load_image_folder(args.subject)
    subject_emb = judge_images(judge, photos).embeddings
    instance_prompt = f"a photo of {args.identifier} {args.class_noun}"
    class_prompt = f"a photo of a {args.class_noun}"
    n, s = args.num_samples, args.seed + 500
    before = {
        "instance_prompt": fidelity(pipe, judge, instance_prompt, subject_emb, n, s),
        "class_prompt": fidelity(pipe, judge, class_prompt, subject_emb, n, s),
    }
    seconds = finetune(
        pipe, photos, instance_prompt, args.steps, args.learning_rate, args.train_text_encoder, args.seed
    )
    after = {
        "instance_prompt": fidelity(pipe, judge, instance_prompt, subject_emb, n, s),
        "class_prompt": fidelity(pipe, judge, class_prompt, subject_emb, n, s),
    }
    views = subject_emb @ subject_emb.T
    report = {
        "subject": str(args.subject.relative_to(ROOT)),
        "instance_prompt": instance_prompt,
        "steps": args.steps,
        "learning_rate": args.learning_rate,
        "train_text_encoder": args.train_text_encoder,
        "seed": args.seed,
        "samples_per_prompt": n,
        "finetune_seconds": round(seconds, 1),
        "subject_photos_self_similarity": round(views[~torch.eye(len(views), dtype=bool)].mean().item(), 4),
        "subject_fidelity_before": {k: round(v, 4) for k, v in before.items()},
        "subject_fidelity_after": {k: round(v, 4) for k, v in after.items()},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
