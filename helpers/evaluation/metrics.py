"""The numbers the course reports: prompt fidelity, subject fidelity, PRES and DIV.

They follow the DreamBooth paper's definitions, with pluggable encoders: the toy judge's embedding
and labels on the toy profile, DINO ViT-S/16 and CLIP on real photos.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from helpers.toy.judge import Verdict


def prompt_fidelity(verdict: Verdict, wanted: dict[str, str | None]) -> dict[str, float]:
    """Share of images whose judged class / colour / background is the one the prompt names.

    ``prompt_fidelity`` averages, per image, the agreement over the attributes the prompt names,
    then over images, so it lies in [0, 1] like a CLIP-T score rescaled.
    """
    named = [k for k in ("class", "colour", "background") if wanted.get(k)]
    if not named:
        raise ValueError("the prompt names no toy class or colour, so there is nothing to agree with")
    n = len(verdict.embeddings)
    hits = {k: [verdict.labels[k][i] == wanted[k] for i in range(n)] for k in named}
    out = {f"{k}_accuracy": sum(v) / n for k, v in hits.items()}
    out["prompt_fidelity"] = sum(sum(hits[k][i] for k in named) / len(named) for i in range(n)) / n
    return out


def half_spread(values) -> float:
    """Half the range of a few seeds' values: the "±" the notebooks print beside a mean, and the bar
    that a difference between two settings must clear before two seeds can tell them apart."""
    values = list(values)
    return (max(values) - min(values)) / 2


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean cosine similarity over all pairs (a_i, b_j)."""
    return (F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T).mean().item()


def subject_fidelity(samples: torch.Tensor, subject: torch.Tensor) -> float:
    """DreamBooth's DINO score: mean pairwise cosine similarity of samples to the subject's photos."""
    return mean_cosine(samples, subject)


def diversity(embeddings: torch.Tensor) -> float:
    """DreamBooth's DIV: mean pairwise cosine distance among distinct samples (higher = more varied)."""
    n = len(embeddings)
    if n < 2:
        raise ValueError("diversity needs at least two samples")
    e = F.normalize(embeddings, dim=-1)
    sims = e @ e.T
    off_diagonal = sims.sum() - sims.diagonal().sum()
    return (1 - off_diagonal / (n * (n - 1))).item()


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """The Frechet distance between Gaussians fitted to two sets of embeddings (FID's formula,
    ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))), in float64.

    On the toy profile the embeddings are the judge's, so it says how far generated samples lie from
    fresh renders of the toy world. Its value depends on the set sizes (a small set overstates it),
    so compare it only with a distance between sets of the same sizes."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError("frechet_distance needs at least two embeddings in each set")
    a, b = a.double(), b.double()
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    vals, vecs = torch.linalg.eigh(cov_a)
    root_a = vecs @ torch.diag(vals.clamp(min=0).sqrt()) @ vecs.T
    # tr((S_a S_b)^(1/2)) = tr((S_a^(1/2) S_b S_a^(1/2))^(1/2)), whose argument is symmetric
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()
    return ((a.mean(0) - b.mean(0)).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * cross).item()
