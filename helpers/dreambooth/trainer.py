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

What does not depend on the denoiser (folders, class images, the loop, validation, the card) is
``helpers.dreambooth.base``'s; ``train`` hands a flow-matching model to ``FlowTrainer``.
"""

from __future__ import annotations

import torch

from helpers.core.errors import UsageError
from helpers.core.folders import staged
from helpers.core.runtime import release_device_memory
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
from helpers.diffusion.profiles import model_family, profile_for_model, require_sd, resolve_model
from helpers.dreambooth.base import TOOL, VALIDATION_INFERENCE_STEPS, BaseTrainer, TrainResult, validation_grid
from helpers.dreambooth.config import TrainConfig
from helpers.dreambooth.flow_trainer import FlowTrainer
from helpers.dreambooth.instances import load_instances
from helpers.dreambooth.step import DreamBoothData, DreamBoothModels, dreambooth_step, prepare_data
from helpers.training.loop import (
    pretrained_checkpoints,
    step_generator,
    weight_dtype,
)

# what the notebooks and the command import from here, whichever module defines it
__all__ = [
    "TOOL",
    "VALIDATION_INFERENCE_STEPS",
    "FlowTrainer",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "train",
    "validation_grid",
]


class Trainer(BaseTrainer):
    """The DreamBooth trainer for a UNet (SD 1.x/2.x, the toy); ``train`` picks it or ``FlowTrainer``."""

    def _check_family(self) -> None:
        """SD 1.x/2.x only; flags that only a flow-matching model reads are refused, not ignored."""
        require_sd(self.model_path)
        if flags := self.config.flow_flags():
            raise UsageError(
                f"{' and '.join(flags)} only apply to flow-matching models (the SD3 family); {self.model_path} is "
                f"a Stable Diffusion 1.x/2.x UNet trained on DDPM's noise loss: leave them out"
            )

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

    @property
    def models(self) -> DreamBoothModels:
        """The models a step runs (after ``accelerate.prepare``, the prepared UNet and text encoder)."""
        return DreamBoothModels(self.unet, self.text_encoder, self.vae)

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

    def _trained(self) -> tuple[list[torch.nn.Module], list[dict]]:
        """The models the loop prepares and their optimizer groups: the UNet, and the text encoder at its own rate."""
        cfg = self.config
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
        return trained, groups

    def _on_prepared(self, models: list[torch.nn.Module]) -> None:
        cfg, acc = self.config, self.accelerator
        self.unet, self.text_encoder = models if cfg.train_text_encoder else (models[0], self.text_encoder)
        if cfg.lora_rank:  # a LoRA run's checkpoints hold its adapters, not the whole UNet
            adapters_only_checkpoints(acc, self._lora_base(), cfg.lora_rank, cfg.lora_alpha)
        else:  # checkpoint-N/unet (and text_encoder/) load with from_pretrained
            names = ("unet", "text_encoder")[: len(models)]
            pretrained_checkpoints(acc, {n: acc.unwrap_model(m) for n, m in zip(names, models)})

    def _step_loss(self, step: int, micro: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``step.dreambooth_step`` on the prepared models, with the generator of (seed, step, micro, rank)."""
        cfg, acc = self.config, self.accelerator
        gen = step_generator(cfg.seed, step, micro, acc.process_index)
        return dreambooth_step(self.models, self.data, self.noise_scheduler, cfg, gen, acc.autocast())

    # ----------------------------------------------------------------- output
    def _save_output(self) -> None:
        """The fine-tuned pipeline, loadable with StableDiffusionPipeline.from_pretrained(output_dir);
        with LoRA only the adapters, loadable with pipe.load_lora_weights(output_dir). The last
        validation grid is drawn from what was saved, unless the loop drew one at the last step."""
        from diffusers import DDIMScheduler, StableDiffusionPipeline

        acc, cfg = self.accelerator, self.config
        validate = cfg.validation_prompt and cfg.max_train_steps % cfg.validation_steps != 0
        if cfg.lora_rank:
            text_encoders = [acc.unwrap_model(self.text_encoder)] if cfg.train_text_encoder else []
            unet = acc.unwrap_model(self.unet)
            with staged(self.output_dir) as stage:  # a full disk leaves the earlier output whole
                save_lora(stage, self._lora_base(), unet, text_encoders, cfg.lora_rank, cfg.lora_alpha)
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


def train(config: TrainConfig, pipe_factory=None) -> TrainResult:
    """Train with the trainer of the model's family (a UNet's, or ``FlowTrainer`` for a StableDiffusion3Pipeline
    folder or hub id), then let the models go: nothing of the run stays on the GPU for the next one."""
    flow = model_family(resolve_model(config.pretrained_model_name_or_path)) == "sd3"
    result = (FlowTrainer if flow else Trainer)(config, pipe_factory).train()
    release_device_memory()
    return result
