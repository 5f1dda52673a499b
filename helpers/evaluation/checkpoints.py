"""When to stop: a DreamBooth run's checkpoints scored one by one.

DreamBooth overfits within a few hundred steps (the diffusers DreamBooth blog's main advice is to
look at samples along the way): subject fidelity climbs, then a prompt that puts the subject
somewhere new ("a photo of sks dog in the snow") is followed less and less, as the model redraws
its training photos whatever the prompt says. Each ``checkpoint-N`` of a run holds a UNet or a
flow-matching transformer (and the text encoders, when they were trained) that ``from_pretrained`` loads
(``helpers.training.loop``), or a LoRA run's adapters that ``load_lora_weights`` loads, so
every step can be scored as the final model is: subject fidelity, PRES and DIV
(``helpers.evaluation.evaluate``), and the fidelity of a new-context prompt.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
from collections.abc import Iterator
from pathlib import Path

from helpers.diffusion import lora
from helpers.diffusion.generate import generate_images
from helpers.evaluation import metrics
from helpers.evaluation.evaluate import Scorers
from helpers.training.loop import checkpoints


def checkpoint_steps(output_dir: str | Path) -> list[int]:
    """The steps of a run's complete checkpoints, oldest first."""
    return [int(p.name.removeprefix("checkpoint-")) for p in checkpoints(Path(output_dir))]


def with_checkpoint(base, output_dir: str | Path, step: int):
    """``base`` with the UNet or transformer (and text encoders, if that run trained them) of a full
    fine-tune's ``checkpoint-step``, at ``base``'s device and dtype; ``base`` itself is left as it was
    (step 0 is ``base``)."""
    if step == 0:
        return base
    folder = Path(output_dir) / f"checkpoint-{step}"
    pipe = copy.copy(base)  # a shallow copy: the same VAE, tokenizer and scheduler
    denoiser = "unet" if getattr(base, "unet", None) is not None else "transformer"
    kw = dict(device=getattr(base, denoiser).device, dtype=getattr(base, denoiser).dtype)
    names = [denoiser] + [n for n in ("text_encoder", "text_encoder_2") if (folder / n).is_dir()]
    pipe.register_modules(
        **{name: type(getattr(base, name)).from_pretrained(folder, subfolder=name).to(**kw) for name in names}
    )
    return pipe


@contextlib.contextmanager
def checkpoint_pipeline(base, output_dir: str | Path, step: int) -> Iterator:
    """``base`` as ``checkpoint-step`` of a run left it, for the time of the ``with`` block: a full
    fine-tune's models in a shallow copy of ``base`` (``with_checkpoint``), or a LoRA run's adapters
    loaded into ``base`` itself and unloaded after, so that no second copy of a large model is needed."""
    folder = Path(output_dir) / f"checkpoint-{step}"
    if step == 0 or not lora.is_lora_folder(folder):
        yield with_checkpoint(base, output_dir, step)
        return
    with lora.loaded(base, folder) as pipe:
        yield pipe


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
        with checkpoint_pipeline(base, output_dir, step) as pipe:  # one checkpoint's models at a time
            rows.append({"step": step} | score_checkpoint(pipe, scorers, photos, prompts, **kw))
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
