"""The toy model's pretraining: resumable stages, a chain of stages recorded on the model card, `all`."""

import json

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from helpers.toy import model as toymodel
from helpers.toy import pretrain, pretrain_common

TINY = [
    "--vae_steps",
    "10",
    "--vae_batch_size",
    "4",
    "--unet_steps",
    "3",
    "--unet_batch_size",
    "4",
    "--dataset_size",
    "8",
    "--judge_steps",
    "2",
]


class Killed(Exception):
    pass


@pytest.fixture(autouse=True)
def few_held_out_renders(monkeypatch):
    """The cards' measurements on 16 renders, not hundreds: what is tested here is the bookkeeping."""
    from helpers.toy import judge

    monkeypatch.setattr(pretrain, "HELD_OUT_RENDERS", 16)
    monkeypatch.setattr(judge, "ACCURACY_RENDERS", 16)


def _kill_after(monkeypatch, name: str, calls: int) -> None:
    """Make ``pretrain.<name>`` raise on its ``calls + 1``-th call, as a kill in the middle of a step would."""
    real, count = getattr(pretrain, name), [0]

    def wrapper(*args, **kwargs):
        count[0] += 1
        if count[0] > calls:
            raise Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(pretrain, name, wrapper)


def test_a_vae_stage_killed_and_started_again_ends_as_an_uninterrupted_one(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrain, "SAVE_EVERY_SECONDS", 0.0)
    whole = pretrain.train_vae(tmp_path / "whole", steps=4, batch_size=4, seed=0, lr=2e-3)
    with monkeypatch.context() as m:
        _kill_after(m, "_render_batch", 3)
        with pytest.raises(Killed):
            pretrain.train_vae(tmp_path / "killed", steps=4, batch_size=4, seed=0, lr=2e-3)
    assert (tmp_path / "killed" / "state.pt").exists()
    resumed = pretrain.train_vae(tmp_path / "killed", steps=4, batch_size=4, seed=0, lr=2e-3)
    assert not (tmp_path / "killed" / "state.pt").exists()
    a = load_file(tmp_path / "whole" / "diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "killed" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["held_out_psnr_db"] == whole["held_out_psnr_db"]


@pytest.mark.parametrize("objective", [dict(), dict(prediction_type="v_prediction", layout_fraction=0.5)])
def test_a_unet_stage_killed_and_started_again_ends_as_an_uninterrupted_one(tmp_path, monkeypatch, objective):
    monkeypatch.setattr(pretrain, "SAVE_EVERY_SECONDS", 0.0)
    monkeypatch.setattr(pretrain, "layout_indices", lambda captions: list(range(len(captions))))  # 8 scenes
    vae = tmp_path / "vae"
    pretrain.train_vae(vae, steps=1, batch_size=2, seed=0, lr=2e-3)
    kw = dict(steps=4, batch_size=4, seed=0, dataset_size=8, lr=1e-3, **objective)
    _, whole = pretrain.train_unet(tmp_path / "a" / "toy", vae, **kw)
    with monkeypatch.context() as m:
        _kill_after(m, "unet_loss", 2)
        with pytest.raises(Killed):
            pretrain.train_unet(tmp_path / "b" / "toy", vae, **kw)
    assert (pretrain.unet_stage_dir(tmp_path / "b" / "toy") / "state.pt").exists()
    _, resumed = pretrain.train_unet(tmp_path / "b" / "toy", vae, **kw)
    for part in ("unet", "text_encoder"):
        name = "diffusion_pytorch_model.safetensors" if part == "unet" else "model.safetensors"
        a, b = load_file(whole / part / name), load_file(resumed / part / name)
        assert all(torch.equal(a[k], b[k]) for k in a), part


def test_all_records_each_stage_skips_what_is_done_and_draws_8_channel_latents(tmp_path, capsys):
    out = tmp_path / "toy-sd"
    pretrain.main(["all", "--output", str(out), *TINY])
    stages = json.loads((out / pretrain.STAGES).read_text())
    assert [s["stage"] for s in stages] == ["VAE"] * 3 + ["text encoder + UNet"] * 3
    assert stages[0]["command"] == f"python -m helpers.pretrain vae --output {out} " + " ".join(TINY)
    assert stages[1]["command"].startswith(f"python -m helpers.pretrain vae --vae_continue --output {out}")
    assert [(s["report"]["continued"], s["report"]["seed"]) for s in stages[:3]] == [(False, 0), (True, 1), (True, 2)]
    assert stages[4]["command"].startswith(f"python -m helpers.pretrain unet --init_from {out} --output {out}")
    second = stages[4]["report"]
    assert (second["seed"], second["learning_rate"], second["text_encoder_lr"], second["weight_decay"]) == (
        1,
        3e-4,
        1e-3,
        0,
    )
    assert (stages[3]["report"]["prediction_type"], second["prediction_type"]) == ("epsilon", "v_prediction")
    assert (stages[3]["report"]["layout_fraction"], second["layout_fraction"]) == (0.0, 0.5)
    assert (stages[3]["report"]["steps"], stages[4]["report"]["steps"]) == (3, 2)
    third = stages[5]["report"]
    assert (third["seed"], third["steps"], third["layout_fraction"], third["object_weight"]) == (2, 1, 0.25, 4.0)
    assert (stages[3]["report"]["object_weight"], second["object_weight"]) == (0.0, 0.0)
    card = (out / "README.md").read_text()
    assert all(f"`{s['command']}`" in card for s in stages) and "8x16x16" in card
    assert (tmp_path / "toy-judge" / "judge.safetensors").exists()
    weights = (out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()

    capsys.readouterr()
    pretrain.main(["all", "--output", str(out), *TINY])
    said = capsys.readouterr().out
    assert said.count("has had the phase") == 3 and said.count("already holds the stage") == 3
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == weights

    pipe = StableDiffusionPipeline.from_pretrained(out)
    assert pipe.vae.config.latent_channels == pipe.unet.config.in_channels == toymodel.LATENT_CHANNELS == 8
    assert pipe.unet.config.sample_size == 16
    config = pipe.scheduler.config
    assert (config.prediction_type, config.rescale_betas_zero_snr, config.timestep_spacing) == (
        "v_prediction",
        True,
        "trailing",
    )


def test_the_vae_phases_of_all_are_the_commands_on_the_card():
    phases = [pretrain.vae_continuation([], k, 0, 5000, 2e-3) for k in (1, 2)]
    assert [" ".join(p) for p in phases] == [
        "vae --vae_continue --seed 1 --vae_steps 3000 --vae_learning_rate 0.0005",
        "vae --vae_continue --seed 2 --vae_steps 1500 --vae_learning_rate 0.00025",
    ]


def test_the_unet_phases_of_all_are_the_commands_on_the_card():
    assert " ".join(pretrain.second_phase([], pretrain.DATA / "toy-sd", 0, 5000, 1e-3)).endswith(
        "toy-sd --seed 1 --unet_steps 4000 --learning_rate 0.0003 --text_encoder_lr 0.001 --weight_decay 0 "
        "--prediction_type v_prediction --layout_fraction 0.5"
    )


def test_the_third_unet_phase_weights_the_objects():
    assert " ".join(pretrain.third_phase([], pretrain.DATA / "toy-sd", 0, 5000, 1e-3)).endswith(
        "toy-sd --seed 2 --unet_steps 2000 --learning_rate 0.0001 --text_encoder_lr 0.0003 --weight_decay 0 "
        "--prediction_type v_prediction --layout_fraction 0.25 --object_weight 4"
    )


def test_object_coverage_is_the_share_of_each_latent_patch_an_object_covers():
    from helpers.toy import world

    scene = world.Scene((world.Placed(world.Instance("cat", "white", "red", "plain"), 0.5, 0.6, 0.4),), "snow")
    image, labels = world.render_with_mask(scene, seed=3)
    coverage = pretrain_common.object_coverage([labels, labels * 0], 4)
    assert coverage.shape == (2, 1, 16, 16) and coverage[1].max() == 0
    assert torch.isclose(coverage[0].mean(), torch.tensor((labels > 0).mean(), dtype=torch.float32))
    assert coverage[0, 0, 4, 4] == float((labels[16:20, 16:20] > 0).mean())
    weights = pretrain_common.object_weights(coverage, 4.0)
    assert weights[1].eq(1).all() and weights[0].max() == 5.0
    assert (weights[0] > 1).sum() > (coverage[0] > 0).sum()  # widened by one latent pixel


def test_a_layout_batch_names_a_place_and_sits_at_the_highest_noise_levels():
    import random

    captions = ["a photo of a dog", "a photo of a cat on the left", "a red cup in the center", "a car on the right"] * 8
    layout = pretrain.layout_indices(captions)
    assert layout == [i for i in range(32) if i % 4]
    idx, n_layout = pretrain.draw_batch(random.Random(0), 32, 16, layout, 0.5)
    assert n_layout == 8 and all(i in layout for i in idx[8:].tolist())
    t = pretrain.draw_timesteps(16, n_layout, 1000)
    assert t[8:].min() >= pretrain.LAYOUT_FROM_TIMESTEP and t.max() < 1000
    assert pretrain.draw_batch(random.Random(0), 32, 16, layout, 0.0)[1] == 0


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_the_unet_loss_is_min_snr_epsilon_or_plain_v(prediction_type):
    sched = toymodel.train_scheduler(prediction_type)
    x0, noise, pred = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    t = torch.tensor([10, 500, 999])
    a = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    if prediction_type == "epsilon":
        snr = (a / (1 - a)).flatten()
        want = (((pred - noise) ** 2).mean(dim=(1, 2, 3)) * torch.clamp(snr, max=5.0) / snr).mean()
    else:
        want = ((pred - (a.sqrt() * noise - (1 - a).sqrt() * x0)) ** 2).mean()
    assert torch.allclose(pretrain.unet_loss(pred, sched, x0, noise, t), want, atol=1e-6)
    assert torch.allclose(pretrain.unet_loss(pred, sched, x0, noise, t, weights=torch.full((3, 1, 4, 4), 3.0)), want)


def test_weighted_pixels_count_that_many_times_in_their_samples_mean():
    sched = toymodel.train_scheduler("v_prediction")
    x0, noise, t = torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2), torch.tensor([500])
    pred = torch.zeros(1, 2, 2, 2)
    pred[0, :, 0, 0] = 1.0  # the only error: one pixel, both channels
    weights = torch.ones(1, 1, 2, 2)
    weights[0, 0, 0, 0] = 5.0
    # squared errors 1 on the weighted pixel's 2 values, 0 elsewhere: (5 * 2) / (2 * (5 + 1 + 1 + 1))
    assert torch.isclose(pretrain.unet_loss(pred, sched, x0, noise, t, weights=weights), torch.tensor(10 / 16))


def test_a_second_phase_on_another_vae_is_one_clear_line(tmp_path):
    out = tmp_path / "toy-sd"
    with pytest.raises(pretrain.UsageError, match="no trained VAE .* to continue"):
        pretrain.main(["vae", "--vae_continue", "--output", str(out), *TINY])
    pretrain.main(["vae", "--output", str(out), *TINY])
    pretrain.main(["unet", "--output", str(out), *TINY])
    pretrain.main(["vae", "--output", str(out), *TINY, "--vae_learning_rate", "1e-3"])  # a new VAE in its place
    assert len(pretrain.vae_stages(out)) == 1
    with pytest.raises(pretrain.UsageError, match="trained on another VAE"):
        pretrain.main(["unet", "--output", str(out), "--init_from", str(out), *TINY])
