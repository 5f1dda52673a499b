"""Loss weighting for the denoising objective."""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler


def snr(scheduler: DDPMScheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) at each timestep."""
    alpha_bar = scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    return alpha_bar / (1 - alpha_bar)


def snr_weights(scheduler: DDPMScheduler, timesteps: torch.Tensor, gamma: float | None) -> torch.Tensor:
    """Min-SNR-gamma weights (Hang et al. 2023) for each sample's own timestep.

    For epsilon prediction the weight is min(SNR, gamma) / SNR; for v prediction
    min(SNR, gamma) / (SNR + 1). Without gamma every weight is 1. The weights are per sample, so
    a batch that mixes instance and class images weights each half by its own timesteps.
    """
    if gamma is None:
        return torch.ones(len(timesteps))
    s = snr(scheduler, timesteps)
    clipped = torch.clamp(s, max=gamma)
    if scheduler.config.prediction_type == "v_prediction":
        return clipped / (s + 1)
    return clipped / s
