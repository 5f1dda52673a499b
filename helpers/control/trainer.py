"""The ControlNet trainer: diffusers' ``examples/controlnet/train_controlnet.py`` on the course's loop.

Only the ControlNet learns. The UNet, VAE and text encoder are frozen (in half precision on a
GPU), and the loss is the ordinary denoising loss of the *frozen* UNet, which now receives the
ControlNet's residuals: the ControlNet has to learn whatever makes the UNet's noise prediction
right given the condition image. Flags follow ``train_controlnet.py`` where they overlap; the loop
(accelerate, 8-bit AdamW, atomic checkpoints, resume, progress) is ``helpers.training.loop``'s,
shared with the DreamBooth trainer.

On top of the reference:
- ``unlock_unet_decoder``, the ControlNet authors' ``sd_locked=False``: the UNet's decoder (up
  blocks and output layers) trains too, for conditions whose images the base model has never
  drawn (the toy model only ever saw one object per image). The whole UNet is then saved under ``unet/``
  beside the ControlNet, and `controlnet.load_controlnet_pipeline` puts it in place;
- images and prompts of datasets up to ``CACHE_ROWS`` rows are encoded once, not every step;
- ``validation_layouts`` (toy model): at every ``validation_steps`` the ControlNet draws that
  many held-out two-object layouts and the locator scores them, which gives the "sudden
  convergence" curve in ``validation.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from helpers.control.controlnet import (
    CONDITIONING_SCALE,
    GUIDANCE_SCALE,
    build_controlnet,
    check_fits,
    controlnet_pipeline,
    layout_scores,
    load_controlnet,
)
from helpers.control.dataset import DESCRIPTION, Entry, read_index
from helpers.control.step import ControlNetData, ControlNetModels, controlnet_step
from helpers.core.atomic import write_text_atomic
from helpers.core.cli import settings_command, train_main
from helpers.core.errors import UsageError
from helpers.core.folders import check_output, claim_output, staged
from helpers.core.numbers import at_least, fraction
from helpers.core.runtime import release_device_memory
from helpers.diffusion.latents import encode as encode_latents
from helpers.diffusion.latents import preprocess, vae_scale_factor
from helpers.diffusion.loading import check_float32, load_parts
from helpers.diffusion.profiles import require_sd, resolve_model
from helpers.diffusion.prompts import token_ids
from helpers.training.loop import (
    Hooks,
    finish,
    fit,
    load_history,
    make_accelerator,
    pretrained_checkpoints,
    resolve_resume,
    step_generator,
    weight_dtype,
    write_result,
)
from helpers.training.settings import TrainerResult, TrainerSettings, flag

DECODER = ("up_blocks", "conv_norm_out", "conv_out")  # what unlock_unet_decoder trains
CACHE_ROWS = 20_000  # above this (fill50k at 512 px) rows are encoded per batch instead of kept in memory
VALIDATION = "validation.json"
# Notebook 09's command for SD 1.5: diffusers' recipe for a 16 GB GPU (batch 1 with 4 accumulation steps, gradient
# checkpointing, 8-bit AdamW), the frozen parts in fp16, on the toy layouts at 512 px. CI runs it on a tiny model.
SD15_FLAGS = (
    "--pretrained_model_name_or_path stable-diffusion-v1-5/stable-diffusion-v1-5 "
    "--train_data_dir outputs/09/data --output_dir outputs/09/controlnet-sd15 --resolution 512 "
    "--max_train_steps 6000 --train_batch_size 1 --gradient_accumulation_steps 4 --learning_rate 1e-5 "
    "--mixed_precision fp16 --use_8bit_adam --gradient_checkpointing --proportion_empty_prompts 0.1 "
    "--checkpointing_steps 500 --checkpoints_total_limit 2"
).split()


@dataclass(kw_only=True)
class ControlNetConfig(TrainerSettings):
    """The ControlNet trainer's settings; names follow diffusers' train_controlnet.py flags."""

    train_data_dir: str = field(
        metadata={"help": "folder with train.jsonl and its images (python -m helpers.control_data writes one)"}
    )
    controlnet_model_name_or_path: str | None = flag(
        None, "a ControlNet to go on training (default: a new one copied from the UNet)"
    )
    image_column: str = "image"
    conditioning_image_column: str = "conditioning_image"
    caption_column: str = "text"
    max_train_samples: int | None = None
    train_batch_size: int = 16
    learning_rate: float = 5e-4
    max_train_steps: int = 2000
    proportion_empty_prompts: float = flag(
        0.0, 'fraction of captions replaced by "" so that classifier-free guidance works'
    )
    unlock_unet_decoder: bool = flag(
        False,
        "also train the UNet's decoder (the ControlNet authors' "
        "sd_locked=False), for images the base model has never drawn; "
        "saved in unet/",
    )
    validation_steps: int = flag(100, "score the ControlNet every this many steps (with --validation_layouts)")
    validation_layouts: int = flag(
        0,
        "toy model: held-out two-object layouts drawn and scored by the locator "
        "at each validation (the convergence curve in validation.json)",
    )

    def check(self) -> None:
        """Bad settings end with one line that says what to change."""
        super().check()
        fraction("--proportion_empty_prompts", self.proportion_empty_prompts, "pass e.g. 0.1, or 0 for none")
        at_least("--validation_steps", self.validation_steps, 1, "to score none, leave out --validation_layouts")
        at_least("--validation_layouts", self.validation_layouts, 0, "pass 0 to score nothing, or e.g. 16")
        at_least("--max_train_samples", self.max_train_samples, 1, "pass 1 or more, or leave it out to use every row")
        if self.validation_layouts and self.pretrained_model_name_or_path != "toy":
            raise UsageError(
                "--validation_layouts scores toy-world layouts with the toy locator: it needs "
                "--pretrained_model_name_or_path toy"
            )


@dataclass(kw_only=True)
class ControlNetResult(TrainerResult):
    validation: list[dict] = field(default_factory=list)


TOOL = "helpers.controlnet"  # what marks the output folders this trainer makes (helpers.core.folders)


class ControlNetTrainer:
    """Build everything from a ControlNetConfig, then ``train()``."""

    def __init__(self, config: ControlNetConfig) -> None:
        config.check()
        self.config = config
        self.inputs = {"--train_data_dir": config.train_data_dir}
        self.output_dir = check_output(config.output_dir, TOOL, inputs=self.inputs)  # before any loading
        resolve_resume(self.output_dir, config.resume_from_checkpoint, config.max_train_steps)  # before any loading
        self.model_path = resolve_model(config.pretrained_model_name_or_path)
        require_sd(self.model_path)
        self.accelerator = make_accelerator(
            self.output_dir, config.gradient_accumulation_steps, config.mixed_precision, config.report_to
        )
        self.entries = read_index(
            config.train_data_dir, config.image_column, config.conditioning_image_column, config.caption_column
        )[: config.max_train_samples]
        self.data: ControlNetData | None = None  # prepare() encodes it
        self._load_models()

    def _load_models(self) -> None:
        cfg, device = self.config, self.accelerator.device
        self.weight_dtype = weight_dtype(cfg.mixed_precision)
        self.tokenizer, self.noise_scheduler, self.text_encoder, self.vae, self.unet = load_parts(
            self.model_path, cfg.revision, cfg.variant
        )
        scale_factor = vae_scale_factor(self.vae.config)
        if cfg.controlnet_model_name_or_path:
            self.controlnet = load_controlnet(cfg.controlnet_model_name_or_path)
            check_fits(
                self.controlnet,
                self.unet,
                scale_factor,
                cfg.controlnet_model_name_or_path,
                cfg.pretrained_model_name_or_path,
            )
        else:
            with torch.random.fork_rng():  # the condition embedding's random init follows --seed, like everything else
                torch.manual_seed(cfg.seed)
                self.controlnet = build_controlnet(self.unet, scale_factor)
        cast = {} if self.weight_dtype == torch.float32 else {"dtype": self.weight_dtype}
        for part in (self.vae, self.text_encoder, self.unet):
            part.requires_grad_(False)
            part.to(device, **({} if part is self.unet and cfg.unlock_unet_decoder else cast))  # trained: fp32
        if cfg.unlock_unet_decoder:
            for name in DECODER:
                getattr(self.unet, name).requires_grad_(True)
        check_float32(controlnet=self.controlnet, unet=self.unet)
        if cfg.gradient_checkpointing:
            self.controlnet.enable_gradient_checkpointing()
            self.unet.enable_gradient_checkpointing()
        self.resolution = cfg.resolution or self.unet.config.sample_size * scale_factor

    # ----------------------------------------------------------------- data
    @torch.no_grad()
    def _encode(self, entries: list[Entry]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Latents of the images, embeddings of the captions, and the condition images in [0, 1]."""
        rows = [e.load() for e in entries]
        latents = encode_latents(self.vae, [r.image for r in rows], self.resolution).float().cpu()
        embeddings = self._embed([r.text for r in rows])
        conditions = torch.stack([self._condition(r.conditioning_image) for r in rows])
        return latents, embeddings, conditions

    @torch.no_grad()
    def _embed(self, texts: list[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), 256):
            ids = token_ids(self.tokenizer, texts[i : i + 256])
            out.append(self.text_encoder(ids.to(self.accelerator.device))[0].float().cpu())
        return torch.cat(out)

    def _condition(self, image) -> torch.Tensor:
        """As StableDiffusionControlNetPipeline feeds it: resized to the resolution, RGB in [0, 1]."""
        return (preprocess(image, self.resolution) + 1) / 2

    def prepare(self) -> ControlNetData:
        """What ``train()`` reads at each step: every row encoded once (up to ``CACHE_ROWS``), the empty
        caption's encoding. Notebook 09 calls it to run the trainer's first step by hand."""
        if self.data is None:
            self.data = ControlNetData(self.entries, self._embed([""]), encode=self._encode)
            if len(self.entries) <= CACHE_ROWS:
                parts = [self._encode(self.entries[i : i + 256]) for i in range(0, len(self.entries), 256)]
                self.data.latents, self.data.embeddings, self.data.conditions = (torch.cat(p) for p in zip(*parts))
        return self.data

    @property
    def models(self) -> ControlNetModels:
        """The models a step runs (after ``accelerate.prepare``, the prepared ones)."""
        return ControlNetModels(self.controlnet, self.unet, self.weight_dtype)

    # ----------------------------------------------------------------- training
    def train(self) -> ControlNetResult:
        cfg, acc = self.config, self.accelerator
        if acc.is_main_process:  # made and marked only now: a setting refused while loading leaves no folder
            claim_output(self.output_dir, TOOL, inputs=self.inputs)
        self.prepare()
        params = [p for m in (self.controlnet, self.unet) for p in m.parameters() if p.requires_grad]
        trained = [self.controlnet, self.unet] if cfg.unlock_unet_decoder else [self.controlnet]

        def validate_from(start_step: int) -> None:
            self.validation = load_history(self.output_dir, start_step, VALIDATION)
            if start_step == 0:
                self._validate(0)

        def on_prepared(models: list[torch.nn.Module]) -> None:
            self.controlnet, self.unet = models if cfg.unlock_unet_decoder else (models[0], self.unet)
            names = ("controlnet", "unet")[: len(models)]  # checkpoint-N/controlnet loads with from_pretrained
            pretrained_checkpoints(acc, {n: acc.unwrap_model(m) for n, m in zip(names, models)})

        report = fit(
            acc,
            cfg,
            self.output_dir,
            trained,
            [{"params": params, "lr": cfg.learning_rate}],
            self._step_loss,
            Hooks("controlnet", on_prepared, before_loop=validate_from, after_step=self._after_step),
        )
        result = ControlNetResult(**report, validation=self.validation)
        if acc.is_main_process:
            with staged(self.output_dir) as stage:  # a full disk leaves the earlier output whole
                acc.unwrap_model(self.controlnet).save_pretrained(stage, safe_serialization=True)
                if cfg.unlock_unet_decoder:
                    acc.unwrap_model(self.unet).save_pretrained(stage / "unet", safe_serialization=True)
            write_result(self.output_dir, result, cfg)
            write_text_atomic(self.output_dir / "README.md", model_card(cfg, result, str(acc.device)))
        finish(acc)
        return result

    def _step_loss(self, step: int, micro: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``step.controlnet_step`` on the prepared models, with the generator of (seed, step, micro, rank)."""
        cfg, acc = self.config, self.accelerator
        gen = step_generator(cfg.seed, step, micro, acc.process_index)
        return controlnet_step(
            self.models,
            self.data,
            self.noise_scheduler,
            cfg.train_batch_size,
            cfg.proportion_empty_prompts,
            gen,
            acc.autocast(),
        )

    # ----------------------------------------------------------------- validation
    def _after_step(self, done: int) -> None:
        if self.config.validation_steps and done % self.config.validation_steps == 0:
            self._validate(done)

    def _validate(self, step: int) -> None:
        """Score the ControlNet as it stands on held-out layouts (the convergence curve), if asked."""
        cfg, acc = self.config, self.accelerator
        if not cfg.validation_layouts or not acc.is_main_process:
            return
        from helpers.diffusion.profiles import load_pipeline

        models = [acc.unwrap_model(m) for m in (self.controlnet, self.unet)]
        for model in models:
            model.eval()
        pipe = load_pipeline(cfg.pretrained_model_name_or_path)
        if cfg.unlock_unet_decoder:
            pipe.unet = models[1]
        pipe = controlnet_pipeline(pipe, models[0])
        self.validation.append({"step": step} | layout_scores(pipe, cfg.validation_layouts, seed=cfg.seed))
        models[0].train()
        models[1].train(cfg.unlock_unet_decoder)
        write_text_atomic(self.output_dir / VALIDATION, json.dumps(self.validation))


def command_line(config: ControlNetConfig) -> str:
    """The ``python -m helpers.controlnet`` call with these settings (defaults left out)."""
    return settings_command("helpers.controlnet", config)


def model_card(config: ControlNetConfig, result: ControlNetResult, device: str) -> str:
    """A README for the output folder: what it is, the commands that made it, and how well it follows layouts."""
    described = Path(config.train_data_dir) / DESCRIPTION
    data = json.loads(described.read_text())["command"] if described.exists() else None
    lines = (
        [
            "---",
            "library_name: diffusers",
            f"base_model: {config.pretrained_model_name_or_path}",
            "tags: [controlnet, education]",
            "---",
            "# ControlNet",
            "",
            f"A `ControlNetModel` trained from `{config.pretrained_model_name_or_path}` by the course's trainer"
            + (" with the UNet's decoder unlocked (saved in `unet/`)" if config.unlock_unet_decoder else "")
            + ".",
            "",
            "Produced by these commands:",
            "",
            "```",
        ]
        + ([data] if data else [])
        + [
            command_line(config),
            "```",
            "",
            f"{result.steps} steps of batch {config.train_batch_size}, seed {config.seed}, in {result.seconds:.0f} s "
            f"on {device} ({result.steps_per_second:.2f} steps/s, validations included).",
        ]
    )
    if result.validation:
        lines += [
            "",
            f"Held-out layouts drawn and read by the toy locator ({config.validation_layouts} per row; drawn as "
            f"`helpers.control.controlnet.draw` draws them: guidance {GUIDANCE_SCALE}, conditioning scale "
            f"{CONDITIONING_SCALE}):",
            "",
            "| step | object accuracy | relation accuracy |",
            "|---|---|---|",
        ]
        lines += [
            f"| {v['step']} | {v['object_accuracy']:.3f} | {v['relation_accuracy']:.3f} |" for v in result.validation
        ]
    base = "" if config.pretrained_model_name_or_path == "toy" else f", model={config.pretrained_model_name_or_path!r}"
    lines += [
        "",
        f"Load it with `helpers.control.controlnet.load_controlnet_pipeline(folder{base})`, or "
        "`ControlNetModel.from_pretrained(folder)`.",
    ]
    return "\n".join(lines) + "\n"


def train_controlnet(config: ControlNetConfig) -> ControlNetResult:
    """Train, then let the models go: nothing of the run stays on the GPU for the next one."""
    result = ControlNetTrainer(config).train()
    release_device_memory()
    return result


def main(argv: list[str] | None = None) -> None:
    """``python -m helpers.controlnet``."""
    train_main(
        ControlNetConfig,
        train_controlnet,
        "python -m helpers.controlnet",
        "Train a ControlNet (flags of diffusers' train_controlnet.py).",
        argv,
    )
