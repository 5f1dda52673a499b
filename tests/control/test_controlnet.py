"""The ControlNet: built from the base UNet at the base VAE's scale, silent until trained, and refused
(in one line) by a base it was not made for."""

import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionControlNetPipeline, UNet2DConditionModel

from helpers.control import controlnet as cn
from helpers.control import tikz
from helpers.control.planner import RuleBasedPlanner
from helpers.core.errors import UsageError
from helpers.diffusion.profiles import TOY_CONTROLNET


def test_copies_the_unet_encoder_and_starts_with_zero_convolutions(toy_pipe):
    net = cn.build_controlnet(toy_pipe.unet, toy_pipe.vae_scale_factor)
    assert torch.equal(net.conv_in.weight, toy_pipe.unet.conv_in.weight)
    assert torch.equal(net.down_blocks[0].resnets[0].conv1.weight, toy_pipe.unet.down_blocks[0].resnets[0].conv1.weight)
    for name, layer in cn.zero_convolutions(net).items():
        assert not layer.weight.any() and not layer.bias.any(), name


def test_untrained_controlnet_leaves_the_base_model_unchanged(toy_pipe):
    net = cn.build_controlnet(toy_pipe.unet, toy_pipe.vae_scale_factor)
    sketch = tikz.render(RuleBasedPlanner()("a red dog to the left of a blue cup"), size=64)
    cond = torch.from_numpy(np.asarray(sketch, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    latents = torch.randn(1, toy_pipe.unet.config.in_channels, 16, 16, generator=torch.Generator().manual_seed(0))
    text = toy_pipe.text_encoder(
        toy_pipe.tokenizer(["a photo of a dog"], padding="max_length", return_tensors="pt").input_ids
    )[0]
    with torch.no_grad():
        down, mid = net(latents, 500, text, controlnet_cond=cond, return_dict=False)
        assert [tuple(d.shape[-2:]) for d in down][0] == (16, 16) and all(not d.any() for d in down)
        assert not mid.any()
        plain = toy_pipe.unet(latents, 500, text).sample
        guided = toy_pipe.unet(
            latents, 500, text, down_block_additional_residuals=down, mid_block_additional_residual=mid
        ).sample
    assert torch.equal(plain, guided)
    pipe = StableDiffusionControlNetPipeline(**toy_pipe.components, controlnet=net)
    kw = dict(num_inference_steps=5, guidance_scale=4.0, output_type="np")
    base = toy_pipe("a photo of a dog", generator=torch.Generator().manual_seed(1), **kw).images
    controlled = pipe("a photo of a dog", image=sketch, generator=torch.Generator().manual_seed(1), **kw).images
    assert np.array_equal(base, controlled)


def test_the_condition_embedding_follows_the_vaes_downsampling(toy_pipe, sd_folders):
    toy = cn.build_controlnet(toy_pipe.unet, toy_pipe.vae_scale_factor)
    shipped = json.loads((TOY_CONTROLNET / "config.json").read_text())["conditioning_embedding_out_channels"]
    assert toy_pipe.vae_scale_factor == 4 and list(toy.config.conditioning_embedding_out_channels) == shipped
    unet = UNet2DConditionModel.from_pretrained(sd_folders.fp32, subfolder="unet")
    sd = cn.build_controlnet(unet, 8)
    assert tuple(sd.config.conditioning_embedding_out_channels) == (16, 32, 96, 256)
    with torch.no_grad():  # 64 px condition -> the 8 x 8 latent grid of the 64 px SD-shaped model
        assert sd.controlnet_cond_embedding(torch.zeros(1, 3, 64, 64)).shape[-2:] == (8, 8)
        assert toy.controlnet_cond_embedding(torch.zeros(1, 3, 64, 64)).shape[-2:] == (16, 16)
    with pytest.raises(UsageError, match="downsamples 16x.*4x .*and 8x") as err:
        cn.build_controlnet(unet, 16)
    assert "\n" not in str(err.value)


def test_a_controlnet_made_for_another_base_is_refused_in_one_line(sd_folders):
    with pytest.raises(
        UsageError,
        match=r"the ControlNet in .*toy-controlnet was trained for a base with .*"
        r"cross_attention_dim 96.*vae_scale_factor 4, but .*sd-fp32 has .*"
        r"cross_attention_dim 32.*vae_scale_factor 8: train a new one",
    ) as err:
        cn.load_controlnet_pipeline(TOY_CONTROLNET, model=str(sd_folders.fp32))
    assert "\n" not in str(err.value)


def test_a_missing_controlnet_is_one_line_whether_a_folder_or_a_hub_id(tmp_path):
    with pytest.raises(UsageError, match=r"no ControlNet in .*nowhere.* \(no config.json\)"):
        cn.load_controlnet(tmp_path / "nowhere")
    with pytest.raises(UsageError, match="could not load 'someone/no-such-controlnet': .*offline") as err:
        cn.load_controlnet("someone/no-such-controlnet")  # the tests run with HF_HUB_OFFLINE=1
    assert "\n" not in str(err.value)
