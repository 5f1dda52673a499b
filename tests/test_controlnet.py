"""The toy ControlNet: built from the toy UNet, silent until trained."""

import numpy as np
import torch
from diffusers import StableDiffusionControlNetPipeline

from helpers import controlnet as cn
from helpers import tikz
from helpers.planner import RuleBasedPlanner


def test_copies_the_unet_encoder_and_starts_with_zero_convolutions(toy_pipe):
    net = cn.build_controlnet(toy_pipe.unet)
    assert torch.equal(net.conv_in.weight, toy_pipe.unet.conv_in.weight)
    assert torch.equal(net.down_blocks[0].resnets[0].conv1.weight, toy_pipe.unet.down_blocks[0].resnets[0].conv1.weight)
    for name, layer in cn.zero_convolutions(net).items():
        assert not layer.weight.any() and not layer.bias.any(), name


def test_untrained_controlnet_leaves_the_base_model_unchanged(toy_pipe):
    net = cn.build_controlnet(toy_pipe.unet)
    sketch = tikz.render(RuleBasedPlanner()("a red dog to the left of a blue cup"), size=64)
    cond = torch.from_numpy(np.asarray(sketch, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    text = toy_pipe.text_encoder(toy_pipe.tokenizer(["a photo of a dog"], padding="max_length",
                                                    return_tensors="pt").input_ids)[0]
    with torch.no_grad():
        down, mid = net(latents, 500, text, controlnet_cond=cond, return_dict=False)
        assert [tuple(d.shape[-2:]) for d in down][0] == (16, 16) and all(not d.any() for d in down)
        assert not mid.any()
        plain = toy_pipe.unet(latents, 500, text).sample
        guided = toy_pipe.unet(latents, 500, text, down_block_additional_residuals=down,
                               mid_block_additional_residual=mid).sample
    assert torch.equal(plain, guided)
    pipe = StableDiffusionControlNetPipeline(**toy_pipe.components, controlnet=net)
    kw = dict(num_inference_steps=5, guidance_scale=4.0, output_type="np")
    base = toy_pipe("a photo of a dog", generator=torch.Generator().manual_seed(1), **kw).images
    controlled = pipe("a photo of a dog", image=sketch, generator=torch.Generator().manual_seed(1), **kw).images
    assert np.array_equal(base, controlled)
