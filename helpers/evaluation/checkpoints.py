"""When to stop: a DreamBooth run's checkpoints scored one by one.

DreamBooth overfits within a few hundred steps (the diffusers DreamBooth blog's main advice is to
look at samples along the way): subject fidelity climbs, then a prompt that puts the subject
somewhere new ("a photo of sks dog in the snow") is followed less and less, as the model redraws
its training photos whatever the prompt says. Each ``checkpoint-N`` of a run holds a UNet (and a
text encoder, when it was trained) that ``from_pretrained`` loads (``helpers.training.loop``), so
every step can be scored as the final model is: subject fidelity, PRES and DIV
(``helpers.evaluation.evaluate``), and the fidelity of a new-context prompt.
"""

from __future__ import annotations

import copy
import statistics
from pathlib import Path

from helpers.diffusion.generate import generate_images
from helpers.evaluation import metrics
from helpers.evaluation.evaluate import Scorers
from helpers.training.loop import checkpoints


def checkpoint_steps(output_dir: str | Path) -> list[int]:
    """The steps of a run's complete checkpoints, oldest first."""
    return [int(p.name.removeprefix("checkpoint-")) for p in checkpoints(Path(output_dir))]


def with_checkpoint(base, output_dir: str | Path, step: int):
    """``base`` with the UNet (and text encoder, if that run trained it) of ``checkpoint-step``, at
    ``base``'s device and dtype; ``base`` itself is left as it was (step 0 is ``base``)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    if step == 0:
        return base
    folder = Path(output_dir) / f"checkpoint-{step}"
    pipe = copy.copy(base)  # a shallow copy: the same VAE, tokenizer and scheduler
    kw = dict(device=base.unet.device, dtype=base.unet.dtype)
    parts = {"unet": UNet2DConditionModel.from_pretrained(folder, subfolder="unet").to(**kw)}
    if (folder / "text_encoder").is_dir():
        parts["text_encoder"] = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder").to(**kw)
    pipe.register_modules(**parts)
    return pipe


def score_checkpoint(
    pipe,
    scorers: Scorers,
    photos,
    prompts: dict[str, str],
    num_samples: int,
    seed: int,
    sample_kw: dict,
) -> dict[str, float]:
    """Subject fidelity of ``prompts["instance"]`` samples; PRES and DIV of ``prompts["class"]``
    samples; prompt fidelity and subject fidelity of ``prompts["context"]`` samples (the subject
    somewhere new: is the prompt still followed, and is it still the subject?)."""
    subject = scorers.embed(photos)
    drawn = {k: generate_images(pipe, p, num_samples, seed=seed, **sample_kw) for k, p in prompts.items()}
    emb = {k: scorers.embed(images) for k, images in drawn.items()}
    return {
        "subject_fidelity": metrics.subject_fidelity(emb["instance"], subject),
        "pres": metrics.subject_fidelity(emb["class"], subject),
        "div": metrics.diversity(emb["class"]),
        "context_fidelity": scorers.prompt_fidelity(drawn["context"], prompts["context"]),
        "context_subject_fidelity": metrics.subject_fidelity(emb["context"], subject),
    }


def score_run(base, output_dir: str | Path, scorers: Scorers, photos, prompts: dict[str, str], **kw) -> list[dict]:
    """``score_checkpoint`` at every checkpoint of a run, oldest first, each row with its step.
    ``kw``: ``num_samples``, ``seed`` and ``sample_kw``, the same for every step (paired samples)."""
    rows = []
    for step in checkpoint_steps(output_dir):
        pipe = with_checkpoint(base, output_dir, step)
        rows.append({"step": step} | score_checkpoint(pipe, scorers, photos, prompts, **kw))
        del pipe  # one checkpoint's UNet in memory at a time
    return rows


def mean_rows(runs: list[list[dict]]) -> list[dict]:
    """Row by row (step by step), the mean of each score over runs (seeds) that share their steps."""
    return [
        {k: statistics.mean(r[k] for r in rows) if k != "step" else rows[0]["step"] for k in rows[0]}
        for rows in zip(*runs)
    ]


def sweet_spot(rows: list[dict], keep: float = 0.9) -> int:
    """The step to keep: the highest subject fidelity among the trained steps whose new-context prompt
    fidelity is still at least ``keep`` of the best a trained step reached. Later steps that draw the
    subject a little better by ignoring the prompt are the overfitting the lesson looks for. The base
    model (step 0) sets no bar and is never kept: it follows every prompt because it knows no subject."""
    trained = [r for r in rows if r["step"] > 0] or rows
    best = max(r["context_fidelity"] for r in trained)
    floor = best - (1 - keep) * abs(best)  # the best step itself always qualifies, whatever the scale's sign
    allowed = [r for r in trained if r["context_fidelity"] >= floor]
    return max(allowed, key=lambda r: r["subject_fidelity"])["step"]
