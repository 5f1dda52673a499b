"""The embedded toy model is a real StableDiffusionPipeline that loads offline and follows its prompt."""

import json
import subprocess
import sys

import numpy as np
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel

from helpers.core.paths import ROOT
from helpers.diffusion.generate import generate_images
from helpers.diffusion.profiles import TOY_MODEL, choose_profile


def test_loads_with_the_network_off(tmp_path):
    code = (
        "from diffusers import StableDiffusionPipeline as P; p = P.from_pretrained('data/toy-sd'); "
        "print(type(p).__name__, p.unet.config.sample_size, p.vae.config.latent_channels)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["StableDiffusionPipeline", "16", "8"]


def test_is_made_of_the_real_parts_and_stays_small(toy_pipe):
    assert isinstance(toy_pipe, StableDiffusionPipeline)
    assert isinstance(toy_pipe.unet, UNet2DConditionModel) and isinstance(toy_pipe.vae, AutoencoderKL)
    assert isinstance(toy_pipe.text_encoder, CLIPTextModel)
    weights = sum(p.stat().st_size for p in TOY_MODEL.rglob("*.safetensors"))
    assert weights < 25e6
    assert "python -m helpers.pretrain" in (TOY_MODEL / "README.md").read_text()
    assert json.loads((TOY_MODEL / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"


def test_vae_maps_64px_to_8x16x16(toy_pipe):
    import torch

    x = torch.zeros(1, 3, 64, 64)
    assert toy_pipe.vae.encode(x).latent_dist.mean.shape == (1, 8, 16, 16)
    assert toy_pipe.unet.config.in_channels == toy_pipe.unet.config.out_channels == 8


def test_generation_is_seeded_and_prompt_dependent(toy_pipe):
    a = generate_images(toy_pipe, "a photo of a red dog", 2, seed=3, num_inference_steps=8)
    b = generate_images(toy_pipe, "a photo of a red dog", 2, seed=3, num_inference_steps=8)
    c = generate_images(toy_pipe, "a photo of a blue house", 2, seed=3, num_inference_steps=8)
    assert a[0].size == (64, 64)
    assert np.array_equal(np.asarray(a[0]), np.asarray(b[0]))
    assert not np.array_equal(np.asarray(a[0]), np.asarray(a[1]))
    assert np.abs(np.asarray(a[0], float) - np.asarray(c[0], float)).mean() > 5


def test_image_i_does_not_depend_on_batch_size(toy_pipe):
    one = generate_images(toy_pipe, "a photo of a cup", 3, seed=0, num_inference_steps=6, batch_size=1)
    three = generate_images(toy_pipe, "a photo of a cup", 3, seed=0, num_inference_steps=6, batch_size=3)
    assert np.abs(np.asarray(one[2], float) - np.asarray(three[2], float)).max() <= 2


def test_the_toy_profile_is_the_cpu_default(monkeypatch):
    monkeypatch.delenv("COURSE_PROFILE", raising=False)
    profile = choose_profile()
    assert profile.name == "toy" and profile.device == "cpu" and profile.resolution == 64
