"""The toy judge: a small CNN trained on the renderer's labels, standing in for CLIP and DINO.

On real photos the course measures prompt fidelity with CLIP and subject fidelity with DINO
features. Toy images need a judge that knows the toy world: this network predicts every label the
renderer knows but shape (class, colour, accent colour, pattern, size, position, background) and its
penultimate layer is an embedding in which two renders of the same instance lie close together.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from helpers.core.atomic import save_safetensors_atomic, write_text_atomic
from helpers.core.folders import building, check_output
from helpers.diffusion.latents import through_vae
from helpers.toy import world as toyworld

HEADS = {
    "class": len(toyworld.CLASSES),
    "colour": len(toyworld.COLOUR_NAMES),
    "accent": len(toyworld.COLOUR_NAMES),
    "pattern": len(toyworld.PATTERNS),
    "size": len(toyworld.SIZES),
    "position": len(toyworld.POSITIONS),
    "background": len(toyworld.BACKGROUNDS),
}
EMBED_DIM = 128
VAE_SHARE = 0.5  # of training images passed through the toy model's VAE (every generated image is)
ACCURACY_RENDERS = 1024  # fresh renders behind the accuracies on the judge's card
MADE_BY = "helpers.pretrain judge"  # its folder's mark: the other stages' mark would let them replace it


class Judge(nn.Module):
    """Four strided conv blocks, an embedding, and one linear head per label."""

    def __init__(self) -> None:
        super().__init__()
        chans = (3, 32, 64, 128, 128)
        layers: list[nn.Module] = []
        for cin, cout in zip(chans, chans[1:]):
            layers += [
                nn.Conv2d(cin, cout, 3, padding=1),
                nn.GroupNorm(8, cout),
                nn.SiLU(),
                nn.Conv2d(cout, cout, 3, stride=2, padding=1),
                nn.SiLU(),
            ]
        self.features = nn.Sequential(*layers)
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(128 * 4 * 4, 256), nn.SiLU(), nn.Linear(256, EMBED_DIM))
        self.heads = nn.ModuleDict({k: nn.Linear(EMBED_DIM, n) for k, n in HEADS.items()})

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``images`` in [-1, 1], shape (B, 3, 64, 64): returns (embedding, logits per head)."""
        emb = self.embed(self.features(images))
        return emb, {k: head(F.silu(emb)) for k, head in self.heads.items()}


@dataclass
class Verdict:
    """What the judge sees in a batch of images."""

    embeddings: torch.Tensor  # (B, EMBED_DIM), unit length
    labels: dict[str, list[str]]  # head -> predicted label name per image


LABEL_NAMES = {
    "class": toyworld.CLASSES,
    "colour": toyworld.COLOUR_NAMES,
    "accent": toyworld.COLOUR_NAMES,
    "pattern": toyworld.PATTERNS,
    "size": toyworld.SIZES,
    "position": toyworld.POSITIONS,
    "background": toyworld.BACKGROUNDS,
}


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    arr = np.stack([np.asarray(im.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR)) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1


@torch.no_grad()
def judge_images(judge: Judge, images: list[Image.Image], batch_size: int = 64) -> Verdict:
    """Embeddings and predicted labels for PIL images of any size (resized to 64 px)."""
    embs, preds = [], {k: [] for k in HEADS}
    for i in range(0, len(images), batch_size):
        emb, logits = judge(to_tensor(images[i : i + batch_size]))
        embs.append(F.normalize(emb, dim=-1))
        for k, lg in logits.items():
            preds[k] += [LABEL_NAMES[k][j] for j in lg.argmax(-1).tolist()]
    return Verdict(torch.cat(embs), preds)


def load_judge(path: str | Path) -> Judge:
    judge = Judge()
    judge.load_state_dict(load_file(str(Path(path) / "judge.safetensors")))
    return judge.eval()


# --------------------------------------------------------------------------- training


def blur_and_noise(img: Image.Image, rng: random.Random) -> Image.Image:
    """Blur and noise, so that the judge also reads the softer images a diffusion model draws."""
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    if rng.random() < 0.5:
        arr = np.asarray(img).astype(np.float32)
        arr += np.random.default_rng(rng.randrange(2**31)).normal(0, rng.uniform(2, 10), arr.shape)
        img = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    return img


def vae_share(vae, images: list[Image.Image], seeds: range) -> list[Image.Image]:
    """A fixed share (``VAE_SHARE``, chosen by seed) of ``images`` passed through ``vae``: a reader
    trained on crisp renders alone misreads the softer images that any latent diffusion model draws."""
    if vae is None:
        return images
    chosen = [k for k, seed in enumerate(seeds) if random.Random(-seed).random() < VAE_SHARE]
    images = list(images)
    for k, img in zip(chosen, through_vae(vae, [images[k] for k in chosen])):
        images[k] = img
    return images


def _renders(seeds: range) -> tuple[list[Image.Image], dict[str, torch.Tensor]]:
    names = toyworld.named_instances()
    images, labels = [], {k: [] for k in HEADS}
    for seed in seeds:
        sample = toyworld.random_sample(seed, names)
        images.append(toyworld.render(sample.scene, seed=seed))
        for k in HEADS:
            labels[k].append(sample.labels[k])
    return images, {k: torch.tensor(v) for k, v in labels.items()}


def labelled_batch(seeds: range, augment: bool = True, vae=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Fresh renders and their labels, as tensors; with ``augment``, a share through ``vae`` (if
    given), and blur and noise at random."""
    images, labels = _renders(seeds)
    if augment:
        images = [blur_and_noise(img, random.Random(seed)) for img, seed in zip(vae_share(vae, images, seeds), seeds)]
    return to_tensor(images), labels


def train_steps(model: nn.Module, loss_at: Callable[[int], torch.Tensor], steps: int, desc: str) -> None:
    """The loop the judge and its locator share: AdamW on a one-cycle schedule, one fresh batch a
    step (``loss_at(step)`` renders it and returns its loss), a progress bar; ends in eval mode."""
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    for step in (bar := tqdm(range(steps), desc=desc)):
        loss = loss_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()


def train_judge(
    output: str | Path,
    vae,
    steps: int = 1200,
    batch_size: int = 64,
    seed: int = 0,
    command: str = "python -m helpers.pretrain judge",
) -> dict:
    """Train the judge on fresh renders (seeds from 10**7 upwards), a share of them through the toy
    model's ``vae``, and save it with a card into ``output``: new, empty or an earlier judge's (checked
    before training, as the shipped judge's is replaced whole)."""
    out = check_output(output, MADE_BY, "--output", shipped_ok=True)
    torch.manual_seed(seed)
    judge = Judge()

    def loss_at(step: int) -> torch.Tensor:
        base = 10**7 + seed * 10**6 + step * batch_size
        x, y = labelled_batch(range(base, base + batch_size), vae=vae)
        _, logits = judge(x)
        return sum(F.cross_entropy(logits[k], y[k]) for k in HEADS)

    start = time.time()
    train_steps(judge, loss_at, steps, "judge")
    accuracy = {
        "rendered": judge_accuracy(judge, ACCURACY_RENDERS),
        "through the toy VAE": judge_accuracy(judge, ACCURACY_RENDERS, vae=vae),
    }
    report = {
        "command": command,
        "steps": steps,
        "batch_size": batch_size,
        "seed": seed,
        "seconds": round(time.time() - start, 1),
        "accuracy_on_fresh_renders": accuracy,
    }
    with building(out, MADE_BY, shipped_ok=True) as build:
        save_safetensors_atomic(judge.state_dict(), build / "judge.safetensors")
        write_text_atomic(build / "README.md", _card(report))
    return report


@torch.no_grad()
def judge_accuracy(judge: Judge, count: int = 1024, first_seed: int = 5 * 10**8, vae=None) -> dict[str, float]:
    """Accuracy per head on renders the judge never saw (seeds far from the training range); with
    ``vae``, on those renders encoded and decoded by it (the best the toy model could draw them)."""
    images, y = _renders(range(first_seed, first_seed + count))
    x = to_tensor(through_vae(vae, images) if vae is not None else images)
    correct = {k: 0 for k in HEADS}
    for i in range(0, count, 128):
        _, logits = judge(x[i : i + 128])
        for k in HEADS:
            correct[k] += (logits[k].argmax(-1) == y[k][i : i + 128]).sum().item()
    return {k: round(c / count, 4) for k, c in correct.items()}


def _card(report: dict) -> str:
    rendered, vae = report["accuracy_on_fresh_renders"].values()
    acc = "\n".join(f"| {k} | {v:.3f} | {vae[k]:.3f} |" for k, v in rendered.items())
    return f"""# Toy judge

A {sum(p.numel() for p in Judge().parameters()):,}-parameter CNN trained on the toy world's labels. It stands in
for CLIP (prompt fidelity: does the image show the class and colour the prompt names?) and DINO
(subject fidelity: cosine similarity of its 128-d embedding) on the toy profile.

Produced by `{report["command"]}` ({report["steps"]} steps of batch {report["batch_size"]}, seed
{report["seed"]}, fresh renders every step, half of them encoded and decoded by the toy model's VAE
as every generated image is; {report["seconds"]} s on a 2-core CPU).

Accuracy on 1024 fresh renders, as rendered and through the toy model's VAE (the best the toy
model could draw them):

| head | rendered | through the VAE |
|---|---|---|
{acc}
"""
