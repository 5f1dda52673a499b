"""DreamBooth's step on a flow-matching transformer (helpers.dreambooth.flow_step): the loss of diffusers'
train_dreambooth_lora_sd3.py, redone by hand, on the toy flow model and on the SD 3.5-shaped fixture."""

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

from helpers.core.images import load_image_folder
from helpers.core.paths import ROOT
from helpers.diffusion.flow import FlowObjective
from helpers.diffusion.latents import encode, preprocess
from helpers.diffusion.profiles import load_pipeline
from helpers.dreambooth import flow_step
from helpers.toy import flow_model

INSTANCE, CLASS = "a photo of sks dog", "a photo of dog"


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline("toy-flow")


@pytest.fixture(scope="module")
def images():
    photos = load_image_folder(ROOT / "data" / "subjects" / "toy_dog")
    return photos[:3], photos[3:5]  # three photos; two stand in for class images


def _data(pipe, images, prior: bool = True, max_sequence_length: int = flow_model.MAX_SEQUENCE_LENGTH):
    photos, classes = images
    return flow_step.prepare_flow_data(
        pipe, photos, [INSTANCE] * len(photos), classes if prior else [], CLASS, 64, max_sequence_length
    )


def _scheduler(pipe):
    return FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)


def test_prepared_data_is_what_the_pipeline_feeds_its_transformer(pipe, images):
    data = _data(pipe, images)
    embeds, _, pooled, _ = pipe.encode_prompt(
        [CLASS], None, None, do_classifier_free_guidance=False, max_sequence_length=0
    )
    assert data.instance_latents.shape == (3, 8, 16, 16) and data.class_latents.shape == (2, 8, 16, 16)
    assert torch.equal(data.class_latents, encode(pipe.vae, images[1], 64))
    assert torch.equal(data.class_embeds, embeds) and torch.equal(data.class_pooled, pooled)
    assert data.instance_embeds.shape == (3, *embeds.shape[1:]) and data.instance_pooled.shape == (3, 192)
    assert not torch.equal(data.instance_embeds[:1], data.class_embeds)  # "sks" is a token of its own


@pytest.mark.parametrize("precondition", [False, True])
def test_the_step_is_the_sd3_scripts_loss_with_prior_preservation_by_hand(pipe, images, precondition):
    data, sched, objective = _data(pipe, images), _scheduler(pipe), FlowObjective()
    with torch.no_grad():
        loss, parts = flow_step.flow_dreambooth_step(
            pipe.transformer, data, sched, objective, 2, torch.Generator().manual_seed(5), 0.7, precondition
        )
    g = torch.Generator().manual_seed(5)  # by hand, in the step's order: photos, class images, u, noise
    idx, cls = torch.randint(0, 3, (2,), generator=g), torch.randint(0, 2, (2,), generator=g)
    x0 = torch.cat([data.instance_latents[idx], data.class_latents[cls]])
    u = compute_density_for_timestep_sampling("logit_normal", 4, 0.0, 1.0, 1.29, generator=g)
    noise = torch.randn(x0.shape, generator=g)
    index = (u * 1000).long()
    timesteps, sigmas = sched.timesteps[index], sched.sigmas[index].view(-1, 1, 1, 1)
    noisy = (1 - sigmas) * x0 + sigmas * noise
    embeds = torch.cat([data.instance_embeds[idx], data.class_embeds.expand(2, -1, -1)])
    pooled = torch.cat([data.instance_pooled[idx], data.class_pooled.expand(2, -1)])
    with torch.no_grad():
        pred = pipe.transformer(
            hidden_states=noisy, timestep=timesteps, encoder_hidden_states=embeds, pooled_projections=pooled
        ).sample
    if precondition:  # the script's lines
        pred, target = pred * (-sigmas) + noisy, x0
    else:
        target = noise - x0
    weighting = compute_loss_weighting_for_sd3("logit_normal", sigmas)
    pred, pred_prior = pred.chunk(2)
    target, target_prior = target.chunk(2)
    weighting, weighting_prior = weighting.chunk(2)
    prior = ((weighting_prior * (pred_prior - target_prior) ** 2).reshape(2, -1)).mean(1).mean()
    instance = ((weighting * (pred - target) ** 2).reshape(2, -1)).mean(1).mean()
    assert torch.allclose(parts["instance_loss"], instance, rtol=1e-5)
    assert torch.allclose(parts["prior_loss"], prior, rtol=1e-5)
    assert torch.allclose(loss, instance + 0.7 * prior, rtol=1e-5)


def test_without_class_images_the_batch_is_the_photos_and_the_prior_half_is_zero(pipe, images):
    data = _data(pipe, images, prior=False)
    batch = flow_step.draw_flow_batch(data, _scheduler(pipe), FlowObjective(), 2, torch.Generator().manual_seed(0))
    assert batch.latents.shape[0] == 2 and batch.num_instance == 2 and len(batch.class_index) == 0
    with torch.no_grad():
        loss, parts = flow_step.flow_dreambooth_step(
            pipe.transformer, data, _scheduler(pipe), FlowObjective(), 2, torch.Generator().manual_seed(0)
        )
    assert parts["prior_loss"].item() == 0.0 and torch.equal(loss, parts["instance_loss"])


def test_one_generator_draws_one_batch_and_the_weighting_scheme_moves_the_timesteps(pipe, images):
    data, sched = _data(pipe, images), _scheduler(pipe)
    draws = [
        flow_step.draw_flow_batch(data, sched, FlowObjective(scheme), 64, torch.Generator().manual_seed(seed))
        for scheme, seed in (("logit_normal", 1), ("logit_normal", 1), ("logit_normal", 2), ("mode", 1))
    ]
    assert torch.equal(draws[0].noise, draws[1].noise) and torch.equal(draws[0].sigmas, draws[1].sigmas)
    assert not torch.equal(draws[0].sigmas, draws[2].sigmas)
    assert not torch.equal(draws[0].sigmas, draws[3].sigmas)
    assert ((draws[0].sigmas >= 0) & (draws[0].sigmas <= 1)).all()


def test_cache_latents_draws_each_row_from_its_latent_distribution_after_the_usual_draws(pipe, images):
    photos, classes = images
    args = (pipe, photos, [INSTANCE] * 3, classes, CLASS, 64, 0)
    mean = flow_step.prepare_flow_data(*args)
    sampled = flow_step.prepare_flow_data(*args, flow_step.Augment(sample=True))
    assert mean.instance_latent_std is None and torch.equal(sampled.instance_latents, mean.instance_latents)
    with torch.no_grad():
        dist = pipe.vae.encode(torch.stack([preprocess(p, 64) for p in photos])).latent_dist
    torch.testing.assert_close(sampled.instance_latent_std, dist.std * pipe.vae.config.scaling_factor)
    sched, objective = _scheduler(pipe), FlowObjective()
    plain = flow_step.draw_flow_batch(mean, sched, objective, 2, torch.Generator().manual_seed(3))
    drawn = flow_step.draw_flow_batch(sampled, sched, objective, 2, torch.Generator().manual_seed(3))
    assert torch.equal(plain.noise, drawn.noise) and torch.equal(plain.sigmas, drawn.sigmas)  # same draws first
    replay = torch.Generator().manual_seed(3)
    flow_step.draw_flow_batch(mean, sched, objective, 2, replay)  # the same draws, then one more for the sample
    std = torch.cat([sampled.instance_latent_std[drawn.instance_index], sampled.class_latent_std[drawn.class_index]])
    torch.testing.assert_close(drawn.latents, plain.latents + std * torch.randn(plain.latents.shape, generator=replay))


def test_photos_are_flipped_and_cropped_once_before_the_vae_as_the_sd3_scripts_dataset_does(pipe, images):
    import random

    photos = [p.resize((96, 64)) for p in images[0]]  # wider than tall: a random crop has room to move
    augment = flow_step.Augment(center_crop=False, random_flip=True, seed=5)
    data = flow_step.prepare_flow_data(pipe, photos, [INSTANCE] * 3, [], CLASS, 64, 0, augment)
    rng = random.Random(5)
    pixels = torch.stack([preprocess(p, 64, False, rng, True) for p in photos])
    with torch.no_grad():
        want = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
    torch.testing.assert_close(data.instance_latents, want)
    assert not torch.equal(data.instance_latents, encode(pipe.vae, photos, 64))  # not the plain centre crops


def _clip_grads(pipe, data, batch) -> list[torch.Tensor]:
    """The encodings of ``batch`` through the CLIP encoders by hand, against the cache; their gradients."""
    clips = [pipe.text_encoder, pipe.text_encoder_2]
    for clip in clips:
        clip.requires_grad_(True)
        clip.zero_grad()
    cached = flow_step.batch_condition(data, batch)
    fresh = flow_step.batch_condition(data, batch, ([pipe.tokenizer, pipe.tokenizer_2], clips))
    for a, b in zip(fresh, cached):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    (fresh[0].sum() + fresh[1].sum()).backward()
    grads = [p.grad for clip in clips for p in clip.parameters() if p.grad is not None]
    for clip in clips:
        clip.requires_grad_(False)
    return grads


def test_the_clip_encodings_by_hand_are_the_cached_ones_and_carry_gradients(pipe, images):
    data = _data(pipe, images)
    batch = flow_step.draw_flow_batch(data, _scheduler(pipe), FlowObjective(), 2, torch.Generator().manual_seed(1))
    features, pooled = flow_step.clip_encodings([pipe.tokenizer, pipe.tokenizer_2], [pipe.text_encoder] * 2, [CLASS])
    width = pipe.text_encoder.config.hidden_size
    assert features.shape == (1, pipe.tokenizer.model_max_length, 2 * width) and torch.equal(
        features[..., :width], features[..., width:]
    )
    grads = _clip_grads(pipe, data, batch)
    assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_on_the_sd35_shaped_model_the_trained_clips_sit_before_the_cached_t5_tokens(sd3_folders, images):
    pipe = StableDiffusion3Pipeline.from_pretrained(sd3_folders.fp32)
    data = _data(pipe, images, max_sequence_length=16)
    batch = flow_step.draw_flow_batch(data, _scheduler(pipe), FlowObjective(), 1, torch.Generator().manual_seed(0))
    features, _ = flow_step.clip_encodings([pipe.tokenizer, pipe.tokenizer_2], [pipe.text_encoder] * 2, [CLASS])
    joined = flow_step.with_t5(features, data.class_embeds[:, features.shape[1] :])
    assert joined.shape == data.class_embeds.shape and (joined[..., features.shape[-1] :][:, :77] == 0).all()
    assert _clip_grads(pipe, data, batch)


def test_on_the_sd35_shaped_model_the_step_reads_t5_and_trains_the_transformer(sd3_folders, images):
    pipe = StableDiffusion3Pipeline.from_pretrained(sd3_folders.fp32)
    data = _data(pipe, images, max_sequence_length=16)
    clip_tokens = pipe.tokenizer.model_max_length
    assert data.instance_embeds.shape == (3, clip_tokens + 16, pipe.transformer.config.joint_attention_dim)
    assert data.instance_latents.shape[1] == 16  # SD 3.5's 16-channel latents, shifted then scaled
    photo = preprocess(images[0][0], 64)[None]
    with torch.no_grad():
        raw = pipe.vae.encode(photo).latent_dist.mean
    shifted = (raw - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
    assert pipe.vae.config.shift_factor != 0 and torch.allclose(data.instance_latents[:1], shifted, atol=1e-5)
    pipe.transformer.requires_grad_(True)
    loss, parts = flow_step.flow_dreambooth_step(
        pipe.transformer, data, _scheduler(pipe), FlowObjective(), 1, torch.Generator().manual_seed(0)
    )
    loss.backward()
    assert loss.dtype == torch.float32 and parts["prior_loss"] > 0
    grads = [p.grad for p in pipe.transformer.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
