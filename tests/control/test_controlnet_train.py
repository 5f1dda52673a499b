"""The ControlNet trainer: real runs of a few steps each, on the toy model and on a tiny SD 1.x-shaped one."""

import json
import shlex
from types import SimpleNamespace

import pytest
import real_branch
import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from safetensors.torch import load_file

from helpers.control import dataset as control_data
from helpers.control.controlnet import (
    build_controlnet,
    controlnet_pipeline,
    draw,
    load_controlnet,
    load_controlnet_pipeline,
    sudden_convergence,
    zero_convolutions,
)
from helpers.control.trainer import (
    SD15_FLAGS,
    ControlNetConfig,
    ControlNetTrainer,
    command_line,
    train_controlnet,
)
from helpers.core.cli import dataclass_parser
from helpers.core.errors import UsageError
from helpers.diffusion.profiles import TOY_CONTROLNET, load_pipeline
from helpers.training.loop import checkpoints

SD_EMBEDDING = [16, 32, 96, 256]  # the condition embedding for an 8x VAE, as SD 1.5's ControlNets have
# The memory savings of notebook 09's SD 1.5 command (bf16 for its fp16: a CPU has no fp16 training) and the
# unlocked decoder, on the fp16 copy of the SD-shaped model.
SD_RUN = dict(
    mixed_precision="bf16",
    gradient_checkpointing=True,
    use_8bit_adam=True,
    unlock_unet_decoder=True,
    max_train_steps=4,
    train_batch_size=2,
    checkpointing_steps=2,
    lr_scheduler="cosine",
)


def _config(data_dir, out, **kw) -> ControlNetConfig:
    base = dict(
        train_data_dir=str(data_dir),
        output_dir=str(out),
        max_train_steps=4,
        train_batch_size=4,
        learning_rate=1e-3,
        progress=False,
        checkpointing_steps=0,
    )
    return ControlNetConfig(**{**base, **kw})


def _weights(out) -> dict:
    return load_file(str(out / "diffusion_pytorch_model.safetensors"))


def _sd_config(data_dir, out, sd_folders, **kw) -> ControlNetConfig:
    return _config(data_dir, out, pretrained_model_name_or_path=str(sd_folders.fp16), **SD_RUN | kw)


@pytest.fixture(scope="module")
def sd_run(data_dir, sd_folders, tmp_path_factory):
    """One uninterrupted SD_RUN, with the dtypes its models had when training began."""
    out = tmp_path_factory.mktemp("sd-controlnet") / "full"
    trainer = ControlNetTrainer(_sd_config(data_dir, out, sd_folders))
    dtypes = {name: getattr(trainer, name).dtype for name in ("vae", "text_encoder", "unet", "controlnet")}
    return SimpleNamespace(
        out=out, dtypes=dtypes, result=trainer.train(), resolution=trainer.resolution, latents=trainer.data.latents
    )


def test_only_the_controlnet_learns_and_it_saves_as_a_controlnet(data_dir, tmp_path, toy_pipe):
    trainer = ControlNetTrainer(_config(data_dir, tmp_path, use_8bit_adam=True, proportion_empty_prompts=0.5))
    unet_before = {k: v.clone() for k, v in trainer.unet.state_dict().items()}
    result = trainer.train()
    assert all(torch.equal(v, trainer.unet.state_dict()[k]) for k, v in unet_before.items())
    assert [h["step"] for h in result.history] == [1, 2, 3, 4]
    assert result.trainable_parameters == sum(p.numel() for p in build_controlnet(toy_pipe.unet, 4).parameters())
    saved = load_controlnet(tmp_path)
    assert isinstance(saved, ControlNetModel)
    moved = [name for name, layer in zero_convolutions(saved).items() if layer.weight.abs().sum() > 0]
    assert moved, "after training the zero convolutions are no longer zero"
    assert json.loads((tmp_path / "train_result.json").read_text())["config"]["use_8bit_adam"] is True


def test_the_loss_is_the_frozen_unets_denoising_loss_with_residuals(data_dir, tmp_path):
    trainer = ControlNetTrainer(_config(data_dir, tmp_path))
    data = trainer.prepare()
    loss, _ = trainer._step_loss(0, 0)
    gen = torch.Generator().manual_seed(0)  # the trainer's generator for seed 0, step 0, micro-batch 0, rank 0
    idx = torch.randint(0, 12, (4,), generator=gen)
    torch.rand(4, generator=gen)
    latents, emb, cond = data.latents[idx], data.embeddings[idx], data.conditions[idx]
    noise = torch.randn(latents.shape, generator=gen)
    t = torch.randint(0, 1000, (4,), generator=gen)
    noisy = trainer.noise_scheduler.add_noise(latents, noise, t)
    down, mid = trainer.controlnet(noisy, t, emb, controlnet_cond=cond, return_dict=False)
    pred = trainer.unet(noisy, t, emb, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    a = trainer.noise_scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    v = a.sqrt() * noise - (1 - a).sqrt() * latents  # the toy model predicts v
    assert trainer.noise_scheduler.config.prediction_type == "v_prediction"
    assert torch.allclose(loss, ((pred - v) ** 2).mean(), atol=1e-6)
    assert cond.min() >= 0 and cond.max() <= 1 and cond.shape[-1] == 64  # the pipeline's [0, 1] convention


def test_resume_after_a_kill_ends_with_the_same_weights(data_dir, tmp_path, killed_run):
    kw = dict(max_train_steps=6, checkpointing_steps=3, lr_scheduler="cosine")
    train_controlnet(_config(data_dir, tmp_path / "full", **kw))
    killed_run(ControlNetTrainer, lambda: train_controlnet(_config(data_dir, tmp_path / "killed", **kw)), step=4)
    assert [p.name for p in checkpoints(tmp_path / "killed")] == ["checkpoint-3"]
    result = train_controlnet(_config(data_dir, tmp_path / "killed", resume_from_checkpoint="latest", **kw))
    full, resumed = _weights(tmp_path / "full"), _weights(tmp_path / "killed")
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    assert [h["step"] for h in result.history] == list(range(1, 7))


def test_validation_layouts_give_a_curve_from_step_zero(data_dir, tmp_path):
    result = train_controlnet(_config(data_dir, tmp_path, max_train_steps=2, validation_steps=1, validation_layouts=2))
    assert [v["step"] for v in result.validation] == [0, 1, 2]
    first = result.validation[0]
    assert first["prompts"] == 2 and 0 <= first["relation_accuracy"] <= first["object_accuracy"] <= 1
    assert json.loads((tmp_path / "validation.json").read_text()) == result.validation


def test_a_trained_controlnet_reloads_and_draws_the_same(data_dir, tmp_path, toy_pipe):
    train_controlnet(_config(data_dir, tmp_path, max_train_steps=2))
    row = control_data.load_dataset(data_dir)[0]
    trainer_pipe = controlnet_pipeline(toy_pipe, load_controlnet(tmp_path))
    again = controlnet_pipeline(toy_pipe, load_controlnet(tmp_path))
    kw = dict(seed=3, steps=4)
    a = draw(trainer_pipe, [row.text], [row.conditioning_image], **kw)[0]
    b = draw(again, [row.text], [row.conditioning_image], **kw)[0]
    assert a.tobytes() == b.tobytes()
    weak = draw(again, [row.text], [row.conditioning_image], conditioning_scale=0.0, **kw)[0]
    base = draw(toy_pipe, [row.text], **kw)[0]
    assert weak.tobytes() == base.tobytes()  # scale 0 switches the ControlNet off


def test_bad_settings_get_one_clear_line(data_dir, tmp_path):
    with pytest.raises(UsageError, match="no train.jsonl"):
        ControlNetTrainer(_config(tmp_path / "no-data", tmp_path / "out"))
    with pytest.raises(UsageError, match="--proportion_empty_prompts must be a fraction between 0 and 1"):
        ControlNetTrainer(_config(data_dir, tmp_path, proportion_empty_prompts=1.5))
    with pytest.raises(UsageError, match="--validation_layouts .* needs --pretrained_model_name_or_path toy"):
        ControlNetTrainer(_config(data_dir, tmp_path, validation_layouts=4, pretrained_model_name_or_path="x/y"))
    with pytest.raises(UsageError, match="no ControlNet in"):
        load_controlnet(tmp_path)


def test_command_line(data_dir, tmp_path, run_tool):
    done = run_tool(
        "controlnet",
        "--train_data_dir",
        str(data_dir),
        "--output_dir",
        str(tmp_path / "cn"),
        "--max_train_steps",
        "2",
        "--train_batch_size",
        "2",
        "--no_progress",
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["steps"] == 2
    assert (tmp_path / "cn" / "config.json").exists()
    bad = run_tool("controlnet", "--train_data_dir", str(tmp_path / "cn"), "--output_dir", str(tmp_path / "x"))
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "no train.jsonl" in bad.stderr


def test_unlocked_decoder_trains_only_the_decoder_and_is_loaded_back(data_dir, tmp_path):
    trainer = ControlNetTrainer(_config(data_dir, tmp_path, max_train_steps=2, unlock_unet_decoder=True))
    before = {k: v.clone() for k, v in trainer.unet.state_dict().items()}
    trainer.train()
    after = trainer.unet.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"up_blocks", "conv_norm_out", "conv_out"}
    pipe = load_controlnet_pipeline(tmp_path)
    assert all(torch.equal(v, pipe.unet.state_dict()[k]) for k, v in after.items())


def test_sudden_convergence_names_the_largest_rise():
    curve = [
        {"step": s, "relation_accuracy": a} for s, a in ((0, 0.0), (100, 0.05), (200, 0.1), (300, 0.6), (400, 0.65))
    ]
    assert sudden_convergence(curve) == {"step": 300, "from_step": 200, "before": 0.1, "after": 0.6, "rise": 0.5}
    with pytest.raises(ValueError, match="at least two"):
        sudden_convergence(curve[:1])


def test_the_model_card_gives_the_commands_that_reproduce_the_folder(data_dir, tmp_path):
    config = _config(data_dir, tmp_path, max_train_steps=2, use_8bit_adam=True)
    train_controlnet(config)
    card = (tmp_path / "README.md").read_text()
    command = command_line(config)
    assert command in card and "--use_8bit_adam" in command and "--learning_rate 0.001" in command
    assert command.startswith("python -m helpers.controlnet ")  # the module a learner can run
    assert "python -m helpers.control_data --output" in card and "--count 12" in card
    parser = dataclass_parser(ControlNetConfig, "python -m helpers.controlnet", "")
    assert ControlNetConfig(**vars(parser.parse_args(shlex.split(command)[3:] + ["--no_progress"]))) == config


def test_an_sd_shaped_model_trains_at_its_native_resolution(data_dir, tmp_path, sd_folders):
    trainer = ControlNetTrainer(
        _config(
            data_dir,
            tmp_path,
            max_train_steps=2,
            train_batch_size=2,
            pretrained_model_name_or_path=str(sd_folders.fp32),
        )
    )
    result = trainer.train()
    assert trainer.resolution == 64 and trainer.data.latents.shape[-2:] == (8, 8)  # an 8x VAE, where the toy's is 4x
    assert [h["step"] for h in result.history] == [1, 2]
    assert load_controlnet(tmp_path).config.conditioning_embedding_out_channels == SD_EMBEDDING


def test_a_controlnet_for_another_base_stops_before_writing_anything(data_dir, tmp_path, sd_folders, run_tool):
    out = tmp_path / "out"
    with pytest.raises(
        UsageError,
        match=r"the ControlNet in .*toy-controlnet was trained for a base with .*"
        r"cross_attention_dim 96.*, but .*sd-fp32 has .*cross_attention_dim 32.*"
        r"train a new one for this base, or pass the base it was made for",
    ):
        ControlNetTrainer(
            _config(
                data_dir,
                out,
                pretrained_model_name_or_path=str(sd_folders.fp32),
                controlnet_model_name_or_path=str(TOY_CONTROLNET),
            )
        )
    assert not out.exists()
    unet = UNet2DConditionModel.from_pretrained(sd_folders.fp32, subfolder="unet")
    build_controlnet(unet, 8).save_pretrained(tmp_path / "sd-controlnet")
    bad = run_tool(
        "controlnet",
        "--train_data_dir",
        str(data_dir),
        "--output_dir",
        str(out),
        "--controlnet_model_name_or_path",
        str(tmp_path / "sd-controlnet"),
        "--no_progress",
    )
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0, bad.stderr
    assert "vae_scale_factor 8, but toy has" in bad.stderr and "vae_scale_factor 4" in bad.stderr
    assert not out.exists()


def test_an_sd_shaped_run_in_bf16_with_every_memory_saving_keeps_float32_weights(sd_run):
    assert sd_run.dtypes == {
        "vae": torch.bfloat16,
        "text_encoder": torch.bfloat16,
        "unet": torch.float32,
        "controlnet": torch.float32,
    }  # frozen parts in half precision, trained ones float32
    assert sd_run.resolution == 64 and sd_run.latents.shape[-2:] == (8, 8)
    assert [h["step"] for h in sd_run.result.history] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in sd_run.result.history)
    # 8-bit AdamW: less optimizer state than torch AdamW's two float32 moments per parameter
    assert 0 < sd_run.result.optimizer_state_bytes < 8 * sd_run.result.trainable_parameters
    for saved in (sd_run.out, sd_run.out / "unet"):
        weights = load_file(str(saved / "diffusion_pytorch_model.safetensors"))
        assert {t.dtype for t in weights.values()} == {torch.float32}, saved
    assert load_controlnet(sd_run.out).config.conditioning_embedding_out_channels == SD_EMBEDDING
    assert [p.name for p in checkpoints(sd_run.out)] == ["checkpoint-2", "checkpoint-4"]  # the last step too
    controlnet = ControlNetModel.from_pretrained(sd_run.out, subfolder="checkpoint-4/controlnet")
    saved = _weights(sd_run.out)
    assert all(torch.equal(v, saved[k]) for k, v in controlnet.state_dict().items())


def test_an_sd_shaped_run_resumed_after_a_kill_ends_with_the_same_weights(
    sd_run, data_dir, tmp_path, sd_folders, killed_run
):
    out = tmp_path / "killed"
    killed_run(ControlNetTrainer, lambda: train_controlnet(_sd_config(data_dir, out, sd_folders)), step=3)
    assert [p.name for p in checkpoints(out)] == ["checkpoint-2"]
    result = train_controlnet(_sd_config(data_dir, out, sd_folders, resume_from_checkpoint="latest"))
    assert [h["step"] for h in result.history] == [1, 2, 3, 4]
    for part in (".", "unet"):
        full, resumed = _weights(sd_run.out / part), _weights(out / part)
        assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full), part


def test_a_trained_sd_shaped_controlnet_draws_64_px_images_on_its_base(sd_run, sd_folders, data_dir):
    guided = load_controlnet_pipeline(sd_run.out, model=str(sd_folders.fp32))
    saved_unet = _weights(sd_run.out / "unet")
    assert all(torch.equal(v, saved_unet[k]) for k, v in guided.unet.state_dict().items())  # the trained decoder
    rows = control_data.load_dataset(data_dir)[:2]
    prompts, sketches = [r.text for r in rows], [r.conditioning_image for r in rows]
    kw = dict(seed=1, steps=2)
    images = draw(guided, prompts, sketches, **kw)
    assert [im.size for im in images] == [(64, 64), (64, 64)]
    assert [im.tobytes() for im in draw(guided, prompts, sketches, **kw)] == [im.tobytes() for im in images]
    base = load_pipeline(str(sd_folders.fp32))
    base.unet = guided.unet
    off = draw(guided, prompts, sketches, conditioning_scale=0.0, **kw)
    assert [im.tobytes() for im in off] == [im.tobytes() for im in draw(base, prompts, **kw)]
    assert [im.tobytes() for im in off] != [im.tobytes() for im in images]  # the trained ControlNet steers


def test_the_notebooks_sd15_command_runs_on_an_sd_shaped_model(data_dir, tmp_path, sd_folders, run_tool):
    """Notebook 09's GPU command, word for word but for the model, the folders and the sizes (and bf16: a
    CPU has no fp16 training)."""
    words = list(SD15_FLAGS)
    shrunk = {
        "pretrained_model_name_or_path": str(sd_folders.fp32),
        "train_data_dir": str(data_dir),
        "output_dir": str(tmp_path / "cn"),
        "max_train_steps": "2",
        "resolution": "64",
        "mixed_precision": "bf16",
        "train_batch_size": "1",
    }
    done = run_tool("controlnet", *real_branch.replace_flags(words, shrunk), "--no_progress")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["steps"] == 2
    parse = dataclass_parser(ControlNetConfig, "python -m helpers.controlnet", "").parse_args
    shown, ran = (
        vars(parse(SD15_FLAGS)),
        json.loads((tmp_path / "cn" / "train_result.json").read_text()),
    )
    assert shown["mixed_precision"] == "fp16" and shown["resolution"] == 512 and shown["use_8bit_adam"]
    kept = set(shown) - set(shrunk) - {"progress"}
    assert {k: ran["config"][k] for k in kept} == {k: shown[k] for k in kept}  # every other flag as the notebook has it
    assert load_controlnet(tmp_path / "cn").config.conditioning_embedding_out_channels == SD_EMBEDDING
