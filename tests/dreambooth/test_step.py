"""DreamBooth's public step: by hand, it gives the trainer's logged losses, and its parts add up as the paper writes."""

import pytest
import torch
from toy_dreambooth import prior_config, toy_config

from helpers.diffusion.losses import snr_weights
from helpers.dreambooth.step import condition, draw_batch, dreambooth_step
from helpers.dreambooth.trainer import Trainer
from helpers.training.loop import denoising_target, step_generator


def _prior(tmp_path, **kw):
    return prior_config(tmp_path, logging_steps=1, max_train_steps=2, **kw)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"prior_loss_weight": 2.5, "snr_gamma": 5.0, "offset_noise": True},
        {"random_flip": True, "train_text_encoder": True},  # latents and prompts encoded every step
    ],
    ids=["recipe", "weighted", "augmented"],
)
def test_the_step_by_hand_is_the_trainers_first_logged_step(tmp_path, kw):
    config = _prior(tmp_path, **kw)
    by_hand = Trainer(config)  # the base model, before any step
    data = by_hand.prepare()
    with torch.no_grad():
        loss, parts = dreambooth_step(by_hand.models, data, by_hand.noise_scheduler, config, step_generator(0, 0, 0, 0))
    first = Trainer(config).train().history[0]
    assert first["step"] == 1
    for name, value in ({"loss": loss} | parts).items():
        assert value.item() == pytest.approx(first[name], rel=1e-5), name
    assert loss.item() == pytest.approx(
        parts["instance_loss"].item() + config.prior_loss_weight * parts["prior_loss"].item()
    )


def test_a_batch_is_the_photos_then_as_many_class_images_each_with_its_prompt(tmp_path):
    config = _prior(tmp_path)
    trainer = Trainer(config)
    data = trainer.prepare()
    scheduler = trainer.noise_scheduler
    batch = draw_batch(data, trainer.vae, 2, step_generator(0, 0, 0, 0), scheduler.config.num_train_timesteps)
    again = draw_batch(data, trainer.vae, 2, step_generator(0, 0, 0, 0), scheduler.config.num_train_timesteps)
    assert torch.equal(batch.latents, again.latents) and torch.equal(batch.timesteps, again.timesteps)
    assert batch.num_instance == 2 and len(batch.class_index) == 2
    assert batch.latents.shape == (4, *data.instance_latents.shape[1:])
    assert torch.equal(batch.latents[:2], data.instance_latents[batch.instance_index])
    assert torch.equal(batch.latents[2:], data.class_latents[batch.class_index])
    cond = condition(data, trainer.text_encoder, batch)
    assert torch.equal(cond[2], data.class_emb[0]) and torch.equal(cond[0], data.instance_emb[batch.instance_index[0]])

    # the two halves, written out: a mean squared error over each half's rows, weighted by min-SNR per row
    with torch.no_grad():
        noisy = scheduler.add_noise(batch.latents, batch.noise, batch.timesteps)
        pred = trainer.unet(noisy, batch.timesteps, cond).sample
    target = denoising_target(scheduler, batch.latents, batch.noise, batch.timesteps)
    w = snr_weights(scheduler, batch.timesteps, 5.0)
    rows = ((pred - target) ** 2).mean(dim=(1, 2, 3)) * w
    weighted = Trainer(_prior(tmp_path / "w", snr_gamma=5.0, prior_loss_weight=0.5))
    with torch.no_grad():
        loss, parts = dreambooth_step(trainer.models, data, scheduler, weighted.config, step_generator(0, 0, 0, 0))
    assert parts["instance_loss"].item() == pytest.approx(rows[:2].mean().item(), rel=1e-5)
    assert parts["prior_loss"].item() == pytest.approx(rows[2:].mean().item(), rel=1e-5)
    assert loss.item() == pytest.approx(rows[:2].mean().item() + 0.5 * rows[2:].mean().item(), rel=1e-5)


def test_without_prior_preservation_a_batch_has_no_class_rows(tmp_path):
    config = toy_config(tmp_path / "out", train_batch_size=3)
    trainer = Trainer(config)
    data = trainer.prepare()
    batch = draw_batch(data, trainer.vae, 3, step_generator(0, 0, 0, 0), 1000)
    assert batch.latents.shape[0] == 3 and len(batch.class_index) == 0 and data.class_ids is None
    with torch.no_grad():
        _, parts = dreambooth_step(trainer.models, data, trainer.noise_scheduler, config, step_generator(0, 0, 0, 0))
    assert parts["prior_loss"].item() == 0
