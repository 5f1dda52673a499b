"""Flow matching as SD3 trains it: the timesteps drawn, the straight path, the target, the weighted loss.

One place for the objective that the toy flow model was pretrained with (``helpers.toy.flow_pretrain``)
and that DreamBooth fine-tunes it with (``helpers.dreambooth.flow_step``), both as diffusers'
``examples/dreambooth/train_dreambooth_lora_sd3.py`` computes it:

- draw u by ``compute_density_for_timestep_sampling`` (``--weighting_scheme``, logit-normal by default);
- take the scheduler's timestep and sigma at index ``u * 1000`` (its sigmas carry the shift);
- put the latent on the straight line ``x_t = (1 - sigma) x_0 + sigma eps``;
- regress the velocity ``eps - x_0``, or with ``--precondition_outputs`` turn the output into a guess of
  ``x_0`` (``x_t - sigma v``, as EDM preconditions it) and regress ``x_0``: the same minimum, the
  per-sample loss multiplied by sigma squared;
- weight each sample by ``compute_loss_weighting_for_sd3`` (1 for logit-normal and mode), then average.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

WEIGHTING_SCHEMES = ("logit_normal", "mode", "sigma_sqrt", "cosmap")  # the SD3 script's --weighting_scheme choices


@dataclass(frozen=True)
class FlowObjective:
    """How timesteps are drawn and the loss weighted: the SD3 script's flags of the same names
    (``precondition_outputs`` defaults to the toy's pretraining, 0; the script's default is 1)."""

    weighting_scheme: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    precondition_outputs: bool = False

    def draw_u(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """u in [0, 1) for each sample (0 is pure noise: the scheduler's timesteps run from the noisiest)."""
        return compute_density_for_timestep_sampling(
            self.weighting_scheme, batch_size, self.logit_mean, self.logit_std, self.mode_scale, generator=generator
        )


def schedule_at(noise_scheduler: FlowMatchEulerDiscreteScheduler, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The training scheduler's timesteps and sigmas at index ``u * num_train_timesteps``, as the SD3
    script takes them (its sigmas carry the shift); the scheduler must be fresh, not ``set_timesteps``'d."""
    n = noise_scheduler.config.num_train_timesteps
    indices = (u * n).long().clamp(max=n - 1)  # u = 1 exactly (the mode scheme can draw it) is the last step
    return noise_scheduler.timesteps[indices], noise_scheduler.sigmas[indices]


def on_path(x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """``x_t = (1 - sigma) x_0 + sigma eps``, one sigma per sample."""
    s = sigmas.to(x0.dtype)[:, None, None, None]
    return (1 - s) * x0 + s * noise


def prediction_and_target(
    output: torch.Tensor,
    noisy: torch.Tensor,
    x0: torch.Tensor,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    precondition_outputs: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """What the loss compares: the velocity and ``eps - x_0``, or with ``precondition_outputs`` the guess
    ``x_t - sigma v`` and ``x_0``."""
    if precondition_outputs:
        return noisy - sigmas.to(output.dtype)[:, None, None, None] * output, x0
    return output, noise - x0


def sample_losses(
    prediction: torch.Tensor,
    target: torch.Tensor,
    sigmas: torch.Tensor,
    weighting_scheme: str,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Each sample's weighted mean squared error, in float32; ``weights`` (per latent pixel) make it a
    weighted mean over the pixels."""
    weighting = compute_loss_weighting_for_sd3(weighting_scheme, sigmas).float()[:, None, None, None]
    squared = weighting * (prediction.float() - target.float()) ** 2
    if weights is None:
        return squared.mean(dim=(1, 2, 3))
    return (squared * weights).mean(dim=(1, 2, 3)) / weights.mean(dim=(1, 2, 3))
