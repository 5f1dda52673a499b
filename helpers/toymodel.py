"""The toy Stable Diffusion: the same four parts as SD 1.5, sized for a laptop CPU.

Every part is the real diffusers / transformers class that SD 1.5 uses, only smaller: a
CLIPTextModel reading the toy BPE vocabulary, an AutoencoderKL that maps 64x64 RGB to 8x16x16
latents (SD 1.5 maps 512x512 to 4x64x64; here the factor is 4 per side, not 8, and the latents
have 8 channels, not 4: as SD 3 and FLUX moved to 16 channels to keep fine detail, 8 channels let
the toy autoencoder keep the toy world's edges and spots, which 4 smeared), a
UNet2DConditionModel with cross-attention only at its lowest-resolution level and middle block
(4x4 latents: three times faster on a CPU than attention at every level, and the toy world's
words are global enough to be read there), and SD's own noise schedule. Everything downstream, the
trainer included, therefore runs unchanged on the real model.
"""

from __future__ import annotations

from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

RESOLUTION = 64
LATENT_SIZE = 16
LATENT_CHANNELS = 8
TEXT_DIM = 96

# SD 1.x's noise schedule, so that the schedule lessons show the numbers learners meet in practice.
SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                prediction_type="epsilon", clip_sample=False)


def text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_DIM, intermediate_size=4 * TEXT_DIM, num_hidden_layers=3,
        num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length, hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        projection_dim=TEXT_DIM,
    )
    return CLIPTextModel(config)


def vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS, sample_size=RESOLUTION,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=8,
    )


def unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, layers_per_block=1,
        block_out_channels=(32, 64, 128),
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_DIM, attention_head_dim=32, norm_num_groups=16,
    )


def train_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**SCHEDULE)


def sample_scheduler() -> DDIMScheduler:
    return DDIMScheduler(**SCHEDULE, set_alpha_to_one=False, steps_offset=1)
