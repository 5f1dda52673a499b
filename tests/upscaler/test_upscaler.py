"""The toy super-resolution stage: shapes, the training target, saving, and bad input."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import upscaler as up
from helpers.core.errors import UsageError
from helpers.core.paths import DATA
from helpers.upscaler import cli as upscaler_cli


@pytest.fixture(scope="module")
def fresh():
    torch.manual_seed(0)
    return up.build_upscaler()


def _images(size: int, count: int = 2) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(count)]


def test_upscales_64px_to_128px_deterministically(fresh):
    low = up.downsample(up.world_images(5, 2))
    a, b = fresh(low, num_inference_steps=2, seed=3), fresh(low, num_inference_steps=2, seed=3)
    assert [i.size for i in a] == [(128, 128)] * 2
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))


def test_wrong_input_size_is_one_clear_error(fresh):
    with pytest.raises(UsageError, match=r"takes 64x64 images .* got 80x80: resize to 64x64"):
        fresh(_images(80, 1), num_inference_steps=1)
    with pytest.raises(UsageError, match=r"must be 128x128 .* got 64x64"):
        up.finetune(fresh, _images(64), up.FinetuneConfig(output_dir="unused", max_train_steps=1, progress=False))


def test_condition_is_bicubic_upsampling_in_range():
    x = up.to_tensor(_images(64))
    c = up.condition(x)
    assert c.shape == (2, 3, 128, 128) and c.min() >= -1 and c.max() <= 1
    flat = torch.full((1, 3, 64, 64), 0.25)
    assert torch.allclose(up.condition(flat), torch.full((1, 3, 128, 128), 0.25), atol=1e-6)


def test_degrade_blurs_and_noises_within_range_and_is_seeded():
    low = up.to_tensor(up.downsample(up.world_images(3, 4)))
    a = up.degrade(low, torch.Generator().manual_seed(1))
    b = up.degrade(low, torch.Generator().manual_seed(1))
    assert a.shape == low.shape and torch.equal(a, b) and a.min() >= -1 and a.max() <= 1
    assert not torch.equal(a, low)
    assert torch.equal(up.degrade(low, torch.Generator().manual_seed(1), max_blur=0.0, max_noise=0.0), low)
    flat = torch.full((1, 3, 16, 16), 0.3)  # blurring a flat image changes nothing
    assert torch.allclose(up.degrade(flat, torch.Generator().manual_seed(0), max_noise=0.0), flat, atol=1e-6)


def test_training_target_is_the_velocity(fresh):
    high = torch.rand(2, 3, 8, 8) * 2 - 1
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(high.shape, generator=gen)
    t = torch.randint(0, 1000, (2,), generator=gen)
    abar = fresh.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    v = abar.sqrt() * noise - (1 - abar).sqrt() * high
    assert torch.allclose(fresh.scheduler.get_velocity(high, noise, t), v, atol=1e-6)


def test_pretraining_is_seeded_and_changes_the_weights():
    def run():
        torch.manual_seed(0)
        pipe = up.build_upscaler()
        up.pretrain(pipe, steps=2, learning_rate=1e-3, batch_size=2, crop=32, progress=False)
        return pipe.unet.conv_in.weight.detach().clone()

    torch.manual_seed(0)
    before = up.build_upscaler().unet.conv_in.weight.detach()
    a, b = run(), run()
    assert torch.equal(a, b) and not torch.equal(a, before)


def test_a_finetune_killed_and_resumed_from_latest_ends_as_an_uninterrupted_one(tmp_path, monkeypatch):
    photos = up.world_images(0, 2)

    def run(output_dir, **kw):
        torch.manual_seed(0)
        pipe = up.build_upscaler()
        config = up.FinetuneConfig(
            output_dir=str(output_dir),
            max_train_steps=4,
            train_batch_size=2,
            crop=32,
            checkpointing_steps=2,
            progress=False,
            **kw,
        )
        return pipe, up.finetune(pipe, photos, config)

    whole, fit = run(tmp_path / "whole")
    assert len(fit.losses) == 4
    real, calls = up.loss_on, []

    def dies_at_the_fourth_step(*args):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args)

    with monkeypatch.context() as m:
        m.setattr(up.training, "loss_on", dies_at_the_fourth_step)
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path / "killed")
    assert (tmp_path / "killed" / "checkpoint-2").is_dir()
    resumed, again = run(tmp_path / "killed", resume_from_checkpoint="latest")
    assert again.losses == fit.losses
    a, b = whole.unet.state_dict(), resumed.unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_psnr_matches_its_formula():
    a = Image.new("RGB", (8, 8), (100, 100, 100))
    b = Image.new("RGB", (8, 8), (110, 100, 100))  # squared error 100 in one of three channels
    assert up.psnr([a], [b]) == pytest.approx(10 * math.log10(255**2 / (100 / 3)))
    assert up.psnr([a], [b], box=(0, 0, 4, 4)) == pytest.approx(up.psnr([a], [b]))


def test_save_then_load_round_trip(tmp_path, fresh):
    stage = {
        "stage": "pretrain",
        "command": "python -m helpers.upscaler pretrain",
        "steps": 1,
        "batch_size": 1,
        "seed": 0,
        "seconds": 0.1,
        "final_loss": 0.5,
    }
    out = upscaler_cli.save(fresh, tmp_path / "ups", [stage])
    loaded = up.load_upscaler(out)
    assert torch.equal(loaded.unet.conv_in.weight, fresh.unet.conv_in.weight)
    assert "python -m helpers.upscaler pretrain" in (out / "README.md").read_text()
    with pytest.raises(UsageError, match="no upscaler in"):
        up.load_upscaler(tmp_path / "nothing")


def test_committed_upscaler_loads_and_records_its_training():
    loaded = up.load_upscaler(DATA / "toy-upscaler")
    assert loaded.unet.config.in_channels == 6 and loaded.unet.config.sample_size == 128
    assert "helpers.upscaler pretrain" in (DATA / "toy-upscaler" / "README.md").read_text()


def test_cli_rejects_wrong_size_images_in_one_line(tmp_path, run_tool):
    folder = tmp_path / "big"
    folder.mkdir()
    _images(96, 1)[0].save(folder / "a.png")
    result = run_tool("upscaler", "upscale", "--images", str(folder), "--output_dir", str(tmp_path / "out"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: the upscaler takes 64x64 images")
