"""DreamBooth on a flow-matching transformer (the SD3 family): the course's trainer with the MMDiT in the UNet's place.

It follows diffusers' ``examples/dreambooth/train_dreambooth_lora_sd3.py`` (its flags, its loss, its LoRA
targets and file) on the course's one loop and settings: the step is ``helpers.dreambooth.flow_step``;
checkpoints, resume, validation samples, the model card and the hub push come from ``helpers.dreambooth.base``,
which the UNet trainer shares. The VAE and T5 stay frozen, so the photos, class images and prompts go
through them once before the first step, as with the SD3 script's ``--cache_latents`` and its cached prompt
embeddings (the photos cropped and flipped once before that, as its dataset does); each step takes the
latents' mean, or with ``--cache_latents`` a sample of their distribution, as the SD3 script does. With
``--train_text_encoder`` the two CLIP encoders train too (LoRA adapters on their attention projections, as the
SD3 script adds them, or every weight in a full fine-tune) and encode the batch's prompts at every step. With
``--bnb_quantization_config_path`` the frozen transformer is 4-bit (QLoRA, ``helpers.diffusion.quantize``), and
the encoders and VAE wait on the CPU once the cache holds their output.
"""

from __future__ import annotations

import torch

from helpers.core.errors import UsageError
from helpers.core.folders import staged
from helpers.diffusion.flow import FlowObjective
from helpers.diffusion.latents import vae_scale_factor
from helpers.diffusion.loading import absent_parts, loading
from helpers.diffusion.lora import TEXT_ENCODER_TARGETS, adapters_only_checkpoints, add_lora, load_lora, save_lora
from helpers.diffusion.profiles import model_family, profile_for_model
from helpers.diffusion.quantize import check_backend, quantize_linears, read_quantization
from helpers.dreambooth.base import BaseTrainer
from helpers.dreambooth.flow_step import Augment, FlowDreamBoothData, flow_dreambooth_step, prepare_flow_data
from helpers.dreambooth.instances import load_instances
from helpers.training.loop import pretrained_checkpoints, step_generator, weight_dtype

# The SD3 script's default --lora_layers: every attention projection of a joint block, the image
# stream's (to_q, to_k, to_v, to_out.0) and the text stream's (add_q_proj, add_k_proj, add_v_proj, to_add_out).
SD3_LORA_TARGETS = [
    "attn.add_k_proj",
    "attn.add_q_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
    "attn.to_k",
    "attn.to_out.0",
    "attn.to_q",
    "attn.to_v",
]
UNET_ONLY = {
    "snr_gamma": "min-SNR weights DDPM's noise loss; a flow-matching model weights by --weighting_scheme",
    "offset_noise": "offset noise shifts DDPM's noise; flow matching draws plain Gaussian noise",
    "output_kohya_format": "ComfyUI loads its pytorch_lora_weights.safetensors as it is (diffusers' SD3 keys, "
    "transformer.*), so there is nothing to export",
}


def lora_targets(layers: str | None, blocks: str | None) -> list[str]:
    """The transformer modules that get adapters, as the SD3 script names them: ``--lora_layers`` (or its
    default), in every block or, with ``--lora_blocks``, in those blocks only."""
    targets = [layer.strip() for layer in layers.split(",")] if layers else SD3_LORA_TARGETS
    if blocks:
        return [f"transformer_blocks.{int(b)}.{t}" for b in blocks.split(",") for t in targets]
    return targets


class FlowTrainer(BaseTrainer):
    """The DreamBooth trainer for a ``StableDiffusion3Pipeline`` folder or hub id (``train`` picks it)."""

    # ----------------------------------------------------------------- setup
    def _check_family(self) -> None:
        """A flow-matching model only; the UNet trainer's flags that mean nothing here are refused, not ignored."""
        cfg = self.config
        if model_family(self.model_path) != "sd3":
            raise UsageError(f"{self.model_path} is not a flow-matching model: train it with the UNet trainer")
        for name, why in UNET_ONLY.items():
            if getattr(cfg, name):
                raise UsageError(f"--{name} does not apply to {self.model_path}, a flow-matching model: {why}")

    def _load_models(self) -> None:
        from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

        acc, cfg = self.accelerator, self.config
        self.weight_dtype = weight_dtype(cfg.mixed_precision)
        self.quantization = cfg.bnb_quantization_config_path and read_quantization(cfg.bnb_quantization_config_path)
        if self.quantization:
            check_backend(acc.device)
        # A LoRA run trains fp32 adapters on a frozen base, which loads in the run's precision at once: SD 3.5
        # Medium's pipeline without T5 is 6.7 GB in fp16, and 13.5 GB in fp32 would outgrow a free Colab's RAM.
        dtype = self.weight_dtype if cfg.lora_rank else torch.float32
        without = {"text_encoder_3": None, "tokenizer_3": None} if cfg.without_t5 else {}
        with loading(self.model_path, cfg.variant, cfg.revision):
            self.pipe = StableDiffusion3Pipeline.from_pretrained(
                self.model_path,
                **(absent_parts(self.model_path) | without),
                dtype=dtype,
                revision=cfg.revision,
                variant=cfg.variant,
            )
        self.pipe.set_progress_bar_config(disable=True)
        self.transformer, self.vae, self.tokenizer = self.pipe.transformer, self.pipe.vae, self.pipe.tokenizer
        self.noise_scheduler = FlowMatchEulerDiscreteScheduler.from_config(self.pipe.scheduler.config)
        pipe = self.pipe
        self.clip_tokenizers = [t for t in (pipe.tokenizer, pipe.tokenizer_2) if t is not None]
        self.clips = [e for e in (pipe.text_encoder, pipe.text_encoder_2) if e is not None]
        trains_clips = cfg.train_text_encoder
        self.encoders = [e for e in (*self.clips, pipe.text_encoder_3) if e is not None]
        frozen = [self.vae] + ([pipe.text_encoder_3] if pipe.text_encoder_3 is not None else [])
        frozen += [] if trains_clips else self.clips
        if cfg.lora_rank:  # with LoRA the base weights are frozen too; only the adapters train
            frozen += ([] if self.quantization else [self.transformer]) + (self.clips if trains_clips else [])
        cast = {} if dtype == self.weight_dtype else {"dtype": self.weight_dtype}
        for part in frozen:
            part.requires_grad_(False)
            part.to(acc.device, **cast)
        if self.quantization:  # the 4-bit base: every linear layer of the transformer, on the device
            quantize_linears(self.transformer.to(**cast), self.quantization, self.weight_dtype, acc.device)
        if cfg.lora_rank:
            with torch.random.fork_rng():  # the adapters' random init follows --seed
                torch.manual_seed(cfg.seed)
                add_lora(
                    self.transformer, cfg.lora_rank, cfg.lora_alpha, lora_targets(cfg.lora_layers, cfg.lora_blocks)
                )
                for clip in self.clips if trains_clips else []:
                    add_lora(clip, cfg.lora_rank, cfg.lora_alpha, TEXT_ENCODER_TARGETS)
        for model in [self.transformer] + (self.clips if trains_clips else []):
            model.to(acc.device)  # trained weights and adapters in fp32
        if cfg.gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
            for clip in self.clips if trains_clips else []:
                clip.gradient_checkpointing_enable()
        profile = profile_for_model(cfg.pretrained_model_name_or_path)
        self.resolution = cfg.resolution or self.transformer.config.sample_size * vae_scale_factor(self.vae.config)
        self.guidance_scale = profile.guidance_scale
        self.pipeline_kwargs = {"max_sequence_length": cfg.t5_tokens()}
        self.objective = FlowObjective(
            cfg.weighting_scheme or "logit_normal",
            0.0 if cfg.logit_mean is None else cfg.logit_mean,
            cfg.logit_std or 1.0,
            1.29 if cfg.mode_scale is None else cfg.mode_scale,
        )
        self.precondition_outputs = cfg.precondition_outputs != 0  # None: the SD3 script's default, 1

    # ----------------------------------------------------------------- training
    def prepare(self) -> FlowDreamBoothData:
        """The photos with their prompts and the class images (drawn now where the cache lacks them), through
        the VAE and the text encoders once: ``flow_step.prepare_flow_data``."""
        if self.data is None:
            cfg = self.config
            instances = load_instances(cfg.instance_data_dir, self.resolution, cfg.instance_prompt, cfg.class_prompt)
            self._check_prompts({f"the caption of {p.name}": prompt for p, prompt in instances.captions.items()})
            class_imgs, class_report = self._class_images()
            self.data = prepare_flow_data(
                self.pipe,
                instances.images,
                instances.prompts,
                class_imgs,
                cfg.class_prompt,
                self.resolution,
                self.pipeline_kwargs["max_sequence_length"],
                Augment(cfg.center_crop, cfg.random_flip, cfg.seed, cfg.cache_latents),
            )
            self.data.class_report, self.data.captioned = class_report, instances.captioned
            self._park()
        return self.data

    def _park(self) -> None:
        """The frozen encoders and the VAE leave the device once the cache holds their output: training needs
        only the transformer there (a validation brings them back for its samples, then parks them again)."""
        if not self.config.train_text_encoder:
            for part in [*self.encoders, self.vae]:
                part.to("cpu")

    def _pipeline(self):
        """The pipeline that draws class images: with a 4-bit base, the trainer's own (a second copy of the
        model would not fit where the 4-bit base is needed); otherwise the model's, as the UNet trainer's."""
        return self._live_pipeline() if self.quantization else super()._pipeline()

    def _validate(self, pipe, step: int) -> None:
        """The shared validation (which moves the whole pipeline to the device), then the encoders parked again."""
        super()._validate(pipe, step)
        if pipe is self.pipe:
            self._park()

    def _trained(self) -> tuple[list[torch.nn.Module], list[dict]]:
        """The transformer, and with ``--train_text_encoder`` each CLIP encoder at ``--text_encoder_lr``."""
        cfg = self.config
        trained = [self.transformer] + (self.clips if cfg.train_text_encoder else [])
        rates = [cfg.learning_rate] + [cfg.text_encoder_lr or cfg.learning_rate] * (len(trained) - 1)
        groups = [
            {"params": [p for p in model.parameters() if p.requires_grad], "lr": lr}
            for model, lr in zip(trained, rates)
        ]
        return trained, groups

    def _on_prepared(self, models: list[torch.nn.Module]) -> None:
        cfg, acc = self.config, self.accelerator
        self.transformer, trained_clips = models[0], models[1:]
        if trained_clips:
            self.clips = trained_clips
        if cfg.lora_rank:  # a LoRA run's checkpoints hold its adapters, not the whole transformer
            adapters_only_checkpoints(acc, self._lora_base(), cfg.lora_rank, cfg.lora_alpha)
        else:  # checkpoint-N/transformer (and text_encoder/, text_encoder_2/) load with from_pretrained
            names = ("transformer", "text_encoder", "text_encoder_2")
            pretrained_checkpoints(acc, {n: acc.unwrap_model(m) for n, m in zip(names, models)})

    def _step_loss(self, step: int, micro: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``flow_step.flow_dreambooth_step`` on the prepared transformer, with the generator of
        (seed, step, micro, rank)."""
        cfg, acc = self.config, self.accelerator
        return flow_dreambooth_step(
            self.transformer,
            self.data,
            self.noise_scheduler,
            self.objective,
            cfg.train_batch_size,
            step_generator(cfg.seed, step, micro, acc.process_index),
            cfg.prior_loss_weight,
            self.precondition_outputs,
            acc.autocast(),
            (self.clip_tokenizers, self.clips) if cfg.train_text_encoder else None,
        )

    # ----------------------------------------------------------------- output
    def _save_output(self) -> None:
        """The fine-tuned pipeline (StableDiffusion3Pipeline.from_pretrained(output_dir)), or with LoRA the
        adapters alone (pipe.load_lora_weights(output_dir)); the last validation grid as the UNet trainer draws it."""
        acc, cfg = self.accelerator, self.config
        validate = cfg.validation_prompt and cfg.max_train_steps % cfg.validation_steps != 0
        transformer = acc.unwrap_model(self.transformer)
        if cfg.lora_rank:
            clips = [acc.unwrap_model(m) for m in self.clips] if cfg.train_text_encoder else []
            with staged(self.output_dir) as stage:  # a full disk leaves the earlier output whole
                save_lora(stage, self._lora_base(), transformer, clips, cfg.lora_rank, cfg.lora_alpha)
            if validate:  # the saved file loaded back; on a 4-bit base, the live adapters (a second base would not fit)
                pipe = self._live_pipeline() if self.quantization else load_lora(self._pipeline(), self.output_dir)
                self._validate(pipe, cfg.max_train_steps)
            return
        pipe = self._live_pipeline()
        for part in (pipe.vae, pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3):
            if part is not None:
                part.float()
        with staged(self.output_dir) as stage:
            pipe.save_pretrained(stage, safe_serialization=True)
        if validate:
            self._validate(pipe, cfg.max_train_steps)

    def _live_pipeline(self):
        """The loaded pipeline around the transformer being trained (no copy), with a fresh sampling scheduler."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        acc = self.accelerator
        self.pipe.transformer = acc.unwrap_model(self.transformer)
        if self.config.train_text_encoder:
            for name, clip in zip(("text_encoder", "text_encoder_2"), self.clips):
                setattr(self.pipe, name, acc.unwrap_model(clip))
        self.pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(self.noise_scheduler.config)
        return self.pipe
