"""The DreamBooth trainer: one loop for the toy model on a CPU and for SD 1.5 on a GPU.

It follows diffusers' ``examples/dreambooth/train_dreambooth.py`` (same flags, same loss, same
output folder), with what a course needs on top:

- speed where the reference is slow: prompts are encoded once when the text encoder is frozen,
  and images go through the VAE once when no random augmentation is on;
- randomness that depends only on (seed, step, rank): batches, noise and timesteps are drawn from
  a generator seeded per step, so resuming from a checkpoint continues exactly the same run;
- atomic checkpoints and ``latest`` resume, from the loop it shares with the ControlNet trainer
  (``helpers.training.loop``);
- min-SNR weighting that also works with prior preservation (each half by its own timesteps);
- LoRA (``lora_rank``) as in diffusers' ``train_dreambooth_lora.py``: peft adapters on the
  attention projections, saved in diffusers' LoRA format (``helpers.diffusion.lora``).

Scale-out is accelerate's: the same code runs under ``accelerate launch`` or ``torchrun``.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from helpers.core.atomic import save_image_atomic, write_text_atomic
from helpers.core.figures import image_grid
from helpers.core.folders import check_output, claim_output, staged
from helpers.core.runtime import release_device_memory
from helpers.diffusion.hub import check_push, push_folder
from helpers.diffusion.latents import vae_scale_factor
from helpers.diffusion.loading import check_float32, load_parts
from helpers.diffusion.lora import (
    TEXT_ENCODER_TARGETS,
    UNET_TARGETS,
    adapters_only_checkpoints,
    add_lora,
    load_lora,
    save_lora,
)
from helpers.diffusion.lora_export import export_kohya
from helpers.diffusion.profiles import profile_for_model, require_sd, resolve_model
from helpers.diffusion.prompts import check_prompt
from helpers.dreambooth.card import CARD, model_card
from helpers.dreambooth.config import TrainConfig
from helpers.dreambooth.identifiers import identifier_warnings, identifier_words
from helpers.dreambooth.instances import load_instances
from helpers.dreambooth.priors import check_class_folder
from helpers.dreambooth.step import DreamBoothData, DreamBoothModels, dreambooth_step, prepare_data
from helpers.training import trackers
from helpers.training.loop import (
    Hooks,
    finish,
    fit,
    make_accelerator,
    pretrained_checkpoints,
    resolve_resume,
    step_generator,
    weight_dtype,
    write_result,
)
from helpers.training.settings import TrainerResult

TOOL = "helpers.dreambooth"  # what marks the output folders this trainer makes (helpers.core.folders)
VALIDATION = "validation"  # the folder of validation grids, one per step: validation/step-00100.png
VALIDATION_INFERENCE_STEPS = 25  # as diffusers' DreamBooth script samples its validation images


@dataclass(kw_only=True)
class TrainResult(TrainerResult):
    class_images: dict | None = None
    captioned_images: int = 0
    validation_seconds: float = 0.0
    validation_grids: list[str] = field(default_factory=list)
    hub_url: str | None = None


def validation_grid(output_dir: Path, step: int) -> Path:
    return Path(output_dir) / VALIDATION / f"step-{step:05d}.png"


# --------------------------------------------------------------------------- the loop


class Trainer:
    """Build everything from a TrainConfig, then ``train()``."""

    def __init__(self, config: TrainConfig, pipe_factory=None) -> None:
        config.check()
        if config.learning_rate is None:  # left out: the model's own (5e-6 for SD 1.x, 1e-4 for the toy)
            model = config.pretrained_model_name_or_path
            config = dataclasses.replace(config, learning_rate=profile_for_model(model).learning_rate)
        self.config = config
        self.inputs = {"--instance_data_dir": config.instance_data_dir, "--class_data_dir": config.class_data_dir}
        self.output_dir = check_output(config.output_dir, TOOL, inputs=self.inputs)  # before any loading
        if config.with_prior_preservation:
            check_class_folder(config.class_data_dir, config.instance_data_dir)
        resolve_resume(self.output_dir, config.resume_from_checkpoint, config.max_train_steps)  # before any loading
        if config.push_to_hub:
            check_push(config.output_dir, config.hub_model_id, config.hub_token, private=not config.hub_public)
        self.model_path = resolve_model(config.pretrained_model_name_or_path)
        require_sd(self.model_path)
        self.accelerator = make_accelerator(
            self.output_dir, config.gradient_accumulation_steps, config.mixed_precision, config.report_to
        )
        self.validation_seconds, self.validation_grids = 0.0, []
        self.data: DreamBoothData | None = None  # prepare() computes it
        self._pipe_factory = pipe_factory
        self._load_models()

    # ----------------------------------------------------------------- setup
    def _load_models(self) -> None:
        acc, cfg = self.accelerator, self.config
        self.weight_dtype = weight_dtype(cfg.mixed_precision)
        self.tokenizer, self.noise_scheduler, self.text_encoder, self.vae, self.unet = load_parts(
            self.model_path, cfg.revision, cfg.variant
        )
        self.vae.requires_grad_(False)
        self.text_encoder.requires_grad_(cfg.train_text_encoder)
        frozen = [self.vae] + ([] if cfg.train_text_encoder else [self.text_encoder])
        if cfg.lora_rank:  # with LoRA the base weights are frozen too; only the adapters train
            frozen += [self.unet] + ([self.text_encoder] if cfg.train_text_encoder else [])
        cast = {} if self.weight_dtype == torch.float32 else {"dtype": self.weight_dtype}
        for part in frozen:  # frozen parts in half precision on a GPU: half the memory, no gradients needed
            part.to(acc.device, **cast)
        if cfg.lora_rank:
            with torch.random.fork_rng():  # the adapters' random init follows --seed, like everything else
                torch.manual_seed(cfg.seed)
                add_lora(self.unet, cfg.lora_rank, cfg.lora_alpha, UNET_TARGETS)
                if cfg.train_text_encoder:
                    add_lora(self.text_encoder, cfg.lora_rank, cfg.lora_alpha, TEXT_ENCODER_TARGETS)
        check_float32(unet=self.unet, text_encoder=self.text_encoder)
        if cfg.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            if cfg.train_text_encoder:
                self.text_encoder.gradient_checkpointing_enable()
        self.resolution = cfg.resolution or self.unet.config.sample_size * vae_scale_factor(self.vae.config)
        self.guidance_scale = profile_for_model(cfg.pretrained_model_name_or_path).guidance_scale  # for validation
        for message in identifier_warnings(self.tokenizer, cfg.instance_prompt, cfg.class_prompt):
            warnings.warn(message, stacklevel=2)
        self._check_prompts({"--instance_prompt": cfg.instance_prompt})
        self._check_prompts({"--class_prompt": cfg.class_prompt, "--validation_prompt": cfg.validation_prompt}, ())

    @property
    def models(self) -> DreamBoothModels:
        """The models a step runs (after ``accelerate.prepare``, the prepared UNet and text encoder)."""
        return DreamBoothModels(self.unet, self.text_encoder, self.vae)

    def _check_prompts(self, prompts: dict[str, str | None], identifier: list[str] | None = None) -> None:
        """Each prompt against the text encoder's window: a warning once for a long one, a refusal when the
        identifier falls outside it (``identifier`` None: the run's own identifier words)."""
        cfg = self.config
        words = identifier_words(cfg.instance_prompt, cfg.class_prompt) if identifier is None else identifier
        for what, prompt in prompts.items():
            if prompt and (message := check_prompt(self.tokenizer, prompt, what, words)):
                warnings.warn(message, stacklevel=3)

    def _pipeline(self):
        from helpers.diffusion.profiles import load_pipeline

        cfg = self.config
        return (
            self._pipe_factory
            or (lambda: load_pipeline(cfg.pretrained_model_name_or_path, revision=cfg.revision, variant=cfg.variant))
        )()

    def _class_images(self) -> tuple[list[Image.Image], dict | None]:
        from helpers.dreambooth.priors import PriorSettings, class_images, load_class_images

        cfg = self.config
        if not cfg.with_prior_preservation:
            return [], None
        settings = dataclasses.replace(
            PriorSettings.for_model(
                cfg.pretrained_model_name_or_path,
                cfg.class_prompt,
                cfg.num_class_images,
                cfg.seed,
                guidance_scale=cfg.class_guidance_scale,
            ),
            resolution=self.resolution,
        )
        report = None
        if self.accelerator.is_main_process:
            paths, report = class_images(
                cfg.class_data_dir, settings, self._pipeline, batch_size=cfg.sample_batch_size, progress=cfg.progress
            )
        self.accelerator.wait_for_everyone()
        if not self.accelerator.is_main_process:
            paths, report = class_images(cfg.class_data_dir, settings, self._pipeline, progress=False)
        release_device_memory()  # the sampling pipeline's own copy of the model is gone now
        return load_class_images(paths), report

    # ----------------------------------------------------------------- training
    def prepare(self) -> DreamBoothData:
        """What ``train()`` computes before its first step (``step.prepare_data``): the photos with their
        prompts, and the class images, drawn now where the cache lacks them. Notebook 04 calls it to run
        the trainer's first step by hand."""
        if self.data is None:
            cfg = self.config
            instances = load_instances(cfg.instance_data_dir, self.resolution, cfg.instance_prompt, cfg.class_prompt)
            self._check_prompts({f"the caption of {p.name}": prompt for p, prompt in instances.captions.items()})
            class_imgs, class_report = self._class_images()
            device = self.accelerator.device
            self.data = prepare_data(cfg, instances, class_imgs, self.tokenizer, self.models, self.resolution, device)
            self.data.class_report = class_report
        return self.data

    def train(self) -> TrainResult:
        cfg, acc = self.config, self.accelerator
        self.prepare()
        if acc.is_main_process:  # made and marked only now: a setting or photo refused before leaves no folder
            claim_output(self.output_dir, TOOL, inputs=self.inputs)
        groups = [{"params": [p for p in self.unet.parameters() if p.requires_grad], "lr": cfg.learning_rate}]
        trained = [self.unet]
        if cfg.train_text_encoder:
            groups.append(
                {
                    "params": [p for p in self.text_encoder.parameters() if p.requires_grad],
                    "lr": cfg.text_encoder_lr or cfg.learning_rate,
                }
            )
            trained.append(self.text_encoder)

        def on_prepared(models: list[torch.nn.Module]) -> None:
            self.unet, self.text_encoder = models if cfg.train_text_encoder else (models[0], self.text_encoder)
            if cfg.lora_rank:  # a LoRA run's checkpoints hold its adapters, not the whole UNet
                adapters_only_checkpoints(acc, self._lora_base(), cfg.lora_rank, cfg.lora_alpha)
            else:  # checkpoint-N/unet (and text_encoder/) load with from_pretrained
                names = ("unet", "text_encoder")[: len(models)]
                pretrained_checkpoints(acc, {n: acc.unwrap_model(m) for n, m in zip(names, models)})

        hooks = Hooks("dreambooth", on_prepared, after_step=self._after_step)
        report = fit(acc, cfg, self.output_dir, trained, groups, self._step_loss, hooks)
        if acc.is_main_process:
            self._save_output()
        result = TrainResult(
            **report,
            class_images=self.data.class_report,
            captioned_images=self.data.captioned,
            validation_seconds=self.validation_seconds,
            validation_grids=[str(p) for p in self.validation_grids],
        )
        if acc.is_main_process:
            self._publish(result)
            write_result(self.output_dir, result, cfg)
        finish(acc)
        return result

    def _publish(self, result: TrainResult) -> None:
        """The model card beside the weights; the kohya export and the hub push when asked for."""
        cfg = self.config
        write_text_atomic(self.output_dir / CARD, str(model_card(cfg, result, self.output_dir)))
        if cfg.output_kohya_format:
            export_kohya(self.output_dir)
        if cfg.push_to_hub:
            result.hub_url = push_folder(self.output_dir, cfg.hub_model_id, cfg.hub_token, private=not cfg.hub_public)

    def _step_loss(self, step: int, micro: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``step.dreambooth_step`` on the prepared models, with the generator of (seed, step, micro, rank)."""
        cfg, acc = self.config, self.accelerator
        gen = step_generator(cfg.seed, step, micro, acc.process_index)
        return dreambooth_step(self.models, self.data, self.noise_scheduler, cfg, gen, acc.autocast())

    def _lora_base(self) -> str:
        """The base model to note next to saved adapters."""
        base = self.config.pretrained_model_name_or_path
        if base != "toy" and Path(base).exists():
            base = str(Path(base).resolve())  # a local base must still be found from another folder
        return base

    # ----------------------------------------------------------------- output
    def _save_output(self) -> None:
        """The fine-tuned pipeline, loadable with StableDiffusionPipeline.from_pretrained(output_dir);
        with LoRA only the adapters, loadable with pipe.load_lora_weights(output_dir). The last
        validation grid is drawn from what was saved, unless the loop drew one at the last step."""
        from diffusers import DDIMScheduler, StableDiffusionPipeline

        acc, cfg = self.accelerator, self.config
        validate = cfg.validation_prompt and cfg.max_train_steps % cfg.validation_steps != 0
        if cfg.lora_rank:
            text_encoder = acc.unwrap_model(self.text_encoder) if cfg.train_text_encoder else None
            unet = acc.unwrap_model(self.unet)
            with staged(self.output_dir) as stage:  # a full disk leaves the earlier output whole
                save_lora(stage, self._lora_base(), unet, text_encoder, cfg.lora_rank, cfg.lora_alpha)
            if validate:
                self._validate(load_lora(self._pipeline(), self.output_dir), cfg.max_train_steps)
            return
        parts = {
            "unet": acc.unwrap_model(self.unet),
            "text_encoder": acc.unwrap_model(self.text_encoder),
            "vae": self.vae,
        }
        parts = {k: m if m.dtype == torch.float32 else m.float() for k, m in parts.items()}
        pipe = StableDiffusionPipeline.from_pretrained(
            self.model_path, **parts, safety_checker=None, requires_safety_checker=False, revision=cfg.revision
        )
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        with staged(self.output_dir) as stage:  # a full disk leaves the earlier output whole
            pipe.save_pretrained(stage, safe_serialization=True)
        if validate:
            self._validate(pipe, cfg.max_train_steps)

    # ----------------------------------------------------------------- validation
    def _after_step(self, done: int) -> None:
        cfg = self.config
        if cfg.validation_prompt and done % cfg.validation_steps == 0 and self.accelerator.is_main_process:
            self._validate(self._live_pipeline(), done)

    def _live_pipeline(self):
        """A pipeline around the models being trained (no copy, no reload), sampling with DDIM."""
        from diffusers import DDIMScheduler, StableDiffusionPipeline

        acc = self.accelerator
        return StableDiffusionPipeline(
            vae=self.vae,
            text_encoder=acc.unwrap_model(self.text_encoder),
            tokenizer=self.tokenizer,
            unet=acc.unwrap_model(self.unet),
            scheduler=DDIMScheduler.from_config(self.noise_scheduler.config),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )

    def _validate(self, pipe, step: int) -> None:
        """Draw ``num_validation_images`` samples of the validation prompt with fixed seeds, in eval
        mode and without gradients (the pipeline's own no_grad), at the run's precision; save their
        grid as validation/step-N.png and log it. The models go back to training mode after."""
        from helpers.diffusion.generate import generate_images

        cfg, acc = self.config, self.accelerator
        started = time.perf_counter()
        models = [pipe.unet, pipe.text_encoder]
        modes = [m.training for m in models]
        for model in models:
            model.eval()
        pipe.set_progress_bar_config(disable=True)
        try:
            with acc.autocast():
                images = generate_images(
                    pipe.to(acc.device),
                    cfg.validation_prompt,
                    cfg.num_validation_images,
                    seed=cfg.seed,
                    num_inference_steps=VALIDATION_INFERENCE_STEPS,
                    guidance_scale=self.guidance_scale,
                )
        finally:
            for model, mode in zip(models, modes):
                model.train(mode)
        path = validation_grid(self.output_dir, step)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image_atomic(image_grid(images, len(images)), path)
        trackers.log_images(acc, "validation", images, step)
        self.validation_grids.append(path)
        self.validation_seconds += time.perf_counter() - started


def train(config: TrainConfig, pipe_factory=None) -> TrainResult:
    """Train, then let the models go: nothing of the run stays on the GPU for the next one."""
    result = Trainer(config, pipe_factory).train()
    release_device_memory()
    return result
