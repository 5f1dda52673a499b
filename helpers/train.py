"""The DreamBooth trainer: one loop for the toy model on a CPU and for SD 1.5 on a GPU.

It follows diffusers' ``examples/dreambooth/train_dreambooth.py`` (same flags, same loss, same
output folder), with what a course needs on top:

- speed where the reference is slow: prompts are encoded once when the text encoder is frozen,
  and images go through the VAE once when no random augmentation is on;
- randomness that depends only on (seed, step, rank): batches, noise and timesteps are drawn from
  a generator seeded per step, so resuming from a checkpoint continues exactly the same run;
- atomic checkpoints (a kill during a save leaves the previous one usable) and ``latest`` resume;
- min-SNR weighting that also works with prior preservation (each half by its own timesteps);
- LoRA (``lora_rank``) as in diffusers' ``train_dreambooth_lora.py``: peft adapters on the
  attention projections, saved in diffusers' LoRA format (``helpers.lora``).

Scale-out is accelerate's: the same code runs under ``accelerate launch`` or ``torchrun``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from helpers.atomic import write_text_atomic
from helpers.cli import UsageError
from helpers.data import image_files, load_rgb
from helpers.identifiers import identifier_warnings
from helpers.latents import encode as encode_latents, preprocess
from helpers.lora import TEXT_ENCODER_TARGETS, UNET_TARGETS, add_lora, load_lora, save_lora
from helpers.losses import dreambooth_loss
from helpers.optim import make_optimizer, optimizer_state_bytes
from helpers.profiles import resolve_model

CHECKPOINT = re.compile(r"checkpoint-(\d+)")


@dataclass
class TrainConfig:
    """The trainer's settings; names follow diffusers' train_dreambooth.py flags."""

    instance_data_dir: str
    instance_prompt: str
    output_dir: str
    pretrained_model_name_or_path: str = "toy"
    class_data_dir: str | None = None
    class_prompt: str | None = None
    with_prior_preservation: bool = False
    prior_loss_weight: float = 1.0
    num_class_images: int = 100
    resolution: int | None = None
    center_crop: bool = False
    random_flip: bool = False
    train_batch_size: int = 1
    learning_rate: float = 5e-6
    text_encoder_lr: float | None = None
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    max_train_steps: int = 400
    gradient_accumulation_steps: int = 1
    use_8bit_adam: bool = False
    allow_adamw_fallback: bool = False
    adam_weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False
    mixed_precision: str = "no"
    train_text_encoder: bool = False
    lora_rank: int | None = None
    lora_alpha: float | None = None
    snr_gamma: float | None = None
    offset_noise: bool = False
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = None
    resume_from_checkpoint: str | None = None
    validation_prompt: str | None = None
    num_validation_images: int = 4
    sample_batch_size: int = 8
    logging_steps: int = 10
    seed: int = 0
    progress: bool = True

    def check(self) -> None:
        """Bad settings end with one line that says what to change."""
        if self.with_prior_preservation and not self.class_prompt:
            raise UsageError("--with_prior_preservation needs --class_prompt (for example \"a photo of dog\")")
        if self.with_prior_preservation and not self.class_data_dir:
            raise UsageError("--with_prior_preservation needs --class_data_dir: where class images are cached")
        if self.max_train_steps < 1 or self.train_batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise UsageError("--max_train_steps, --train_batch_size and --gradient_accumulation_steps must be at least 1")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise UsageError(f"--mixed_precision must be no, fp16 or bf16 (got {self.mixed_precision!r})")
        if self.mixed_precision == "fp16" and not torch.cuda.is_available():
            raise UsageError("--mixed_precision fp16 needs a CUDA GPU; on a CPU use no (or bf16)")
        if self.lora_rank is not None and self.lora_rank < 1:
            raise UsageError(f"--lora_rank must be a positive integer (got {self.lora_rank}); "
                             "leave it out for a full fine-tune")
        if not self.instance_prompt.strip():
            raise UsageError("--instance_prompt is empty: use something like \"a photo of sks dog\"")


@dataclass
class TrainResult:
    output_dir: str
    steps: int
    seconds: float
    steps_per_second: float
    history: list[dict] = field(default_factory=list)
    optimizer_state_bytes: int = 0
    trainable_parameters: int = 0
    peak_memory_bytes: int | None = None
    class_images: dict | None = None


# --------------------------------------------------------------------------- data

def load_instance_images(folder: str, resolution: int) -> list[Image.Image]:
    """The subject photos, upright and RGB; small ones are upscaled with a warning that says so."""
    images = []
    for path in image_files(folder):
        img = load_rgb(path)
        if min(img.size) < resolution:
            warnings.warn(f"{path.name} is {img.size[0]}x{img.size[1]}, smaller than --resolution {resolution}: "
                          "it is upscaled, which blurs it; use photos at least that large", stacklevel=2)
        images.append(img)
    return images


# --------------------------------------------------------------------------- checkpoints

def checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a ``.tmp`` folder left by a kill is not one)."""
    found = [(int(m.group(1)), p) for p in output_dir.glob("checkpoint-*")
             if (m := CHECKPOINT.fullmatch(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def resolve_resume(output_dir: Path, resume: str | None) -> Path | None:
    if resume is None:
        return None
    if resume == "latest":
        found = checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not path.is_dir():
        path = output_dir / resume  # diffusers' scripts name checkpoints relative to --output_dir
    if not path.is_dir() or not CHECKPOINT.fullmatch(path.name):
        raise UsageError(f"--resume_from_checkpoint {resume!r} is not a checkpoint-N folder; pass one or 'latest'")
    return path


def save_checkpoint(accelerator, output_dir: Path, step: int, limit: int | None) -> Path:
    """accelerator.save_state into a temporary folder, renamed when complete; old ones pruned after."""
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f".checkpoint-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    accelerator.save_state(str(tmp))
    write_text_atomic(tmp / "step.json", json.dumps({"step": step}))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    if limit is not None:
        for old in checkpoints(output_dir)[:-limit]:
            shutil.rmtree(old)
    return final


# --------------------------------------------------------------------------- the loop

class Trainer:
    """Build everything from a TrainConfig, then ``train()``."""

    def __init__(self, config: TrainConfig, pipe_factory=None) -> None:
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        config.check()
        self.config = config
        self.output_dir = Path(config.output_dir)
        self.model_path = resolve_model(config.pretrained_model_name_or_path)
        # cpu=True is what makes accelerate pick MULTI_CPU (gloo) under torchrun on a machine without CUDA
        self.accelerator = Accelerator(gradient_accumulation_steps=config.gradient_accumulation_steps,
                                       mixed_precision=config.mixed_precision, cpu=not torch.cuda.is_available(),
                                       project_config=ProjectConfiguration(project_dir=str(self.output_dir)))
        self._pipe_factory = pipe_factory
        self._load_models()

    # ----------------------------------------------------------------- setup
    def _load_models(self) -> None:
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        path, acc, cfg = self.model_path, self.accelerator, self.config
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.mixed_precision, torch.float32)
        self.tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
        self.noise_scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
        self.text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder")
        self.vae = AutoencoderKL.from_pretrained(path, subfolder="vae")
        self.unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet")
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
        if cfg.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            if cfg.train_text_encoder:
                self.text_encoder.gradient_checkpointing_enable()
        self.resolution = cfg.resolution or self.unet.config.sample_size * 2 ** (len(self.vae.config.block_out_channels) - 1)
        for message in identifier_warnings(self.tokenizer, cfg.instance_prompt, cfg.class_prompt):
            warnings.warn(message, stacklevel=2)

    def _pipeline(self):
        from helpers.profiles import load_pipeline

        return (self._pipe_factory or (lambda: load_pipeline(self.config.pretrained_model_name_or_path)))()

    def _class_images(self) -> tuple[list[Image.Image], dict | None]:
        from helpers.priors import PriorSettings, class_images, load_class_images

        cfg = self.config
        if not cfg.with_prior_preservation:
            return [], None
        settings = dataclasses.replace(PriorSettings.for_model(cfg.pretrained_model_name_or_path, cfg.class_prompt,
                                                               cfg.num_class_images, cfg.seed),
                                       resolution=self.resolution)
        report = None
        if self.accelerator.is_main_process:
            paths, report = class_images(cfg.class_data_dir, settings, self._pipeline, batch_size=cfg.sample_batch_size,
                                         progress=cfg.progress)
        self.accelerator.wait_for_everyone()
        if not self.accelerator.is_main_process:
            paths, report = class_images(cfg.class_data_dir, settings, self._pipeline, progress=False)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the sampling pipeline's own copy of the model is gone now
        return load_class_images(paths), report

    def _encode_prompt(self, prompt: str) -> torch.Tensor:
        ids = self.tokenizer([prompt], padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(self.accelerator.device)
        return ids

    # ----------------------------------------------------------------- training
    def train(self) -> TrainResult:
        from diffusers.optimization import get_scheduler

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
        if cfg.train_text_encoder:
            groups.append({"params": [p for p in self.text_encoder.parameters() if p.requires_grad],
                           "lr": cfg.text_encoder_lr or cfg.learning_rate})
        optimizer = make_optimizer(groups, cfg.learning_rate, cfg.use_8bit_adam, cfg.allow_adamw_fallback,
                                   weight_decay=cfg.adam_weight_decay)
        lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps * acc.num_processes,
                                     num_training_steps=cfg.max_train_steps * acc.num_processes)
        if cfg.train_text_encoder:
            self.unet, self.text_encoder, optimizer, lr_scheduler = acc.prepare(self.unet, self.text_encoder,
                                                                              optimizer, lr_scheduler)
        else:
            self.unet, optimizer, lr_scheduler = acc.prepare(self.unet, optimizer, lr_scheduler)
        trainable = sum(p.numel() for g in groups for p in g["params"])

        start_step = 0
        resume = resolve_resume(self.output_dir, cfg.resume_from_checkpoint)
        if resume is not None:
            acc.load_state(str(resume))
            start_step = int(CHECKPOINT.fullmatch(resume.name).group(1))
        elif cfg.resume_from_checkpoint and acc.is_main_process:
            print(f"no checkpoint in {self.output_dir}; starting a new run")
        history_path = self.output_dir / "loss_history.json"
        history = self._load_history(history_path, start_step)

        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        if acc.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        self.unet.train()
        self.text_encoder.train(cfg.train_text_encoder)
        bar = tqdm(range(start_step, cfg.max_train_steps), initial=start_step, total=cfg.max_train_steps,
                   desc="dreambooth", disable=not (cfg.progress and acc.is_local_main_process))
        pending: list[torch.Tensor] = []
        t0 = time.perf_counter()
        for step in bar:
            trained = (self.unet, self.text_encoder) if cfg.train_text_encoder else (self.unet,)
            logged = torch.zeros(3)
            for micro in range(cfg.gradient_accumulation_steps):
                with acc.accumulate(*trained):
                    loss, parts = self._step_loss(step, micro)
                    logged = logged + torch.stack([loss.detach(), *parts]).float().to(logged.device)
                    acc.backward(loss)
                    if acc.sync_gradients and cfg.max_grad_norm:
                        params = [p for g in groups for p in g["params"]]
                        acc.clip_grad_norm_(params, cfg.max_grad_norm)
                    optimizer.step()
                    lr_scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
            pending.append(logged / cfg.gradient_accumulation_steps)
            done = step + 1
            checkpoint_now = bool(cfg.checkpointing_steps) and done % cfg.checkpointing_steps == 0 \
                and done < cfg.max_train_steps
            if done % cfg.logging_steps == 0 or done == cfg.max_train_steps or checkpoint_now:
                values = torch.stack(pending).float().cpu()  # the only host sync: once per log interval
                for k, row in enumerate(values):
                    history.append({"step": done - len(values) + k + 1, "loss": row[0].item(),
                                    "instance_loss": row[1].item(), "prior_loss": row[2].item()})
                pending.clear()
                bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
            if checkpoint_now:
                acc.wait_for_everyone()
                if acc.is_main_process:
                    save_checkpoint(acc, self.output_dir, done, cfg.checkpoints_total_limit)
                    write_text_atomic(history_path, json.dumps(history))
        seconds = time.perf_counter() - t0
        acc.wait_for_everyone()
        peak = torch.cuda.max_memory_allocated() if acc.device.type == "cuda" else None
        if acc.is_main_process:
            write_text_atomic(history_path, json.dumps(history))
            self._save_pipeline()
        ran = cfg.max_train_steps - start_step
        result = TrainResult(str(self.output_dir), cfg.max_train_steps, seconds, ran / seconds if seconds else 0.0,
                             history, optimizer_state_bytes(optimizer), trainable, peak, class_report)
        if acc.is_main_process:
            write_text_atomic(self.output_dir / "train_result.json",
                              json.dumps({k: v for k, v in asdict(result).items() if k != "history"}
                                         | {"config": asdict(cfg)}, indent=2))
        acc.end_training()
        return result

    def _load_history(self, path: Path, start_step: int) -> list[dict]:
        if start_step and path.exists():
            return [h for h in json.loads(path.read_text()) if h["step"] <= start_step]
        return []

    def _step_loss(self, step: int, micro: int) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Loss of one micro-batch; every random draw comes from (seed, step, micro, rank)."""
        cfg, acc = self.config, self.accelerator
        gen = torch.Generator().manual_seed(
            (((cfg.seed * 1_000_003 + step) * 97 + micro) * 1009 + acc.process_index) % (2**63 - 1))
        n = cfg.train_batch_size
        latents = self._batch_latents(gen, n)
        cond = self._batch_condition(n)
        noise = torch.randn(latents.shape, generator=gen)
        if cfg.offset_noise:
            noise = noise + 0.1 * torch.randn((*latents.shape[:2], 1, 1), generator=gen)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (len(latents),), generator=gen)
        latents, noise, timesteps = (t.to(acc.device) for t in (latents, noise, timesteps))
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        with acc.autocast():
            pred = self.unet(noisy, timesteps, cond.to(acc.device)).sample
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        loss, instance, prior = dreambooth_loss(pred, target, timesteps, self.noise_scheduler, n,
                                                cfg.prior_loss_weight, cfg.snr_gamma)
        return loss, (instance, prior)

    def _batch_latents(self, gen: torch.Generator, n: int) -> torch.Tensor:
        idx = torch.randint(0, len(self.instance_images), (n,), generator=gen)
        cls_idx = torch.randint(0, max(1, len(self.class_images_list)), (n,), generator=gen)
        if self.cached:
            parts = [self.instance_latents[idx.to(self.instance_latents.device)]]
            if self.class_latents is not None:
                parts.append(self.class_latents[cls_idx.to(self.class_latents.device)])
            return torch.cat(parts).cpu()
        rng = random.Random(int(torch.randint(0, 2**31, (1,), generator=gen)))
        images = [self.instance_images[i] for i in idx] + [self.class_images_list[i] for i in cls_idx
                                                            if self.class_images_list]
        x = torch.stack([preprocess(im, self.resolution, self.config.center_crop, rng, self.config.random_flip)
                         for im in images])
        with torch.no_grad():
            z = self.vae.encode(x.to(self.accelerator.device, dtype=self.weight_dtype)).latent_dist.sample(generator=gen)
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

    def _save_pipeline(self) -> None:
        """The fine-tuned pipeline, loadable with StableDiffusionPipeline.from_pretrained(output_dir);
        with LoRA only the adapters, loadable with pipe.load_lora_weights(output_dir)."""
        from diffusers import DDIMScheduler, StableDiffusionPipeline

        acc, cfg = self.accelerator, self.config
        if cfg.lora_rank:
            text_encoder = acc.unwrap_model(self.text_encoder) if cfg.train_text_encoder else None
            base = cfg.pretrained_model_name_or_path
            if base != "toy" and Path(base).exists():
                base = str(Path(base).resolve())  # a local base must still be found from another folder
            save_lora(self.output_dir, base, acc.unwrap_model(self.unet), text_encoder, cfg.lora_rank, cfg.lora_alpha)
            if cfg.validation_prompt:
                self._validate(load_lora(self._pipeline(), self.output_dir))
            return
        parts = {"unet": acc.unwrap_model(self.unet), "text_encoder": acc.unwrap_model(self.text_encoder), "vae": self.vae}
        parts = {k: m if m.dtype == torch.float32 else m.float() for k, m in parts.items()}
        pipe = StableDiffusionPipeline.from_pretrained(self.model_path, **parts, safety_checker=None,
                                                       requires_safety_checker=False)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        pipe.save_pretrained(self.output_dir, safe_serialization=True)
        if self.config.validation_prompt:
            self._validate(pipe)

    def _validate(self, pipe) -> None:
        from helpers.generate import generate_images
        from helpers.viz import image_grid

        pipe.set_progress_bar_config(disable=True)
        images = generate_images(pipe.to(self.accelerator.device), self.config.validation_prompt,
                                 self.config.num_validation_images, seed=self.config.seed)
        image_grid(images, len(images)).save(self.output_dir / "validation.png")


def train(config: TrainConfig, pipe_factory=None) -> TrainResult:
    return Trainer(config, pipe_factory).train()

