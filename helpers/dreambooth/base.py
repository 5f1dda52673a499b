"""What the DreamBooth trainers of both families share: settings checked, folders claimed, class images,
the one loop, validation samples, the model card and the hub push.

``helpers.dreambooth.trainer.Trainer`` fills it in for a UNet (SD 1.x/2.x) and
``helpers.dreambooth.flow_trainer.FlowTrainer`` for a flow-matching transformer (the SD3 family): each
loads its models, prepares its data, runs its step (``step``, ``flow_step``) and saves its output;
``helpers.dreambooth.trainer.train`` picks one from the model folder.
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
from helpers.core.folders import check_output, claim_output
from helpers.core.runtime import release_device_memory
from helpers.diffusion.hub import check_push, push_folder
from helpers.diffusion.lora_export import export_kohya
from helpers.diffusion.profiles import profile_for_model, resolve_model
from helpers.diffusion.prompts import check_prompt
from helpers.dreambooth.card import CARD, model_card
from helpers.dreambooth.config import TrainConfig
from helpers.dreambooth.identifiers import identifier_warnings, identifier_words
from helpers.dreambooth.priors import check_class_folder
from helpers.training import trackers
from helpers.training.loop import (
    Hooks,
    finish,
    fit,
    make_accelerator,
    resolve_resume,
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


class BaseTrainer:
    """Build everything from a TrainConfig, then ``train()``; each family's trainer fills in the methods
    that raise here."""

    pipeline_kwargs: dict = {}  # what every sampling call passes: a flow-matching model's T5 token count

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
        self._check_family()
        self.accelerator = make_accelerator(
            self.output_dir, config.gradient_accumulation_steps, config.mixed_precision, config.report_to
        )
        self.validation_seconds, self.validation_grids = 0.0, []
        self.data = None  # prepare() computes it: the family's step data (step.DreamBoothData, ...)
        self._pipe_factory = pipe_factory
        self._load_models()
        self._check_run_prompts()

    # ----------------------------------------------------------------- setup
    def _check_run_prompts(self) -> None:
        """The identifier and the run's prompts against the loaded tokenizer, whichever the family."""
        cfg = self.config
        for message in identifier_warnings(self.tokenizer, cfg.instance_prompt, cfg.class_prompt):
            warnings.warn(message, stacklevel=2)
        self._check_prompts({"--instance_prompt": cfg.instance_prompt})
        self._check_prompts({"--class_prompt": cfg.class_prompt, "--validation_prompt": cfg.validation_prompt}, ())

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
    def train(self) -> TrainResult:
        cfg, acc = self.config, self.accelerator
        self.prepare()
        if acc.is_main_process:  # made and marked only now: a setting or photo refused before leaves no folder
            claim_output(self.output_dir, TOOL, inputs=self.inputs)
        trained, groups = self._trained()
        hooks = Hooks("dreambooth", self._on_prepared, after_step=self._after_step)
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

    def _lora_base(self) -> str:
        """The base model to note next to saved adapters."""
        base = self.config.pretrained_model_name_or_path
        if base != "toy" and Path(base).exists():
            base = str(Path(base).resolve())  # a local base must still be found from another folder
        return base

    # ----------------------------------------------------------------- validation
    def _after_step(self, done: int) -> None:
        cfg = self.config
        if cfg.validation_prompt and done % cfg.validation_steps == 0 and self.accelerator.is_main_process:
            self._validate(self._live_pipeline(), done)

    def _validate(self, pipe, step: int) -> None:
        """Draw ``num_validation_images`` samples of the validation prompt with fixed seeds, in eval
        mode and without gradients (the pipeline's own no_grad), at the run's precision; save their
        grid as validation/step-N.png and log it. The models go back to training mode after."""
        from helpers.diffusion.generate import generate_images

        cfg, acc = self.config, self.accelerator
        started = time.perf_counter()
        models = [getattr(pipe, "unet", None) or pipe.transformer, pipe.text_encoder]
        models += [pipe.text_encoder_2] if getattr(pipe, "text_encoder_2", None) is not None else []
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
                    **self.pipeline_kwargs,
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

    # ----------------------------------------------------------------- what each family fills in
    def _check_family(self) -> None:
        """Refuse a model of another family, and the flags that mean nothing to this one."""
        raise NotImplementedError

    def _load_models(self) -> None:
        """Load the models, freeze what does not train, add adapters; set resolution and guidance."""
        raise NotImplementedError

    def prepare(self):
        """The data computed once before the first step; ``self.data``."""
        raise NotImplementedError

    def _trained(self) -> tuple[list[torch.nn.Module], list[dict]]:
        """The models the loop prepares and their optimizer groups."""
        raise NotImplementedError

    def _on_prepared(self, models: list[torch.nn.Module]) -> None:
        """Take the prepared models back and set what the checkpoints hold."""
        raise NotImplementedError

    def _step_loss(self, step: int, micro: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of one micro-batch and its parts."""
        raise NotImplementedError

    def _save_output(self) -> None:
        """The trained model (or adapters) in the output folder."""
        raise NotImplementedError

    def _live_pipeline(self):
        """A pipeline around the models being trained, for validation samples."""
        raise NotImplementedError
