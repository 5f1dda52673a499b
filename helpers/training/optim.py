"""Optimizers for fine-tuning, and what their state costs.

AdamW keeps two moment tensors per parameter. In 32-bit that is 8 bytes per parameter: 6.9 GB
for SD 1.5's 860 M-parameter UNet, on top of weights and gradients, which is why a full fine-tune
does not fit a 15 GB T4. bitsandbytes' AdamW8bit stores both moments block-wise quantised to 8
bits (2 bytes per parameter plus small per-block scales); from bitsandbytes 0.50 on it also runs
on the CPU, so the toy course uses the very same optimizer.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch

from helpers.core.errors import UsageError


def make_optimizer(
    param_groups: Iterable,
    lr: float,
    use_8bit_adam: bool = False,
    allow_fallback: bool = False,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 1e-2,
    eps: float = 1e-8,
    device: torch.device | str = "cpu",
) -> torch.optim.Optimizer:
    """AdamW, 8-bit (bitsandbytes) if asked; a bitsandbytes that cannot load is an error unless
    ``allow_fallback`` says to train with 32-bit torch AdamW instead. ``device``: where training runs
    (the parameters may still be elsewhere until ``accelerate.prepare`` moves them)."""
    kwargs = dict(lr=lr, betas=betas, weight_decay=weight_decay, eps=eps)
    if not use_8bit_adam:
        return torch_adamw(param_groups, device, **kwargs)
    try:
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(param_groups, **kwargs)
    except Exception as err:  # ImportError, or a native library that fails to load
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        if not allow_fallback:
            raise UsageError(
                f"--use_8bit_adam needs bitsandbytes>=0.50, which could not load ({reason}); "
                "fix: pip install 'bitsandbytes>=0.50', or add --allow_adamw_fallback to train "
                "with 32-bit torch AdamW instead"
            ) from None
        warnings.warn(
            f"bitsandbytes could not load ({reason}); training with 32-bit torch AdamW as asked", stacklevel=2
        )
        return torch_adamw(param_groups, device, **kwargs)


def torch_adamw(param_groups: Iterable, device: torch.device | str = "cpu", **kwargs) -> torch.optim.AdamW:
    """torch's AdamW, fused (one pass over each tensor) when training on a CPU: there it steps the toy UNet
    about six times faster than the default multi-tensor update, a fifth of a toy training step
    (``benchmarks/optimizer_step.py``). On a GPU the default stays, the update whose memory
    ``helpers.training.memory`` counts and ``benchmarks/sd15_memory.py`` measured."""
    return torch.optim.AdamW(param_groups, fused=torch.device(device).type == "cpu" or None, **kwargs)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held by the optimizer's state tensors (moments, quantisation scales, step counters)."""
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if torch.is_tensor(value):
                total += value.numel() * value.element_size()
    return total
