import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr

from helpers.diffusion import noise
from helpers.diffusion.losses import dreambooth_loss, snr_weights
from helpers.toy.model import SD1X_SCHEDULE


@pytest.fixture(scope="module")
def sched():
    return DDPMScheduler(**SD1X_SCHEDULE)


def test_min_snr_weights_follow_the_formula(sched):
    t = torch.tensor([0, 100, 500, 999])
    s = sched.alphas_cumprod[t] / (1 - sched.alphas_cumprod[t])
    assert torch.allclose(compute_snr(sched, t), s) and torch.allclose(noise.snr(sched.alphas_cumprod)[t], s)
    assert torch.allclose(snr_weights(sched, t, 5.0), torch.minimum(s, torch.tensor(5.0)) / s)
    assert torch.equal(snr_weights(sched, t, None), torch.ones(4))
    v = DDPMScheduler(**{**SD1X_SCHEDULE, "prediction_type": "v_prediction"})
    assert torch.allclose(snr_weights(v, t, 5.0), torch.minimum(s, torch.tensor(5.0)) / (s + 1))


def test_prior_preservation_with_snr_gamma_weights_each_half_by_its_own_timesteps(sched):
    torch.manual_seed(0)
    pred, target = torch.randn(6, 4, 8, 8), torch.randn(6, 4, 8, 8)
    t = torch.tensor([10, 200, 900, 5, 500, 999])  # rows 0-2 instance, rows 3-5 class
    total, inst, prior = dreambooth_loss(pred, target, t, sched, num_instance=3, prior_loss_weight=0.7, snr_gamma=5.0)
    per_row = (pred - target).pow(2).mean(dim=(1, 2, 3)) * snr_weights(sched, t, 5.0)
    assert inst.item() == pytest.approx(per_row[:3].mean().item(), rel=1e-6)
    assert prior.item() == pytest.approx(per_row[3:].mean().item(), rel=1e-6)
    assert total.item() == pytest.approx(inst.item() + 0.7 * prior.item(), rel=1e-6)


def test_without_class_rows_the_prior_part_is_zero(sched):
    pred, target = torch.ones(2, 4, 4, 4), torch.zeros(2, 4, 4, 4)
    total, inst, prior = dreambooth_loss(pred, target, torch.tensor([1, 2]), sched, num_instance=2)
    assert total.item() == 1.0 and inst.item() == 1.0 and prior.item() == 0.0
