"""ControlNet's public step: residuals that start at zero, added where diffusers' UNet adds them, and a loss by
hand that is the trainer's first logged step."""

import pytest
import torch
from diffusers import UNet2DConditionModel

from helpers.control.controlnet import build_controlnet, load_controlnet
from helpers.control.step import controlnet_step, draw_batch, residuals, unet_with_residuals
from helpers.control.trainer import ControlNetConfig, ControlNetTrainer
from helpers.diffusion.profiles import TOY_CONTROLNET, TOY_MODEL
from helpers.training.loop import denoising_target, step_generator


def _trainer(data_dir, out, **kw) -> ControlNetTrainer:
    base = dict(
        train_data_dir=str(data_dir),
        output_dir=str(out),
        max_train_steps=1,
        train_batch_size=4,
        progress=False,
        checkpointing_steps=0,
        proportion_empty_prompts=0.5,
    )
    return ControlNetTrainer(ControlNetConfig(**base | kw))


def _inputs(trainer):
    data = trainer.prepare()
    batch = draw_batch(data, 4, 0.5, step_generator(0, 0, 0, 0), 1000)
    noisy = trainer.noise_scheduler.add_noise(batch.latents, batch.noise, batch.timesteps)
    return batch, noisy


def test_an_untrained_controlnet_adds_exact_zeros_and_the_step_by_hand_is_the_trainers(data_dir, tmp_path):
    trainer = _trainer(data_dir, tmp_path / "out")
    batch, noisy = _inputs(trainer)
    with torch.no_grad():
        down, mid = residuals(trainer.controlnet, noisy, batch.timesteps, batch.embeddings, batch.conditions)
        assert len(down) == 1 + sum(len(b.resnets) + (b.downsamplers is not None) for b in trainer.unet.down_blocks)
        assert all(torch.count_nonzero(r) == 0 for r in [*down, mid])
        plain = trainer.unet(noisy, batch.timesteps, batch.embeddings).sample
        by_hand = unet_with_residuals(trainer.unet, noisy, batch.timesteps, batch.embeddings, down, mid)
        loss, _ = controlnet_step(
            trainer.models, trainer.data, trainer.noise_scheduler, 4, 0.5, step_generator(0, 0, 0, 0)
        )
    torch.testing.assert_close(by_hand, plain, rtol=1e-5, atol=1e-6)
    target = denoising_target(trainer.noise_scheduler, batch.latents, batch.noise, batch.timesteps)
    assert loss.item() == pytest.approx(((by_hand - target) ** 2).mean().item(), rel=1e-5)
    first = trainer.train().history[0]  # the same trainer: its first step saw the base models
    assert first["step"] == 1 and first["loss"] == pytest.approx(loss.item(), rel=1e-5)


def test_some_captions_are_blanked_for_guidance(data_dir, tmp_path):
    trainer = _trainer(data_dir, tmp_path / "out")
    batch, _ = _inputs(trainer)
    blank = [torch.equal(e, trainer.data.empty[0]) for e in batch.embeddings]
    assert any(blank) and not all(blank)  # half of them, drawn by the step's generator (seed 0: both kinds)
    kept = [i for i, b in enumerate(blank) if not b]
    assert torch.equal(batch.embeddings[kept], trainer.data.embeddings[batch.index[kept]])


@pytest.mark.parametrize("model", ["toy", "sd-shaped"])
def test_the_residuals_by_hand_are_where_diffusers_adds_them(data_dir, sd_folders, model):
    """With a trained ControlNet (non-zero residuals) on the toy, and random ones on the SD 1.x-shaped UNet."""
    torch.manual_seed(0)
    if model == "toy":  # 8 latent channels, 4 pixels per latent
        unet = UNet2DConditionModel.from_pretrained(TOY_MODEL, subfolder="unet")
        controlnet, channels, scale = load_controlnet(TOY_CONTROLNET), 8, 4
    else:  # SD 1.x's 4 channels and 8 pixels per latent
        unet = UNet2DConditionModel.from_pretrained(sd_folders.fp32, subfolder="unet")
        controlnet, channels, scale = build_controlnet(unet, 8), 4, 8
    noisy = torch.randn(2, channels, 16, 16)
    t = torch.tensor([10, 700])
    emb = torch.randn(2, 7, unet.config.cross_attention_dim)
    cond = torch.rand(2, 3, 16 * scale, 16 * scale)
    with torch.no_grad():
        down, mid = residuals(controlnet, noisy, t, emb, cond)
        if model != "toy":  # an untrained one adds zeros: give it something to add
            down, mid = [torch.randn_like(d) for d in down], torch.randn_like(mid)
        assert any(torch.count_nonzero(r) for r in down)
        diffusers_way = unet(noisy, t, emb, down_block_additional_residuals=down, mid_block_additional_residual=mid)
        by_hand = unet_with_residuals(unet, noisy, t, emb, down, mid)
        plain = unet(noisy, t, emb).sample
    torch.testing.assert_close(by_hand, diffusers_way.sample, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(by_hand, plain, atol=1e-3)
