"""Loss weighting for the denoising objective."""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr


def snr_weights(scheduler: DDPMScheduler, timesteps: torch.Tensor, gamma: float | None) -> torch.Tensor:
    """Min-SNR-gamma weights (Hang et al. 2023) for each sample's own timestep.

    For epsilon prediction the weight is min(SNR, gamma) / SNR; for v prediction
    min(SNR, gamma) / (SNR + 1). Without gamma every weight is 1. The weights are per sample, so
    a batch that mixes instance and class images weights each half by its own timesteps.
    """
    if gamma is None:
        return torch.ones(len(timesteps), device=timesteps.device)
    s = compute_snr(scheduler, timesteps)  # diffusers' own; notebook 01 writes the formula out (noise.snr)
    clipped = torch.clamp(s, max=gamma)
    if scheduler.config.prediction_type == "v_prediction":
        return clipped / (s + 1)
    return clipped / s


def dreambooth_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    timesteps: torch.Tensor,
    scheduler: DDPMScheduler,
    num_instance: int,
    prior_loss_weight: float = 1.0,
    snr_gamma: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DreamBooth's objective on a batch whose first ``num_instance`` rows are instance images and
    whose other rows are class images: instance loss + ``prior_loss_weight`` x prior loss.

    Each row is weighted by the min-SNR weight of its *own* timestep, then each half is averaged
    on its own. (diffusers' train_dreambooth.py computes the weights from the whole batch's
    timesteps but multiplies only the instance half by them: a shape error for batches above one,
    silently wrong weights at batch size one, and an unweighted prior half.)
    Returns (total, instance part, prior part); the prior part is 0 without class rows.
    """
    per_row = (pred.float() - target.float()).pow(2).mean(dim=tuple(range(1, pred.ndim)))
    per_row = per_row * snr_weights(scheduler, timesteps, snr_gamma).to(per_row.device)
    instance = per_row[:num_instance].mean()
    prior = per_row[num_instance:].mean() if len(per_row) > num_instance else torch.zeros((), device=per_row.device)
    return instance + prior_loss_weight * prior, instance.detach(), prior.detach()
