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
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from helpers.core.errors import UsageError
from helpers.core.images import image_files, load_rgb
from helpers.core.runtime import release_device_memory
from helpers.diffusion.latents import encode as encode_latents
from helpers.diffusion.latents import preprocess, vae_scale_factor
from helpers.diffusion.loading import check_float32, load_parts
from helpers.diffusion.lora import (
    TEXT_ENCODER_TARGETS,
    UNET_TARGETS,
    adapters_only_checkpoints,
    add_lora,
    load_lora,
    save_lora,
)
from helpers.diffusion.losses import dreambooth_loss
from helpers.diffusion.noise import offset_noise
from helpers.diffusion.profiles import resolve_model
from helpers.dreambooth.identifiers import identifier_warnings
from helpers.training.loop import (
    denoising_target,
    finish,
    fit,
    make_accelerator,
    step_generator,
    weight_dtype,
    write_result,
)
from helpers.training.settings import TrainerResult, TrainerSettings, flag


@dataclass(kw_only=True)
class TrainConfig(TrainerSettings):
    """The DreamBooth trainer's settings; names follow diffusers' train_dreambooth.py flags."""

    instance_data_dir: str = field(metadata={"help": "folder with the subject's photos"})
    instance_prompt: str = field(metadata={"help": "prompt with the identifier, e.g. 'a photo of sks dog'"})
    class_data_dir: str | None = flag(None, "where class images are cached (generated when missing or stale)")
    class_prompt: str | None = flag(None, "prompt for the class, e.g. 'a photo of dog'")
    with_prior_preservation: bool = flag(False, "add the prior-preservation loss on class images")
    prior_loss_weight: float = 1.0
    num_class_images: int = 100
    center_crop: bool = False
    random_flip: bool = False
    text_encoder_lr: float | None = flag(None, "learning rate of the text encoder (default: --learning_rate)")
    train_text_encoder: bool = False
    lora_rank: int | None = flag(
        None,
        "train rank-r LoRA adapters on the attention projections instead of the "
        "whole UNet (and of the text encoder with --train_text_encoder); the output "
        "loads with load_lora_weights",
    )
    lora_alpha: float | None = flag(None, "LoRA scale numerator (default: --lora_rank, so the scale alpha/rank is 1)")
    snr_gamma: float | None = flag(None, "min-SNR weighting gamma (5.0 is the paper's choice)")
    offset_noise: bool = flag(False, "add 0.1 x per-channel offset noise")
    validation_prompt: str | None = None
    num_validation_images: int = 4
    sample_batch_size: int = 8

    def check(self) -> None:
        """Bad settings end with one line that says what to change."""
        if self.with_prior_preservation and not self.class_prompt:
            raise UsageError('--with_prior_preservation needs --class_prompt (for example "a photo of dog")')
        if self.with_prior_preservation and not self.class_data_dir:
            raise UsageError("--with_prior_preservation needs --class_data_dir: where class images are cached")
        super().check()
        if self.lora_rank is not None and self.lora_rank < 1:
            raise UsageError(
                f"--lora_rank must be a positive integer (got {self.lora_rank}); leave it out for a full fine-tune"
            )
        if not self.instance_prompt.strip():
            raise UsageError('--instance_prompt is empty: use something like "a photo of sks dog"')


@dataclass(kw_only=True)
class TrainResult(TrainerResult):
    class_images: dict | None = None


# --------------------------------------------------------------------------- data


def load_instance_images(folder: str, resolution: int) -> list[Image.Image]:
    """The subject photos, upright and RGB; small ones are upscaled with a warning that says so."""
    images = []
    for path in image_files(folder):
        img = load_rgb(path)
        if min(img.size) < resolution:
            warnings.warn(
                f"{path.name} is {img.size[0]}x{img.size[1]}, smaller than --resolution {resolution}: "
                "it is upscaled, which blurs it; use photos at least that large",
                stacklevel=2,
            )
        images.append(img)
    return images


# --------------------------------------------------------------------------- the loop


class Trainer:
    """Build everything from a TrainConfig, then ``train()``."""

    def __init__(self, config: TrainConfig, pipe_factory=None) -> None:
        config.check()
        self.config = config
        self.output_dir = Path(config.output_dir)
        self.model_path = resolve_model(config.pretrained_model_name_or_path)
        self.accelerator = make_accelerator(self.output_dir, config.gradient_accumulation_steps, config.mixed_precision)
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
        for message in identifier_warnings(self.tokenizer, cfg.instance_prompt, cfg.class_prompt):
            warnings.warn(message, stacklevel=2)

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
                cfg.pretrained_model_name_or_path, cfg.class_prompt, cfg.num_class_images, cfg.seed
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

    def _encode_prompt(self, prompt: str) -> torch.Tensor:
        ids = self.tokenizer(
            [prompt],
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.accelerator.device)
        return ids

    # ----------------------------------------------------------------- training
    def train(self) -> TrainResult:
        cfg, acc = self.config, self.accelerator
        instance_images = load_instance_images(cfg.instance_data_dir, self.resolution)
        class_imgs, class_report = self._class_images()
        augment = cfg.random_flip or not cfg.center_crop and any(im.size[0] != im.size[1] for im in instance_images)
        self.cached = not augment
        if self.cached:  # VAE latents of the centre-cropped images, computed once for the whole run
            self.instance_latents = encode_latents(self.vae, instance_images, self.resolution)
            self.class_latents = encode_latents(self.vae, class_imgs, self.resolution) if class_imgs else None
        self.instance_images, self.class_images_list = instance_images, class_imgs
        instance_ids = self._encode_prompt(cfg.instance_prompt)
        class_ids = self._encode_prompt(cfg.class_prompt) if cfg.with_prior_preservation else None
        if not cfg.train_text_encoder:
            with torch.no_grad():
                self.instance_emb = self.text_encoder(instance_ids)[0]
                self.class_emb = self.text_encoder(class_ids)[0] if class_ids is not None else None
        self.instance_ids, self.class_ids = instance_ids, class_ids

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

        report = fit(acc, cfg, self.output_dir, trained, groups, self._step_loss, "dreambooth", on_prepared)
        if acc.is_main_process:
            self._save_pipeline()
        result = TrainResult(**report, class_images=class_report)
        if acc.is_main_process:
            write_result(self.output_dir, result, cfg)
        finish(acc)
        return result

    def _step_loss(self, step: int, micro: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of one micro-batch; every random draw comes from (seed, step, micro, rank)."""
        cfg, acc = self.config, self.accelerator
        gen = step_generator(cfg.seed, step, micro, acc.process_index)
        n = cfg.train_batch_size
        latents = self._batch_latents(gen, n)
        cond = self._batch_condition(n)
        noise = offset_noise(latents.shape, 0.1 if cfg.offset_noise else 0.0, gen)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (len(latents),), generator=gen)
        latents, noise, timesteps = (t.to(acc.device) for t in (latents, noise, timesteps))
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        with acc.autocast():
            pred = self.unet(noisy, timesteps, cond.to(acc.device)).sample
        target = denoising_target(self.noise_scheduler, latents, noise, timesteps)
        loss, instance, prior = dreambooth_loss(
            pred, target, timesteps, self.noise_scheduler, n, cfg.prior_loss_weight, cfg.snr_gamma
        )
        return loss, {"instance_loss": instance, "prior_loss": prior}

    def _batch_latents(self, gen: torch.Generator, n: int) -> torch.Tensor:
        idx = torch.randint(0, len(self.instance_images), (n,), generator=gen)
        cls_idx = torch.randint(0, max(1, len(self.class_images_list)), (n,), generator=gen)
        if self.cached:
            parts = [self.instance_latents[idx.to(self.instance_latents.device)]]
            if self.class_latents is not None:
                parts.append(self.class_latents[cls_idx.to(self.class_latents.device)])
            return torch.cat(parts).cpu()
        rng = random.Random(int(torch.randint(0, 2**31, (1,), generator=gen)))
        images = [self.instance_images[i] for i in idx] + [
            self.class_images_list[i] for i in cls_idx if self.class_images_list
        ]
        x = torch.stack(
            [preprocess(im, self.resolution, self.config.center_crop, rng, self.config.random_flip) for im in images]
        )
        with torch.no_grad():
            z = self.vae.encode(x.to(self.accelerator.device, dtype=self.weight_dtype)).latent_dist.sample(
                generator=gen
            )
        return (z.float() * self.vae.config.scaling_factor).cpu()

    def _batch_condition(self, n: int) -> torch.Tensor:
        if self.config.train_text_encoder:
            ids = [self.instance_ids.expand(n, -1)]
            if self.class_ids is not None:
                ids.append(self.class_ids.expand(n, -1))
            return self.text_encoder(torch.cat(ids))[0]
        parts = [self.instance_emb.expand(n, -1, -1)]
        if self.class_emb is not None:
            parts.append(self.class_emb.expand(n, -1, -1))
        return torch.cat(parts)

    def _lora_base(self) -> str:
        """The base model to note next to saved adapters."""
        base = self.config.pretrained_model_name_or_path
        if base != "toy" and Path(base).exists():
            base = str(Path(base).resolve())  # a local base must still be found from another folder
        return base

    def _save_pipeline(self) -> None:
        """The fine-tuned pipeline, loadable with StableDiffusionPipeline.from_pretrained(output_dir);
        with LoRA only the adapters, loadable with pipe.load_lora_weights(output_dir)."""
        from diffusers import DDIMScheduler, StableDiffusionPipeline

        acc, cfg = self.accelerator, self.config
        if cfg.lora_rank:
            text_encoder = acc.unwrap_model(self.text_encoder) if cfg.train_text_encoder else None
            save_lora(
                self.output_dir,
                self._lora_base(),
                acc.unwrap_model(self.unet),
                text_encoder,
                cfg.lora_rank,
                cfg.lora_alpha,
            )
            if cfg.validation_prompt:
                self._validate(load_lora(self._pipeline(), self.output_dir))
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
        pipe.save_pretrained(self.output_dir, safe_serialization=True)
        if self.config.validation_prompt:
            self._validate(pipe)

    def _validate(self, pipe) -> None:
        from helpers.core.figures import image_grid
        from helpers.diffusion.generate import generate_images

        pipe.set_progress_bar_config(disable=True)
        images = generate_images(
            pipe.to(self.accelerator.device),
            self.config.validation_prompt,
            self.config.num_validation_images,
            seed=self.config.seed,
        )
        image_grid(images, len(images)).save(self.output_dir / "validation.png")


def train(config: TrainConfig, pipe_factory=None) -> TrainResult:
    """Train, then let the models go: nothing of the run stays on the GPU for the next one."""
    result = Trainer(config, pipe_factory).train()
    release_device_memory()
    return result
