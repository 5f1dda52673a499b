"""The DreamBooth trainer on the toy profile: real runs of a few steps each."""

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from PIL import Image
from safetensors.torch import load_file
from toy_dreambooth import BASE, SUBJECT, prior_config, toy_config

from helpers.core.errors import UsageError
from helpers.core.paths import ROOT
from helpers.diffusion.profiles import TOY_MODEL
from helpers.dreambooth.instances import load_instances
from helpers.dreambooth.priors import PriorSettings, cache_status, class_data_dir, class_images
from helpers.dreambooth.trainer import TrainConfig, Trainer, train
from helpers.training.loop import checkpoints, resolve_resume
from helpers.training.optim import make_optimizer, optimizer_state_bytes


def _config(out, **kw) -> TrainConfig:
    return toy_config(out, **kw)


def _unet(out) -> dict:
    return load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))


def test_output_is_a_pipeline_and_the_loss_is_logged(tmp_path):
    result = train(_config(tmp_path, max_train_steps=4, logging_steps=2))
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path)
    assert pipe.unet.config.sample_size == 16
    assert [h["step"] for h in result.history] == [1, 2, 3, 4]
    assert all(h["prior_loss"] == 0 for h in result.history)
    assert json.loads((tmp_path / "loss_history.json").read_text()) == result.history
    before = load_file(str(TOY_MODEL / "unet" / "diffusion_pytorch_model.safetensors"))
    after = _unet(tmp_path)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_prior_preservation_with_snr_gamma_and_8bit_adam(tmp_path):
    result = train(prior_config(tmp_path, snr_gamma=5.0, use_8bit_adam=True, max_train_steps=3, logging_steps=1))
    assert len(list((tmp_path / "class").glob("*.png"))) == 3
    assert all(h["prior_loss"] > 0 and h["instance_loss"] > 0 for h in result.history)
    assert result.class_images["reused"] is False


def test_8bit_state_is_much_smaller_than_32bit():
    sizes = {}
    for eight in (False, True):
        p = torch.nn.Parameter(torch.randn(256, 1024))
        opt = make_optimizer([p], 1e-3, use_8bit_adam=eight)
        p.grad = torch.randn_like(p)
        opt.step()
        sizes[eight] = optimizer_state_bytes(opt)
        assert type(opt).__name__ == ("AdamW8bit" if eight else "AdamW")
    assert sizes[False] >= 8 * 256 * 1024
    assert sizes[True] < sizes[False] / 3.5


def test_32bit_adamw_is_fused_on_a_cpu_and_updates_as_the_default_does():
    p = torch.nn.Parameter(torch.zeros(2))
    assert make_optimizer([p], 1e-2, device="cpu").defaults["fused"] is True
    assert make_optimizer([p], 1e-2, device="cuda").defaults["fused"] is None  # a GPU keeps torch's default
    torch.manual_seed(0)
    start, grads = torch.randn(64, 32), [torch.randn(64, 32) for _ in range(3)]
    weights = []
    for make in (lambda q: make_optimizer(q, 1e-2), lambda q: torch.optim.AdamW(q, 1e-2, foreach=True)):
        p = torch.nn.Parameter(start.clone())
        opt = make([p])
        for g in grads:
            p.grad = g.clone()
            opt.step()
        weights.append(p.detach())
    assert not torch.equal(weights[0], start)
    torch.testing.assert_close(weights[0], weights[1], rtol=0, atol=1e-6)


def test_bitsandbytes_that_cannot_load(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    p = torch.nn.Parameter(torch.zeros(4))
    with pytest.raises(UsageError, match=r"--use_8bit_adam needs bitsandbytes.*--allow_adamw_fallback"):
        make_optimizer([p], 1e-3, use_8bit_adam=True)
    with pytest.warns(UserWarning, match="32-bit torch AdamW"):
        assert type(make_optimizer([p], 1e-3, use_8bit_adam=True, allow_fallback=True)).__name__ == "AdamW"


def test_resume_after_a_kill_ends_with_the_same_weights(tmp_path, killed_run):
    kw = dict(max_train_steps=6, checkpointing_steps=3, lr_scheduler="cosine", train_text_encoder=True)
    train(_config(tmp_path / "full", **kw))
    killed_run(Trainer, lambda: train(_config(tmp_path / "killed", **kw)), step=4)
    assert [p.name for p in checkpoints(tmp_path / "killed")] == ["checkpoint-3"]
    result = train(_config(tmp_path / "killed", resume_from_checkpoint="latest", **kw))
    full, resumed = _unet(tmp_path / "full"), _unet(tmp_path / "killed")
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    assert [h["step"] for h in result.history] == list(range(1, 7))


def test_a_kill_during_a_checkpoint_save_keeps_the_previous_one(tmp_path, monkeypatch):
    from accelerate import Accelerator

    train(_config(tmp_path, max_train_steps=4, checkpointing_steps=2))
    real = Accelerator.save_state

    def dies_half_way(self, output_dir=None, **kwargs):
        real(self, output_dir, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(Accelerator, "save_state", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        train(_config(tmp_path, max_train_steps=8, checkpointing_steps=2, resume_from_checkpoint="latest"))
    assert resolve_resume(tmp_path, "latest").name == "checkpoint-4"  # the first run's last step
    assert (tmp_path / ".checkpoint-6.tmp").exists()


def test_checkpoints_total_limit_prunes_the_oldest(tmp_path):
    train(_config(tmp_path, max_train_steps=7, checkpointing_steps=2, checkpoints_total_limit=2))
    assert [p.name for p in checkpoints(tmp_path)] == ["checkpoint-4", "checkpoint-6"]


def test_bad_settings_get_one_clear_line(tmp_path):
    with pytest.raises(UsageError, match="--with_prior_preservation needs --class_prompt"):
        train(_config(tmp_path, with_prior_preservation=True, class_data_dir=str(tmp_path)))
    with pytest.raises(UsageError, match="does not exist"):
        train(_config(tmp_path, instance_data_dir=str(tmp_path / "missing")))
    with pytest.raises(UsageError, match="not a checkpoint-N folder"):
        train(_config(tmp_path, resume_from_checkpoint=str(tmp_path)))
    with pytest.raises(UsageError, match="fp16 needs a CUDA GPU"):
        Trainer(_config(tmp_path, mixed_precision="fp16"))
    with pytest.raises(UsageError, match="--resolution 60 is not a multiple of 8, .*: use 64$"):
        Trainer(_config(tmp_path, resolution=60))


def test_identifier_warnings(tmp_path):
    with pytest.warns(UserWarning, match="'red' is a common token"):
        Trainer(_config(tmp_path, instance_prompt="a photo of red dog", class_prompt="a photo of dog"))
    with pytest.warns(UserWarning, match=r"'zqxjv' splits into \d tokens"):
        Trainer(_config(tmp_path, instance_prompt="a photo of zqxjv dog"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Trainer(_config(tmp_path, instance_prompt="a photo of sks dog", class_prompt="a photo of dog"))
    assert not [w for w in caught if "identifier" in str(w.message)]


def test_small_images_are_upscaled_with_a_warning(tmp_path):
    folder = tmp_path / "small"
    folder.mkdir()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(folder / "a.png")
    with pytest.warns(UserWarning, match="smaller than --resolution 64: it is upscaled"):
        images = load_instances(str(folder), 64, "a photo of sks dog", None).images
    assert images[0].size == (32, 32)


def test_class_image_cache_is_reused_only_for_the_same_settings(tmp_path, toy_pipe):
    calls = []

    def factory():
        calls.append(1)
        return toy_pipe

    settings = PriorSettings(model="toy", prompt="a photo of dog", count=2, num_inference_steps=4)
    folder = tmp_path / "class"
    _, first = class_images(folder, settings, factory, progress=False)
    _, second = class_images(folder, settings, factory, progress=False)
    assert (first["reused"], second["reused"], len(calls)) == (False, True, 1)
    changed = PriorSettings(model="toy", prompt="a photo of dog", count=2, num_inference_steps=4, seed=1)
    assert cache_status(folder, changed) == "settings changed: seed 0 -> 1"
    _, third = class_images(folder, changed, factory, progress=False)
    assert third["reused"] is False and len(calls) == 2
    (folder / "class-00001.png").unlink()
    assert cache_status(folder, changed) == "files missing"


def test_class_images_are_drawn_at_the_profiles_class_guidance_unless_told(sd_folders):
    # the toy draws its class unguided (notebook 05 says why); SD 1.x as diffusers does, at its sampling guidance
    assert PriorSettings.for_model("toy", "a photo of dog", 2).guidance_scale == 1.0
    assert PriorSettings.for_model(str(sd_folders.fp16), "a photo of dog", 2).guidance_scale == 7.5
    assert PriorSettings.for_model("toy", "a photo of dog", 2, guidance_scale=4.0).guidance_scale == 4.0


def test_class_images_of_a_model_retrained_in_place_are_drawn_again(tmp_path, toy_pipe):
    model = tmp_path / "model"
    toy_pipe.save_pretrained(model)
    before = PriorSettings.for_model(str(model), "a photo of dog", 2)
    assert before.weights == PriorSettings.for_model(str(model), "a photo of dog", 2).weights != ""
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # rewritten in place
    after = PriorSettings.for_model(str(model), "a photo of dog", 2)
    assert (after.model, after.weights != before.weights) == (before.model, True)
    folder = tmp_path / "class"
    class_images(folder, before, lambda: toy_pipe, progress=False)
    assert cache_status(folder, after) == f"settings changed: weights {before.weights!r} -> {after.weights!r}"
    assert PriorSettings.for_model("CompVis/stable-diffusion-v1-4", "a photo of dog", 2).weights == ""


def test_each_seed_keeps_its_class_images_in_a_folder_of_its_own(tmp_path):
    seed0, seed1 = (class_data_dir(tmp_path, "toy", "a photo of dog", seed) for seed in (0, 1))
    assert seed0 == tmp_path / "class_images" / "toy" / "a_photo_of_dog"  # notebook 03's, where notebook 04 looks
    assert seed1 == tmp_path / "class_images" / "toy" / "a_photo_of_dog-seed1" and seed1 != seed0


def test_two_processes_end_identical_and_only_rank_0_writes(tmp_path):
    report = tmp_path / "report"
    report.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29531",
        str(ROOT / "tests" / "ddp_worker.py"),
        SUBJECT,
        str(tmp_path / "out"),
        str(report),
    ]
    out = subprocess.run(
        cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    ranks = [json.loads((report / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == 2 and "MULTI_CPU" in ranks[0]["distributed_type"]
    assert ranks[0]["digest"] == ranks[1]["digest"]
    assert "pipeline" in ranks[0]["writes"] and ranks[1]["writes"] == []
    assert (tmp_path / "out" / "model_index.json").exists()
    # the checkpoint holds the UNet itself, not DDP's wrapper: no "module." prefix, loads as a UNet
    saved = load_file(str(tmp_path / "out" / "checkpoint-2" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert not any(k.startswith("module.") for k in saved)
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "out", subfolder="checkpoint-2/unet")
    assert unet.config.sample_size == 16


def test_a_learning_rate_left_out_is_the_models_own(tmp_path, sd_folders):
    """diffusers' 5e-6 for SD 1.x; the toy's 4.6 M parameters learn the subject at 1e-4."""
    kw = {k: v for k, v in BASE.items() if k != "learning_rate"}
    toy = Trainer(TrainConfig(**kw, output_dir=str(tmp_path / "toy")))
    sd = Trainer(TrainConfig(**kw, output_dir=str(tmp_path / "sd"), pretrained_model_name_or_path=str(sd_folders.fp32)))
    assert toy.config.learning_rate == 1e-4 and sd.config.learning_rate == 5e-6
    assert TrainConfig(**kw, output_dir="o").learning_rate is None  # the settings keep "left out"
