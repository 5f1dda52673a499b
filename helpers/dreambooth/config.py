"""The DreamBooth trainer's settings: one dataclass for the Python API and the command line.

It lives apart from the trainer so that the training step (``helpers.dreambooth.step``), which reads
a few of these settings, and the trainer, which runs that step, both import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from helpers.core.errors import UsageError
from helpers.core.numbers import at_least, finite, positive
from helpers.diffusion.flow import WEIGHTING_SCHEMES
from helpers.diffusion.profiles import profile_for_model
from helpers.diffusion.quantize import read_quantization
from helpers.training.settings import TrainerSettings, flag

SD3_MAX_SEQUENCE_LENGTH = 77  # the SD3 script's default T5 tokens, where the profile has none


@dataclass(kw_only=True)
class TrainConfig(TrainerSettings):
    """The DreamBooth trainer's settings; names follow diffusers' train_dreambooth.py flags."""

    instance_data_dir: str = field(metadata={"help": "folder with the subject's photos"})
    instance_prompt: str = field(metadata={"help": "prompt with the identifier, e.g. 'a photo of sks dog'"})
    learning_rate: float | None = flag(
        None, "default: the model's own, diffusers' 5e-6 for SD 1.x and 1e-4 for the toy (helpers.diffusion.profiles)"
    )
    class_data_dir: str | None = flag(
        None,
        "class images: any you put there are used, and the model draws the rest up to --num_class_images "
        "(cached with a manifest)",
    )
    class_prompt: str | None = flag(None, "prompt for the class, e.g. 'a photo of dog'")
    with_prior_preservation: bool = flag(False, "add the prior-preservation loss on class images")
    prior_loss_weight: float = 1.0
    num_class_images: int = 100
    class_guidance_scale: float | None = flag(
        None,
        "guidance scale for drawing the class images (default: the profile's; SD 1.x: its sampling guidance, "
        "as diffusers' script draws them; the toy: 1.0). Class images drawn with guidance g teach the class "
        "prompt the guided look, and sampling the fine-tune with guidance g again compounds it to about g x g; "
        "1.0 draws the model's own class, which the prior loss then keeps as it was (notebook 05)",
    )
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
    validation_prompt: str | None = flag(
        None, "draw samples of this prompt every --validation_steps steps and after the last (into validation/)"
    )
    num_validation_images: int = 4
    validation_steps: int = flag(100, "how often the --validation_prompt samples are drawn")
    sample_batch_size: int | None = flag(
        None, "class images drawn at once (default: 8 at SD 1.x's 512 px, up to 32 for smaller models)"
    )
    weighting_scheme: str | None = flag(
        None,
        "flow-matching models: how timesteps are drawn and the loss weighted, as diffusers' SD3 script: "
        f"{', '.join(WEIGHTING_SCHEMES)} (default logit_normal)",
    )
    logit_mean: float | None = flag(None, "flow-matching models: the logit-normal's mean (default 0.0)")
    logit_std: float | None = flag(None, "flow-matching models: the logit-normal's standard deviation (default 1.0)")
    mode_scale: float | None = flag(None, "flow-matching models: the mode scheme's scale (default 1.29)")
    precondition_outputs: int | None = flag(
        None,
        "flow-matching models: 1 (default, as diffusers' SD3 script) turns the output into a guess of the image, "
        "x_t - sigma v, and regresses the image (the velocity loss times sigma squared); 0 regresses the velocity",
    )
    max_sequence_length: int | None = flag(
        None, "flow-matching models: T5 tokens per prompt (default: the profile's; 0 on the toy, which has no T5)"
    )
    lora_layers: str | None = flag(
        None,
        "flow-matching models, with --lora_rank: the transformer's modules to adapt, comma-separated "
        "(default: every attention projection of the joint blocks, as diffusers' SD3 script)",
    )
    lora_blocks: str | None = flag(
        None, "flow-matching models, with --lora_rank: adapt only these transformer blocks, e.g. 0,1,2"
    )
    bnb_quantization_config_path: str | None = flag(
        None,
        "flow-matching models, with --lora_rank: a BitsAndBytesConfig JSON file (configs/nf4.json) that stores the "
        "frozen transformer in 4 bits (QLoRA, as diffusers' newer DreamBooth scripts read it); the adapters stay fp32",
    )
    cache_latents: bool = flag(
        False,
        "flow-matching models: draw each step's latents from the VAE's cached distribution (mean + std x noise), "
        "as diffusers' SD3 script does with this flag; without it the cached mean, the same every step (the VAE "
        "runs once before the first step either way)",
    )
    without_t5: bool = flag(
        False,
        "flow-matching models: load no T5 encoder (the pipeline's text_encoder_3=None; its tokens are zeros), "
        "as the sd35 profile samples on a 15 GB T4",
    )
    output_kohya_format: bool = flag(
        False, "with --lora_rank, also write the LoRA in kohya's format for A1111/ComfyUI (helpers.export_lora)"
    )
    push_to_hub: bool = flag(False, "upload the model (weights, configs, card, samples) to a private hub repository")
    hub_model_id: str | None = flag(None, "the hub repository to push to (default: the output folder's name)")
    hub_token: str | None = field(default=None, repr=False, metadata={"help": "a hub token (default: `hf auth login`)"})
    hub_public: bool = flag(False, "with --push_to_hub, create the hub repository public (default: private)")

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
        if self.output_kohya_format and self.lora_rank is None:
            raise UsageError("--output_kohya_format exports a LoRA: it needs --lora_rank")
        if self.validation_steps < 1 or self.num_validation_images < 1:
            raise UsageError(
                f"--validation_steps and --num_validation_images must be at least 1 (got {self.validation_steps} "
                f"and {self.num_validation_images}); to draw no samples, leave out --validation_prompt"
            )
        at_least("--prior_loss_weight", self.prior_loss_weight, 0, "pass 1.0, as diffusers does, or 0 to turn it off")
        if self.with_prior_preservation:
            at_least("--num_class_images", self.num_class_images, 1, "pass how many class images to use, e.g. 100")
        at_least("--class_guidance_scale", self.class_guidance_scale, 1.0, "pass 1.0 to draw without guidance")
        at_least("--sample_batch_size", self.sample_batch_size, 1, "pass how many class images to draw at once, e.g. 8")
        positive("--text_encoder_lr", self.text_encoder_lr, "pass a positive number, or omit it for --learning_rate")
        positive("--lora_alpha", self.lora_alpha, "pass a positive number, or omit it for a scale of 1")
        positive("--snr_gamma", self.snr_gamma, "pass e.g. 5.0, the paper's choice, or leave it out for the plain loss")
        self._check_flow()

    def _check_flow(self) -> None:
        if self.weighting_scheme is not None and self.weighting_scheme not in WEIGHTING_SCHEMES:
            raise UsageError(
                f"--weighting_scheme {self.weighting_scheme!r} is unknown: pass one of {', '.join(WEIGHTING_SCHEMES)}"
            )
        if self.precondition_outputs not in (None, 0, 1):
            raise UsageError(f"--precondition_outputs must be 0 or 1 (got {self.precondition_outputs})")
        finite("--logit_mean", self.logit_mean, "pass e.g. 0.0, the SD3 script's")
        positive("--logit_std", self.logit_std, "pass a positive spread, e.g. 1.0")
        finite("--mode_scale", self.mode_scale, "pass e.g. 1.29, the SD3 script's")
        at_least("--max_sequence_length", self.max_sequence_length, 0, "pass 77 (the SD3 script's) or 256")
        if (self.lora_layers or self.lora_blocks) and self.lora_rank is None:
            raise UsageError("--lora_layers and --lora_blocks choose where LoRA goes: they need --lora_rank")
        if self.bnb_quantization_config_path:
            if self.lora_rank is None:
                raise UsageError("a 4-bit base cannot be trained itself: add --lora_rank to train adapters on it")
            read_quantization(self.bnb_quantization_config_path)
        if self.lora_blocks and not all(b.strip().isdigit() for b in self.lora_blocks.split(",")):
            raise UsageError(
                f"--lora_blocks is a comma-separated list of block numbers, e.g. 0,1,2 (got {self.lora_blocks!r})"
            )

    def t5_tokens(self) -> int:
        """The T5 tokens a flow-matching run gives its transformer (zeros without T5), which sampling its result
        must give too: ``--max_sequence_length``, else the model's profile's, else the SD3 script's 77."""
        profile = profile_for_model(self.pretrained_model_name_or_path).max_sequence_length
        return next(n for n in (self.max_sequence_length, profile, SD3_MAX_SEQUENCE_LENGTH) if n is not None)

    def flow_flags(self) -> list[str]:
        """The flow-matching flags this run sets: a run on SD 1.x refuses them."""
        names = ("weighting_scheme", "logit_mean", "logit_std", "mode_scale", "precondition_outputs")
        names += ("max_sequence_length", "lora_layers", "lora_blocks", "bnb_quantization_config_path")
        switches = [f"--{name}" for name in ("cache_latents", "without_t5") if getattr(self, name)]
        return [f"--{name}" for name in names if getattr(self, name) is not None] + switches
