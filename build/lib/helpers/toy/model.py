"""The toy Stable Diffusion: the same four parts as SD 1.5, sized for a laptop CPU.

Every part is the real diffusers / transformers class that SD 1.5 uses, only smaller: a
CLIPTextModel reading the toy BPE vocabulary, an AutoencoderKL that maps 64x64 RGB to 8x16x16
latents (SD 1.5 maps 512x512 to 4x64x64; here the factor is 4 per side, not 8, and the latents
have 8 channels, not 4: as SD 3 and FLUX moved to 16 channels to keep fine detail, 8 channels let
the toy autoencoder keep the toy world's edges and spots, which 4 smeared), a
UNet2DConditionModel with cross-attention only at its lowest-resolution level and middle block
(4x4 latents: three times faster on a CPU than attention at every level, and the toy world's
words are global enough to be read there), and SD's own betas: the final model predicts v on
them rescaled to zero terminal SNR (Lin et al. 2023; SD 2.x's 768-v model was likewise fine-tuned to
predict v from an epsilon model). Everything downstream, the trainer included, runs unchanged on the
real model, which reads its prediction type from its scheduler.

Why the switch: SD 1.x's schedule leaves a trace of the image at its last step (SNR 0.005), and a
toy model trained on it with epsilon prediction learnt to take an object's place from the starting
noise and ignored "on the left" and "on the right" (a third of its samples in the place asked for,
the rate of chance); the toy world's objects are large flat blobs, whose trace in the noise is
strong. With zero terminal SNR the last step holds no trace of the image, and v-prediction's loss
weights the layout's error there by one. Trained so from scratch, the text encoder learnt too little
(a wrong class three samples in four), so the first phase keeps SD 1.x's objective and the second
switches; switching alone took position words from a third to about 40% in a short probe, so the
second phase also gives half of every batch to captions that name a place, at the highest noise
levels (``helpers.toy.pretrain``).
"""

from __future__ import annotations

from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

RESOLUTION = 64
LATENT_SIZE = 16
LATENT_CHANNELS = 8
TEXT_DIM = 96

# SD 1.x's schedule and target (the first UNet phase), and the toy's: the same betas rescaled so that
# the last step is pure noise, with v-prediction (see above).
SD1X_SCHEDULE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    clip_sample=False,
)
SCHEDULE = SD1X_SCHEDULE | dict(rescale_betas_zero_snr=True, prediction_type="v_prediction")
SCHEDULES = {"epsilon": SD1X_SCHEDULE, "v_prediction": SCHEDULE}


def text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_DIM,
        intermediate_size=4 * TEXT_DIM,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=TEXT_DIM,
    )
    return CLIPTextModel(config)


def vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=LATENT_CHANNELS,
        sample_size=RESOLUTION,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        norm_num_groups=8,
    )


def unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        layers_per_block=1,
        block_out_channels=(32, 64, 128),
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=32,
        norm_num_groups=16,
    )


def train_scheduler(prediction_type: str = "v_prediction") -> DDPMScheduler:
    return DDPMScheduler(**SCHEDULES[prediction_type])


def sample_scheduler(prediction_type: str = "v_prediction") -> DDIMScheduler:
    """DDIM as SD 1.x samples, but from the last timestep on ("trailing" spacing) on the zero-SNR
    schedule: "leading" spacing would start where that schedule still expects a trace of an image,
    which pure noise does not hold."""
    spacing = "trailing" if prediction_type == "v_prediction" else "leading"
    return DDIMScheduler(**SCHEDULES[prediction_type], set_alpha_to_one=False, steps_offset=1, timestep_spacing=spacing)
