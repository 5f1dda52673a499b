"""ControlNet for the toy model: a trainable copy of the UNet's encoder that reads a structure image.

ControlNet (Zhang et al., 2023) copies the frozen UNet's down blocks and middle block, feeds the
copy the noisy latents plus an embedding of the condition image (edges, a sketch, a layout), and
adds the copy's features back into the frozen UNet through **zero convolutions**: 1x1 convolutions
whose weights and biases start at zero. At step 0 the ControlNet therefore changes nothing, and
training starts from exactly the base model's behaviour.
"""

from __future__ import annotations

from diffusers import ControlNetModel, UNet2DConditionModel

# The condition image enters at full resolution and is brought down to the latent size by a small
# convolutional embedding: two stride-2 steps take the toy's 64 px to its 16 x 16 latents (SD 1.5
# uses three, (16, 32, 96, 256), for 512 px -> 64 x 64).
TOY_CONDITIONING_CHANNELS = (16, 32, 32)


def build_controlnet(unet: UNet2DConditionModel,
                     conditioning_channels: tuple[int, ...] = TOY_CONDITIONING_CHANNELS) -> ControlNetModel:
    """A ControlNet initialised from ``unet``'s encoder weights, its zero convolutions at zero."""
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=conditioning_channels)


def zero_convolutions(controlnet: ControlNetModel) -> dict[str, object]:
    """The layers through which the ControlNet speaks to the UNet (and the embedding's last conv)."""
    layers = {f"controlnet_down_blocks.{i}": m for i, m in enumerate(controlnet.controlnet_down_blocks)}
    layers["controlnet_mid_block"] = controlnet.controlnet_mid_block
    layers["controlnet_cond_embedding.conv_out"] = controlnet.controlnet_cond_embedding.conv_out
    return layers
