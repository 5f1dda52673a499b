"""The forward (noising) process of DDPM, written out so that it can be checked against diffusers.

With betas b_1..b_N, alpha_n = 1 - b_n and alpha_bar_n = prod_{k<=n} alpha_k:

    q(x_n | x_{n-1}) = N(sqrt(alpha_n) x_{n-1}, b_n I)             one step
    q(x_n | x_0)     = N(sqrt(alpha_bar_n) x_0, (1 - alpha_bar_n) I)   closed form, any n at once

Training uses the closed form; the pair (x_{n-1}, x_n) is what the reverse process must undo one
step at a time. Index n here is diffusers' timestep t (0-based): alpha_bar[t] is
``scheduler.alphas_cumprod[t]``.
"""

from __future__ import annotations

import torch


def _at(values: torch.Tensor, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
    """values[t] shaped to broadcast over a batch like ``like``."""
    v = values.to(like.device, like.dtype)[torch.as_tensor(t, device=like.device)]
    return v.reshape(-1, *([1] * (like.ndim - 1))) if v.ndim else v


def add_noise(
    x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | int, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise (the same as ``scheduler.add_noise``)."""
    ab = _at(alphas_cumprod, t, x0)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def offset_noise(shape: tuple[int, ...], offset: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gaussian noise plus a constant per image and channel with standard deviation ``offset``, as
    diffusers' training scripts add with ``--noise_offset``.

    SD's schedule stops short of pure noise: x_T still holds sqrt(alpha_bar_T), about 6.8%, of x_0,
    so a model can learn to read the picture's overall brightness off the noise's per-channel mean,
    a hint that the noise sampling starts from never carries. The offset drowns that hint.
    """
    noise = torch.randn(shape, generator=generator)
    if offset:
        noise = noise + offset * torch.randn((*shape[:2], *([1] * (len(shape) - 2))), generator=generator)
    return noise


def noisy_pair(
    x0: torch.Tensor, t: int, alphas_cumprod: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A consistent (x_{t-1}, x_t) drawn from the forward chain: x_{t-1} from the closed form,
    then one more step ``x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) eps``."""
    if t < 1:
        raise ValueError("t must be at least 1 so that step t-1 exists")
    eps1 = torch.randn(x0.shape, generator=generator).to(x0)  # drawn on the CPU: same numbers on any device
    eps2 = torch.randn(x0.shape, generator=generator).to(x0)
    x_prev = add_noise(x0, eps1, t - 1, alphas_cumprod)
    alpha_t = alphas_cumprod[t] / alphas_cumprod[t - 1]
    return x_prev, alpha_t.sqrt() * x_prev + (1 - alpha_t).sqrt() * eps2


def snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) of every timestep."""
    return alphas_cumprod / (1 - alphas_cumprod)


def _step(t: int, alphas_cumprod: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(alpha_bar_t, alpha_bar_{t-1}, alpha_t) for one step; alpha_bar before the first step is 1."""
    ab_t = alphas_cumprod[t]
    ab_prev = alphas_cumprod[t - 1] if t > 0 else torch.ones_like(ab_t)
    return ab_t, ab_prev, ab_t / ab_prev


def posterior_mean(x0: torch.Tensor, xt: torch.Tensor, t: int, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Mean of q(x_{t-1} | x_t, x_0): the best guess of the previous step when x_0 is known."""
    ab_t, ab_prev, alpha_t = _step(t, alphas_cumprod)
    beta_t = 1 - alpha_t
    return (ab_prev.sqrt() * beta_t / (1 - ab_t)) * x0 + (alpha_t.sqrt() * (1 - ab_prev) / (1 - ab_t)) * xt


def posterior_mean_from_eps(xt: torch.Tensor, eps: torch.Tensor, t: int, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The same mean written with the noise instead of x_0: 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - alpha_bar_t) eps).

    A model that predicts eps therefore predicts x_{t-1}'s mean, and the error in that mean is the
    eps error times ``eps_to_mean_weight(t)``: the two losses are the same objective up to a weight.
    """
    ab_t, _, alpha_t = _step(t, alphas_cumprod)
    return (xt - (1 - alpha_t) / (1 - ab_t).sqrt() * eps) / alpha_t.sqrt()


def eps_to_mean_weight(t: int, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """w_t with ||mu(x_t, eps) - mu(x_t, eps_hat)||^2 = w_t ||eps - eps_hat||^2:
    beta_t^2 / (alpha_t (1 - alpha_bar_t))."""
    ab_t, _, alpha_t = _step(t, alphas_cumprod)
    return (1 - alpha_t) ** 2 / (alpha_t * (1 - ab_t))


def predicted_noise(
    model_output: torch.Tensor,
    xt: torch.Tensor,
    t: torch.Tensor | int,
    alphas_cumprod: torch.Tensor,
    prediction_type: str,
) -> torch.Tensor:
    """The noise a model's output stands for: the output itself for epsilon prediction; for
    v-prediction (v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0), sqrt(alpha_bar) v + sqrt(1 - alpha_bar) x_t,
    as diffusers' DDIM step computes it. Lets the same noise-error lessons run on either kind of model."""
    if prediction_type == "epsilon":
        return model_output
    if prediction_type != "v_prediction":
        raise ValueError(f"unknown prediction_type {prediction_type!r}; expected 'epsilon' or 'v_prediction'")
    ab = _at(alphas_cumprod, t, xt)
    return ab.sqrt() * model_output + (1 - ab).sqrt() * xt


def last_step_trace(
    x0: torch.Tensor, alphas_cumprod: torch.Tensor, draws: int, generator: torch.Generator, cells: int = 4
) -> torch.Tensor:
    """Correlation between the ``cells`` x ``cells`` cell averages of the last step's x_T and of x_0,
    one value per noise draw: how much of an image's layout a schedule's last step still gives away.

    Sampling starts from pure noise, which gives away nothing; a schedule whose last step does
    (SD 1.x's) teaches a model to take a layout from the noise rather than from the prompt."""
    last = len(alphas_cumprod) - 1
    ref = torch.nn.functional.adaptive_avg_pool2d(x0.float(), cells).flatten()
    out = []
    for _ in range(draws):
        xt = add_noise(x0.float(), torch.randn(x0.shape, generator=generator).to(x0.device), last, alphas_cumprod)
        out.append(
            torch.corrcoef(torch.stack([torch.nn.functional.adaptive_avg_pool2d(xt, cells).flatten(), ref]))[0, 1]
        )
    return torch.stack(out)
