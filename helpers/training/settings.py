"""What every trainer of the course shares, declared once: its settings and the shape of its result.

``LoopSettings`` is what the shared loop reads; ``TrainerSettings`` adds what a diffusion trainer loads
and optimizes. The DreamBooth trainer (``helpers.dreambooth.trainer``) and the ControlNet trainer
(``helpers.control.trainer``) extend the second, the upscaler's fine-tune (``helpers.upscaler.training``)
the first. The names and defaults are those of diffusers' training scripts (``train_dreambooth.py``,
``train_controlnet.py``), so a learner's command line carries over; a field's ``help`` is its
``--flag``'s help (``helpers.core.cli.dataclass_parser``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import torch

from helpers.core.errors import UsageError
from helpers.core.numbers import at_least, positive, seed_in_range
from helpers.training.trackers import check_report_to


def flag(default, help: str):
    """A setting with a default and the help its ``--flag`` shows."""
    return field(default=default, metadata={"help": help})


@dataclass(kw_only=True)
class LoopSettings:
    """What the shared loop reads (``helpers.training.loop``): how long, in what steps, which checkpoints
    and logs. Every trainer's settings extend it, the upscaler's fine-tune included."""

    output_dir: str = field(metadata={"help": "where checkpoints, the loss history and the trained model go"})
    train_batch_size: int = 1
    learning_rate: float = 5e-6
    max_train_steps: int = 400
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = None
    resume_from_checkpoint: str | None = flag(None, "a checkpoint-N folder or 'latest'")
    logging_steps: int = 10
    seed: int = 0
    progress: bool = True

    def check(self) -> None:
        """argparse's float takes inf and nan, and nothing else stops a negative count: an infinite learning
        rate trains a model of NaNs, a negative one fails deep in torch. Each is one line here instead."""
        for name in ("max_train_steps", "train_batch_size", "gradient_accumulation_steps"):
            at_least(f"--{name}", getattr(self, name), 1)
        default_lr = next(f.default for f in fields(self) if f.name == "learning_rate") or "5e-06 (SD 1.x)"
        positive("--learning_rate", self.learning_rate, f"pass a positive learning rate such as {default_lr}")
        at_least("--max_grad_norm", self.max_grad_norm, 0, "pass 0 for no gradient clipping, or e.g. 1.0")
        at_least(
            "--checkpointing_steps",
            self.checkpointing_steps,
            0,
            "pass 0 for no checkpoints, or N for one every N steps",
        )
        at_least(
            "--checkpoints_total_limit",
            self.checkpoints_total_limit,
            1,
            "pass 1 or more, or leave it out to keep every checkpoint",
        )
        at_least("--logging_steps", self.logging_steps, 1, "pass 1 to log every step, or N for every N steps")
        seed_in_range("--seed", self.seed)


@dataclass(kw_only=True)
class TrainerSettings(LoopSettings):
    """The flags both diffusion trainers take on top of the loop's: the model, the optimizer, the precision."""

    pretrained_model_name_or_path: str = flag("toy", "toy, a local pipeline folder, or a hub id")
    revision: str | None = flag(None, "the hub revision (branch, tag or commit) of the model")
    variant: str | None = flag(
        None, "load the weights of this variant, e.g. fp16 for *.fp16.safetensors (trained parts are float32 anyway)"
    )
    resolution: int | None = flag(None, "image size in pixels (default: the model's own)")
    scale_lr: bool = flag(
        False, "multiply the learning rate by batch size x accumulation steps x processes, as diffusers' scripts do"
    )
    lr_scheduler: str = flag("constant", "a diffusers.optimization scheduler: constant, cosine, linear, ...")
    lr_warmup_steps: int = 0
    use_8bit_adam: bool = flag(False, "bitsandbytes' 8-bit AdamW: a quarter of AdamW's optimizer memory")
    allow_adamw_fallback: bool = flag(False, "with --use_8bit_adam, train with torch AdamW if bitsandbytes cannot load")
    adam_weight_decay: float = 1e-2
    gradient_checkpointing: bool = flag(False, "recompute activations in the backward pass: less memory, more time")
    mixed_precision: str = flag("no", "no, fp16 (CUDA) or bf16")
    report_to: str = flag("none", "log losses, learning rate and samples to: tensorboard, wandb, ... (under logs/)")

    def check(self) -> None:
        """The checks every trainer's settings need; each failure is one line that says what to change."""
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise UsageError(f"--mixed_precision must be no, fp16 or bf16 (got {self.mixed_precision!r})")
        if self.mixed_precision == "fp16" and not torch.cuda.is_available():
            raise UsageError("--mixed_precision fp16 needs a CUDA GPU; on a CPU use no (or bf16)")
        if self.resolution is not None and (self.resolution < 8 or self.resolution % 8):
            near = max(8, round(self.resolution / 8) * 8)
            raise UsageError(
                f"--resolution {self.resolution} is not a multiple of 8, which Stable Diffusion's pipelines "
                f"need to draw class images and samples: use {near}"
            )
        check_report_to(self.report_to)
        super().check()
        at_least("--adam_weight_decay", self.adam_weight_decay, 0, "pass 0 for no weight decay, or e.g. 1e-2")
        at_least("--lr_warmup_steps", self.lr_warmup_steps, 0, "pass 0 for no warm-up")

    def learning_rate_scale(self, num_processes: int) -> int:
        """What ``--scale_lr`` multiplies the learning rates by: the samples of one optimizer step
        (diffusers' rule, so that a bigger batch takes proportionally bigger steps); 1 without it."""
        if not self.scale_lr:
            return 1
        return self.train_batch_size * self.gradient_accumulation_steps * num_processes


SECRETS = ("hub_token",)  # settings never written to a file or a tracker


def public_settings(settings) -> dict:
    """The settings as a dict, less any secret: what train_result.json and the trackers record."""
    return {k: v for k, v in asdict(settings).items() if k not in SECRETS}


@dataclass(kw_only=True)
class TrainerResult:
    """What a run reports; ``train_result.json`` holds it, less the loss history, with the settings."""

    output_dir: str
    steps: int
    seconds: float
    steps_per_second: float
    history: list[dict] = field(default_factory=list)
    optimizer_state_bytes: int = 0
    trainable_parameters: int = 0
    peak_memory_bytes: int | None = None
