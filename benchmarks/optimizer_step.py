"""What an optimizer step costs on this machine, beside the forward and backward pass it follows.

    python benchmarks/optimizer_step.py [--batch 4] [--repeats 30]

On the toy UNet (3.9 M parameters, fp32, the course's toy training batch of 2 photos + 2 class
images): one forward and backward pass, then one step of torch's AdamW as its default multi-tensor
update (foreach), as the fused update ``helpers.training.optim`` picks on a CPU, and of bitsandbytes'
AdamW8bit, in milliseconds, all in one run so that the figures compare.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from helpers.core.runtime import configure_cpu
from helpers.diffusion.profiles import load_pipeline
from helpers.training.optim import make_optimizer


def _milliseconds(fn: Callable[[], None], repeats: int) -> float:
    for _ in range(3):  # warm-up: first calls allocate state
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    configure_cpu()
    pipe = load_pipeline("toy")
    unet = pipe.unet.float().train()
    size = unet.config.sample_size
    ids = torch.zeros(1, pipe.tokenizer.model_max_length, dtype=torch.long)
    cond = pipe.text_encoder(ids)[0].detach().expand(args.batch, -1, -1)
    x = torch.randn(args.batch, unet.config.in_channels, size, size)
    t = torch.randint(0, 1000, (args.batch,))

    def forward_backward() -> None:
        unet(x, t, cond).sample.pow(2).mean().backward()

    params = list(unet.parameters())
    print(f"toy UNet: {sum(p.numel() for p in params) / 1e6:.1f} M parameters, {torch.get_num_threads()} threads")
    label = f"forward + backward, batch {args.batch}"
    print(f"{label:34s}{_milliseconds(forward_backward, args.repeats):8.1f} ms")
    optimizers = {
        "AdamW, foreach (torch's default)": torch.optim.AdamW(params, lr=1e-4, foreach=True),
        "AdamW, fused (the course on a CPU)": make_optimizer(params, 1e-4, device="cpu"),
        "AdamW8bit (bitsandbytes)": make_optimizer(params, 1e-4, use_8bit_adam=True),
    }
    for name, opt in optimizers.items():
        print(f"{name:34s}{_milliseconds(opt.step, args.repeats):8.1f} ms")


if __name__ == "__main__":
    main()
