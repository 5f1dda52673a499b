"""The flow-matching objective shared by the toy's pretraining and DreamBooth (helpers.diffusion.flow)."""

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.training_utils import compute_loss_weighting_for_sd3

from helpers.diffusion import flow


def _draw(n: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x0, noise, output = (torch.randn(n, 4, 8, 8, generator=g) for _ in range(3))
    sigmas = torch.rand(n, generator=g)
    return x0, noise, output, sigmas


def test_schedule_at_takes_the_training_schedule_at_u_times_1000_and_u_1_is_the_last_step():
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    timesteps, sigmas = flow.schedule_at(sched, torch.tensor([0.0, 0.2505, 1.0]))
    assert timesteps.tolist() == [sched.timesteps[0], sched.timesteps[250], sched.timesteps[999]]
    assert sigmas.tolist() == [sched.sigmas[0], sched.sigmas[250], sched.sigmas[999]]
    assert sigmas[0] == pytest.approx(1.0) and sigmas[1] > 0.8  # shift 3 keeps a quarter of the way very noisy


def test_the_path_is_the_straight_line_between_the_latent_and_the_noise():
    x0, noise, _, sigmas = _draw()
    xt = flow.on_path(x0, noise, sigmas)
    s = sigmas.view(-1, 1, 1, 1)
    assert torch.allclose(xt, (1 - s) * x0 + s * noise)
    assert torch.equal(flow.on_path(x0, noise, torch.zeros(6)), x0)
    assert torch.equal(flow.on_path(x0, noise, torch.ones(6)), noise)


def test_preconditioned_outputs_give_the_velocity_loss_times_sigma_squared():
    x0, noise, output, sigmas = _draw()
    xt = flow.on_path(x0, noise, sigmas)
    velocity = flow.sample_losses(*flow.prediction_and_target(output, xt, x0, noise, sigmas), sigmas, "logit_normal")
    pred, target = flow.prediction_and_target(output, xt, x0, noise, sigmas, precondition_outputs=True)
    assert torch.equal(target, x0)
    assert torch.allclose(pred, output * (-sigmas.view(-1, 1, 1, 1)) + xt)  # the SD3 script's own line
    precond = flow.sample_losses(pred, target, sigmas, "logit_normal")
    assert torch.allclose(precond, sigmas**2 * velocity, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("scheme", ["logit_normal", "sigma_sqrt", "cosmap"])
def test_each_sample_is_weighted_by_the_sd3_scripts_weighting(scheme):
    x0, noise, output, sigmas = _draw()
    losses = flow.sample_losses(output, noise - x0, sigmas, scheme)
    weighting = compute_loss_weighting_for_sd3(scheme, sigmas)
    assert losses.shape == (6,)
    assert torch.allclose(losses, weighting * ((output - (noise - x0)) ** 2).mean(dim=(1, 2, 3)), rtol=1e-5)


def test_pixel_weights_of_one_change_nothing_and_others_take_a_weighted_mean():
    x0, noise, output, sigmas = _draw()
    plain = flow.sample_losses(output, noise - x0, sigmas, "logit_normal")
    assert torch.allclose(flow.sample_losses(output, noise - x0, sigmas, "logit_normal", torch.ones(6, 1, 8, 8)), plain)
    left = torch.zeros(6, 1, 8, 8)
    left[..., :4] = 1
    squared = (output - (noise - x0)) ** 2
    expected = squared[..., :4].mean(dim=(1, 2, 3))
    assert torch.allclose(flow.sample_losses(output, noise - x0, sigmas, "logit_normal", left), expected, rtol=1e-5)


def test_u_follows_the_weighting_scheme_and_the_generator():
    logit = flow.FlowObjective().draw_u(4000, torch.Generator().manual_seed(0))
    again = flow.FlowObjective().draw_u(4000, torch.Generator().manual_seed(0))
    uniform = flow.FlowObjective("cosmap").draw_u(4000, torch.Generator().manual_seed(0))
    assert torch.equal(logit, again) and ((0 < logit) & (logit < 1)).all()
    assert (logit - 0.5).abs().mean() < (uniform - 0.5).abs().mean()  # logit-normal gathers u about the middle
