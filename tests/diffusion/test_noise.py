import pytest
import torch
from diffusers import DDPMScheduler

from helpers.diffusion import noise
from helpers.toy.model import SCHEDULE, SD1X_SCHEDULE


@pytest.fixture(scope="module")
def sched():
    """SD 1.x's schedule: the epsilon formulas below divide by alpha_t, which is 0 at a zero-SNR last step."""
    return DDPMScheduler(**SD1X_SCHEDULE)


def test_closed_form_equals_diffusers_add_noise(sched):
    torch.manual_seed(0)
    x0, eps = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8)
    t = torch.tensor([0, 10, 500, 999])
    assert torch.allclose(noise.add_noise(x0, eps, t, sched.alphas_cumprod), sched.add_noise(x0, eps, t), atol=1e-6)


def test_pair_has_the_forward_chain_statistics(sched):
    ab = sched.alphas_cumprod
    x0 = torch.full((200_000,), 0.8)
    x_prev, x_t = noise.noisy_pair(x0, 300, ab, torch.Generator().manual_seed(0))
    assert x_t.mean().item() == pytest.approx(ab[300].sqrt().item() * 0.8, abs=5e-3)
    assert x_t.var().item() == pytest.approx(1 - ab[300].item(), abs=5e-3)
    assert x_prev.mean().item() == pytest.approx(ab[299].sqrt().item() * 0.8, abs=5e-3)
    with pytest.raises(ValueError, match="at least 1"):
        noise.noisy_pair(x0, 0, ab)


def test_posterior_mean_two_ways_and_the_weight(sched):
    ab = sched.alphas_cumprod
    torch.manual_seed(1)
    x0, eps, eps_hat = torch.randn(3, 16), torch.randn(3, 16), torch.randn(3, 16)
    for t in (1, 50, 400, 999):
        xt = noise.add_noise(x0, eps, t, ab)
        assert torch.allclose(
            noise.posterior_mean(x0, xt, t, ab), noise.posterior_mean_from_eps(xt, eps, t, ab), atol=1e-4
        )
        gap = (
            (noise.posterior_mean_from_eps(xt, eps, t, ab) - noise.posterior_mean_from_eps(xt, eps_hat, t, ab))
            .pow(2)
            .sum()
        )
        assert gap.item() == pytest.approx(
            (noise.eps_to_mean_weight(t, ab) * (eps - eps_hat).pow(2).sum()).item(), rel=1e-4
        )


def test_predicted_x0_matches_the_scheduler_step(sched):
    """diffusers' DDPM step recovers x_0 from (x_t, eps) with the same closed form."""
    ab = sched.alphas_cumprod
    torch.manual_seed(2)
    xt, eps = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    sched.set_timesteps(1000)
    out = sched.step(eps, 600, xt).pred_original_sample
    x0_hat = (xt - (1 - ab[600]).sqrt() * eps) / ab[600].sqrt()
    assert torch.allclose(out, x0_hat, atol=1e-4)


def test_offset_noise_adds_one_constant_per_image_and_channel():
    plain = torch.randn((2000, 4, 16, 16), generator=torch.Generator().manual_seed(3))
    assert torch.equal(noise.offset_noise((2000, 4, 16, 16), 0.0, torch.Generator().manual_seed(3)), plain)
    shifted = noise.offset_noise((2000, 4, 16, 16), 0.5, torch.Generator().manual_seed(3))
    offsets = shifted - plain  # the plain draw comes first, so the difference is the offset alone
    assert torch.allclose(offsets, offsets[:, :, :1, :1].expand_as(offsets), atol=1e-6)
    # a 16x16 channel's mean has std 1/16 in plain noise; with the offset, sqrt(1/256 + 0.5^2)
    assert plain.mean(dim=(2, 3)).std().item() == pytest.approx(1 / 16, rel=0.05)
    assert shifted.mean(dim=(2, 3)).std().item() == pytest.approx((1 / 256 + 0.25) ** 0.5, rel=0.05)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_predicted_noise_recovers_the_noise_from_either_target(prediction_type):
    sched = DDPMScheduler(**{**SCHEDULE, "prediction_type": prediction_type})
    torch.manual_seed(4)
    x0, eps = torch.randn(4, 8, 6, 6), torch.randn(4, 8, 6, 6)
    t = torch.tensor([0, 300, 998, 999])  # 999: the zero-SNR step, where x_t is the noise itself
    xt = sched.add_noise(x0, eps, t)
    target = sched.get_velocity(x0, eps, t) if prediction_type == "v_prediction" else eps
    got = noise.predicted_noise(target, xt, t, sched.alphas_cumprod, prediction_type)
    assert torch.allclose(got, eps, atol=1e-4)
    with pytest.raises(ValueError, match="unknown prediction_type 'sample'"):
        noise.predicted_noise(target, xt, t, sched.alphas_cumprod, "sample")


def test_last_step_trace_is_zero_at_zero_terminal_snr_and_not_under_sd1x():
    x0 = torch.zeros(1, 4, 16, 16)
    x0[..., :8] = 2.0  # a bright left half: a layout
    sd1x = DDPMScheduler(**SD1X_SCHEDULE).alphas_cumprod
    zero = DDPMScheduler(**SCHEDULE).alphas_cumprod
    assert zero[-1] == 0 and sd1x[-1] > 0.004
    kept = noise.last_step_trace(x0, sd1x, 200, torch.Generator().manual_seed(5))
    gone = noise.last_step_trace(x0, zero, 200, torch.Generator().manual_seed(5))
    assert kept.shape == (200,) and kept.mean() > 0.15
    assert abs(gone.mean()) < 0.03
