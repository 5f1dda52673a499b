"""The real-model path on a tiny SD 1.x-shaped pipeline (tests/sd_shaped.py), on the CPU.

What the toy model hides and a learner's Colab meets: an 8x VAE, PNDM, a safety checker, 77 tokens,
folders saved in fp16 or as an fp16 variant only, a second run in the same kernel, hub failures.
"""

import gc
import json
import weakref

import pytest
import sd_shaped
import torch
from diffusers import StableDiffusionPipeline
from huggingface_hub.errors import RepositoryNotFoundError
from safetensors.torch import load_file

from helpers.core.errors import UsageError
from helpers.core.paths import ROOT
from helpers.diffusion import loading
from helpers.diffusion.generate import generate_images
from helpers.diffusion.profiles import load_pipeline
from helpers.dreambooth.trainer import TrainConfig, Trainer, train

SUBJECT = str(ROOT / "data" / "dreambooth" / "dog")


def _config(model, out, **kw) -> TrainConfig:
    base = dict(
        pretrained_model_name_or_path=str(model),
        instance_data_dir=SUBJECT,
        instance_prompt="a photo of sks dog",
        output_dir=str(out),
        max_train_steps=2,
        learning_rate=1e-4,
        progress=False,
        checkpointing_steps=0,
        seed=0,
    )
    return TrainConfig(**{**base, **kw})


FULL = dict(
    with_prior_preservation=True,
    class_prompt="a photo of dog",
    num_class_images=2,
    train_batch_size=1,
    train_text_encoder=True,
    mixed_precision="bf16",
    gradient_checkpointing=True,
    use_8bit_adam=True,
    max_train_steps=4,
    checkpointing_steps=2,
    lr_scheduler="cosine",
)


@pytest.fixture(scope="module")
def full_run(sd_folders, tmp_path_factory):
    """A full DreamBooth run on the fp16-saved folder with every T4 setting the CPU has."""
    out = tmp_path_factory.mktemp("full")
    result = train(_config(sd_folders.fp16, out / "run", class_data_dir=str(out / "class"), **FULL))
    return out, result


def test_a_full_run_on_an_fp16_folder_saves_float32_weights_that_reload(full_run, sd_folders):
    out, result = full_run
    assert [h["step"] for h in result.history] == [1, 2, 3, 4]
    assert all(h["prior_loss"] > 0 and h["instance_loss"] > 0 for h in result.history)
    assert result.class_images["reused"] is False and len(list((out / "class").glob("*.png"))) == 2
    assert sd_shaped.disk_dtypes(sd_folders.fp16) == {"F16"} and sd_shaped.disk_dtypes(out / "run") == {"F32"}
    pipe = StableDiffusionPipeline.from_pretrained(out / "run")
    assert pipe.vae_scale_factor == 8 and pipe.tokenizer.model_max_length == 77
    base = load_file(str(sd_folders.fp32 / "text_encoder" / "model.safetensors"))
    tuned = load_file(str(out / "run" / "text_encoder" / "model.safetensors"))
    assert any(not torch.equal(base[k], tuned[k]) for k in base)  # the text encoder was trained
    images = generate_images(load_pipeline(str(out / "run")), "a photo of sks dog", 2, num_inference_steps=2)
    assert [im.size for im in images] == [(64, 64)] * 2


def test_a_full_run_resumed_after_a_kill_ends_with_the_same_weights(full_run, sd_folders, tmp_path, killed_run):
    out, _ = full_run

    def config(**kw):
        return _config(sd_folders.fp16, tmp_path / "run", class_data_dir=str(out / "class"), **FULL, **kw)

    killed_run(Trainer, lambda: train(config()), step=3)
    result = train(config(resume_from_checkpoint="latest"))
    assert [h["step"] for h in result.history] == [1, 2, 3, 4]
    for part in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        full, resumed = load_file(str(out / "run" / part)), load_file(str(tmp_path / "run" / part))
        assert all(torch.equal(full[k], resumed[k]) for k in full), part


def test_no_fp16_gradient_reaches_a_grad_scaler(sd_folders, tmp_path, monkeypatch):
    """fp16 mixed precision unscales gradients with a GradScaler, which refuses fp16 ones ("Attempting to
    unscale FP16 gradients"): the trainable parts of an fp16 folder must be float32."""
    import helpers.training.loop as loop_module

    seen = {}

    def one_scaled_step(acc, output_dir, trained, optimizer, lr_scheduler, step_loss, settings, start_step, after=None):
        scaler = torch.amp.GradScaler("cpu")
        loss, _ = step_loss(0, 0)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        seen["grads"] = {p.grad.dtype for g in optimizer.param_groups for p in g["params"] if p.grad is not None}
        return [], 0.0

    monkeypatch.setattr(loop_module, "run_loop", one_scaled_step)
    train(_config(sd_folders.fp16, tmp_path, train_text_encoder=True, mixed_precision="bf16"))
    assert seen["grads"] == {torch.float32}


def test_an_fp16_folder_trains_without_mixed_precision(sd_folders, tmp_path):
    result = train(_config(sd_folders.fp16, tmp_path, train_text_encoder=True, mixed_precision="no"))
    assert len(result.history) == 2 and sd_shaped.disk_dtypes(tmp_path) == {"F32"}


def test_a_second_run_in_one_kernel_may_change_the_precision(sd_folders, tmp_path):
    first = train(_config(sd_folders.fp32, tmp_path / "a", mixed_precision="no"))
    second = Trainer(_config(sd_folders.fp32, tmp_path / "b", mixed_precision="bf16"))
    assert second.accelerator.mixed_precision == "bf16" and second.vae.dtype == torch.bfloat16
    assert len(second.train().history) == 2 and len(first.history) == 2


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(
            lora_rank=4,
            train_text_encoder=True,
            with_prior_preservation=True,
            class_prompt="a photo of dog",
            num_class_images=1,
            validation_prompt="a photo of sks dog",
            num_validation_images=1,
        ),
    ],
)
def test_a_finished_run_lets_its_models_go_without_the_garbage_collector(sd_folders, tmp_path, kw):
    trainer = Trainer(_config(sd_folders.fp32, tmp_path / "run", class_data_dir=str(tmp_path / "class"), **kw))
    unet, text_encoder = weakref.ref(trainer.unet), weakref.ref(trainer.text_encoder)
    gc.collect()
    gc.disable()
    try:
        trainer.train()
        del trainer
        assert unet() is None and text_encoder() is None
    finally:
        gc.enable()


def test_lora_with_the_text_encoder_on_an_fp16_folder(sd_folders, tmp_path):
    result = train(
        _config(
            sd_folders.fp16,
            tmp_path,
            lora_rank=4,
            train_text_encoder=True,
            mixed_precision="bf16",
            gradient_checkpointing=True,
            use_8bit_adam=True,
        )
    )
    assert len(result.history) == 2 and sd_shaped.disk_dtypes(tmp_path) == {"F32"}
    assert json.loads((tmp_path / "lora_base.json").read_text())["base_model"] == str(sd_folders.fp16)
    pipe = load_pipeline(str(tmp_path))  # its base, with the adapters loaded
    assert any("lora" in name for name, _ in pipe.unet.named_parameters())
    assert any("lora" in name for name, _ in pipe.text_encoder.named_parameters())
    assert generate_images(pipe, "a photo of sks dog", 1, num_inference_steps=2)[0].size == (64, 64)


def test_an_fp16_variant_folder_loads_with_variant_and_says_so_without(sd_folders, tmp_path):
    with pytest.raises(UsageError, match=r"holds only fp16-variant weights .*: pass --variant fp16$"):
        Trainer(_config(sd_folders.fp16_variant, tmp_path / "out"))
    with pytest.raises(UsageError, match="holds only fp16-variant weights"):
        load_pipeline(str(sd_folders.fp16_variant))
    assert not (tmp_path / "out").exists()
    result = train(_config(sd_folders.fp16_variant, tmp_path / "out", variant="fp16", mixed_precision="bf16"))
    assert len(result.history) == 2 and sd_shaped.disk_dtypes(tmp_path / "out") == {"F32"}
    with pytest.raises(UsageError, match="has no 'fp16' variant .*leave out --variant"):
        load_pipeline(str(sd_folders.fp32), variant="fp16")


def test_a_hub_id_that_is_not_cached_offline_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(
        UsageError,
        match=r"not in the local cache and the hub cannot be reached .*helpers.profiles "
        r"download nobody/no-such-model",
    ):
        Trainer(_config("nobody/no-such-model", tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_hub_failures_are_explained_by_what_went_wrong():
    def failure(cause: Exception) -> OSError:
        try:
            raise OSError("nobody/typo is not a local folder and is not a valid model identifier") from cause
        except OSError as err:
            return err

    not_found = RepositoryNotFoundError.__new__(RepositoryNotFoundError)  # as the hub raises it, without an HTTP reply
    typo = loading.explain("nobody/typo", failure(not_found))
    assert typo.startswith("'nobody/typo' is not a model on the hub") and "check the spelling" in typo
    assert "\n" not in typo
    other = loading.explain("nobody/typo", failure(RuntimeError("boom")))
    assert other.startswith("could not load 'nobody/typo'")


def test_revision_and_variant_reach_every_loader(sd_folders, tmp_path, monkeypatch):
    import helpers.dreambooth.trainer as train_module

    asked = []
    real = train_module.load_parts

    def spy(path, revision=None, variant=None):
        asked.append((revision, variant))
        return real(path, None, variant)  # a local folder has no revisions

    monkeypatch.setattr(train_module, "load_parts", spy)
    Trainer(_config(sd_folders.fp16_variant, tmp_path, revision="main", variant="fp16"))
    assert asked == [("main", "fp16")]


def test_generate_and_evaluate_from_a_terminal_on_the_sd_shaped_model(full_run, sd_folders, run_tool, tmp_path):
    out, _ = full_run
    drawn = run_tool(
        "generate",
        "--model",
        str(sd_folders.fp16),
        "--prompt",
        "a photo of a dog",
        "--num_images",
        "2",
        "--num_inference_steps",
        "2",
        "--output_dir",
        str(tmp_path / "images"),
    )
    assert drawn.returncode == 0, drawn.stderr[-2000:]
    assert len(list((tmp_path / "images").glob("*.png"))) == 2
    scored = run_tool(
        "evaluate",
        "--model",
        str(out / "run"),
        "--subject_dir",
        SUBJECT,
        "--instance_prompt",
        "a photo of sks dog",
        "--class_prompt",
        "a photo of dog",
        "--num_samples",
        "2",
        "--num_inference_steps",
        "2",
        "--dino_model",
        str(sd_folders.dino),
        "--clip_model",
        str(sd_folders.clip),
    )
    assert scored.returncode == 0, scored.stderr[-2000:]
    report = json.loads(scored.stdout.strip().splitlines()[-1])
    assert report["scorers"].startswith("DINO") and report["num_samples"] == 2
    assert 0 <= report["div"] <= 2 and -1 <= report["subject_fidelity"] <= 1
