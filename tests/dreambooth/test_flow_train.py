"""The DreamBooth trainer on a flow-matching model: the same command and settings as SD 1.x's, the SD3 script's
flags, full fine-tuning and LoRA on the toy flow model, saved in diffusers' formats and loaded back."""

import json

import pytest
import torch
from conftest import toy_flow_velocity
from diffusers import StableDiffusion3Pipeline
from safetensors.torch import load_file

from helpers.core.paths import ROOT
from helpers.diffusion.generate import generate_images
from helpers.diffusion.lora import WEIGHTS, check_fits
from helpers.diffusion.profiles import load_pipeline
from helpers.dreambooth import cli, flow_step
from helpers.dreambooth.flow_trainer import SD3_LORA_TARGETS, FlowTrainer, lora_targets
from helpers.dreambooth.trainer import TrainConfig, train

SUBJECT = str(ROOT / "data" / "subjects" / "toy_dog")


def _config(tmp_path, **kw) -> TrainConfig:
    settings = dict(
        pretrained_model_name_or_path="toy-flow",
        instance_data_dir=SUBJECT,
        instance_prompt="a photo of sks dog",
        output_dir=str(tmp_path / "out"),
        max_train_steps=2,
        train_batch_size=1,
        checkpointing_steps=0,
        progress=False,
    )
    return TrainConfig(**settings | kw)


def test_a_full_fine_tune_with_prior_preservation_saves_a_pipeline_that_draws(tmp_path):
    result = train(
        _config(
            tmp_path,
            with_prior_preservation=True,
            class_prompt="a photo of dog",
            class_data_dir=str(tmp_path / "class"),
            num_class_images=2,
            validation_prompt="a photo of sks dog",
            validation_steps=2,
            num_validation_images=1,
        )
    )
    assert [sorted(h) for h in result.history][0] == ["instance_loss", "loss", "lr", "prior_loss", "step"]
    assert result.class_images["generated"] == 2 and len(list((tmp_path / "class").glob("*.png"))) == 2
    base, tuned = load_pipeline("toy-flow"), load_pipeline(str(tmp_path / "out"))
    assert isinstance(tuned, StableDiffusion3Pipeline)
    changed = [
        n for n, p in tuned.transformer.named_parameters() if not torch.equal(p, base.transformer.state_dict()[n])
    ]
    assert changed and torch.equal(tuned.vae.encoder.conv_in.weight, base.vae.encoder.conv_in.weight)
    assert (tmp_path / "out" / "validation" / "step-00002.png").exists()
    card = (tmp_path / "out" / "README.md").read_text()
    assert 'StableDiffusion3Pipeline.from_pretrained("path/to/this/folder", text_encoder_3=None' in card
    assert 'pipe("a photo of sks dog", max_sequence_length=0)' in card
    [image] = generate_images(tuned, "a photo of sks dog", 1, num_inference_steps=2, max_sequence_length=0)
    assert image.size == (64, 64)


def test_lora_goes_on_the_sd3_scripts_projections_and_loads_back_exactly_with_load_lora_weights(tmp_path):
    trainer = FlowTrainer(_config(tmp_path, lora_rank=2, learning_rate=1e-2, max_train_steps=5))
    trainer.train()
    keys = load_file(tmp_path / "out" / WEIGHTS).keys()
    assert keys and all(k.startswith("transformer.transformer_blocks.") for k in keys)
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys)  # peft's names, as the SD3 script's
    assert {k.split(".attn.")[1].rsplit(".lora", 1)[0] for k in keys} == {
        t.removeprefix("attn.") for t in SD3_LORA_TARGETS
    }
    pipe = load_pipeline(str(tmp_path / "out"))  # the base from lora_base.json, then pipe.load_lora_weights
    base = load_pipeline("toy-flow")
    trained, loaded, before = (toy_flow_velocity(m) for m in (trainer.transformer, pipe.transformer, base.transformer))
    assert torch.allclose(loaded, trained, atol=1e-5) and not torch.allclose(loaded, before, atol=1e-3)


def _clip_output(pipe, name: str) -> torch.Tensor:
    ids = pipe.tokenizer("a photo of sks dog", return_tensors="pt").input_ids
    with torch.no_grad():
        return getattr(pipe, name)(ids, output_hidden_states=True).hidden_states[-2]


def test_train_text_encoder_adds_the_sd3_scripts_clip_adapters_and_they_load_back(tmp_path):
    trainer = FlowTrainer(
        _config(tmp_path, lora_rank=2, learning_rate=1e-2, text_encoder_lr=1e-2, train_text_encoder=True)
    )
    trainer.train()
    keys = load_file(tmp_path / "out" / WEIGHTS).keys()
    for prefix in ("text_encoder.", "text_encoder_2."):
        mine = [k for k in keys if k.startswith(prefix)]
        assert {k.split(".self_attn.")[1].split(".lora")[0] for k in mine} == {"q_proj", "k_proj", "v_proj", "out_proj"}
    pipe, base = load_pipeline(str(tmp_path / "out")), load_pipeline("toy-flow")
    for name in ("text_encoder", "text_encoder_2"):
        trained, loaded, before = (_clip_output(p, name) for p in (trainer.pipe, pipe, base))
        assert torch.allclose(loaded, trained, atol=1e-5) and not torch.allclose(loaded, before, atol=1e-4)


def test_a_full_fine_tune_with_train_text_encoder_saves_both_clips_trained(tmp_path):
    train(_config(tmp_path, learning_rate=1e-3, train_text_encoder=True))
    tuned, base = load_pipeline(str(tmp_path / "out")), load_pipeline("toy-flow")
    for name in ("text_encoder", "text_encoder_2"):
        assert not torch.allclose(_clip_output(tuned, name), _clip_output(base, name), atol=1e-5)


def test_lora_blocks_and_layers_choose_where_the_adapters_go(tmp_path):
    assert lora_targets("attn.to_q, attn.to_v", "0,3") == [
        "transformer_blocks.0.attn.to_q",
        "transformer_blocks.0.attn.to_v",
        "transformer_blocks.3.attn.to_q",
        "transformer_blocks.3.attn.to_v",
    ]
    train(_config(tmp_path, lora_rank=2, lora_layers="attn.to_q,attn.to_v", lora_blocks="1"))
    keys = load_file(tmp_path / "out" / WEIGHTS).keys()
    assert {k.split(".lora")[0] for k in keys} == {
        "transformer.transformer_blocks.1.attn.to_q",
        "transformer.transformer_blocks.1.attn.to_v",
    }


def test_the_sd3_flags_reach_the_step(tmp_path):
    trainer = FlowTrainer(
        _config(tmp_path, weighting_scheme="mode", mode_scale=0.5, precondition_outputs=0, max_sequence_length=0)
    )
    assert (trainer.objective.weighting_scheme, trainer.objective.mode_scale) == ("mode", 0.5)
    assert trainer.precondition_outputs is False and trainer.pipeline_kwargs == {"max_sequence_length": 0}
    default = FlowTrainer(_config(tmp_path / "d"))
    assert default.precondition_outputs is True and default.objective.weighting_scheme == "logit_normal"
    flipped = FlowTrainer(_config(tmp_path / "f", random_flip=True, center_crop=True, cache_latents=True, seed=3))
    data = flipped.prepare()
    want = flow_step.prepare_flow_data(
        flipped.pipe, *_photos(), [], None, 64, 0, flow_step.Augment(True, True, 3, sample=True)
    )
    assert torch.equal(data.instance_latents, want.instance_latents) and data.instance_latent_std is not None
    assert not torch.equal(data.instance_latents, default.prepare().instance_latents)  # some photos flipped


def _photos() -> tuple[list, list[str]]:
    from helpers.dreambooth.instances import load_instances

    instances = load_instances(SUBJECT, 64, "a photo of sks dog", None)
    return instances.images, instances.prompts


def test_a_resumed_full_fine_tune_ends_where_an_unbroken_one_does(tmp_path, killed_run):
    whole = train(_config(tmp_path / "whole", max_train_steps=4, checkpointing_steps=2))
    killed_run(
        FlowTrainer, lambda: FlowTrainer(_config(tmp_path / "cut", max_train_steps=4, checkpointing_steps=2)).train(), 3
    )
    resumed = train(
        _config(tmp_path / "cut", max_train_steps=4, checkpointing_steps=2, resume_from_checkpoint="latest")
    )
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in whole.history], rel=1e-5)


@pytest.mark.parametrize("clips", [False, True])
def test_a_lora_run_checkpoints_its_adapters_only_and_resumes_where_it_stopped(tmp_path, killed_run, clips):
    kw = dict(lora_rank=2, learning_rate=1e-3, max_train_steps=4, checkpointing_steps=2, train_text_encoder=clips)
    whole = train(_config(tmp_path / "whole", **kw))
    killed_run(FlowTrainer, lambda: FlowTrainer(_config(tmp_path / "cut", **kw)).train(), 3)
    checkpoint = tmp_path / "cut" / "out" / "checkpoint-2"
    assert (checkpoint / WEIGHTS).exists() and not list(checkpoint.glob("**/diffusion_pytorch_model*"))
    resumed = train(_config(tmp_path / "cut", resume_from_checkpoint="latest", **kw))
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in whole.history], rel=1e-5)


@pytest.mark.parametrize(
    "flag, words",
    [
        ("--snr_gamma=5", "--snr_gamma does not apply to"),
        ("--offset_noise", "--offset_noise does not apply to"),
        ("--lora_rank=4 --output_kohya_format", "ComfyUI loads its pytorch_lora_weights.safetensors as it is"),
    ],
)
def test_a_unet_only_flag_on_a_flow_model_is_one_line_and_writes_nothing(tmp_path, one_line_error, flag, words):
    argv = ["--pretrained_model_name_or_path=toy-flow", f"--instance_data_dir={SUBJECT}"]
    argv += ["--instance_prompt=a photo of sks dog", f"--output_dir={tmp_path / 'out'}", *flag.split()]
    line = one_line_error(cli.main, argv)
    assert words in line and "flow-matching" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "flag, words",
    [
        ("--weighting_scheme=logit_normal", "--weighting_scheme only apply to flow-matching models"),
        ("--precondition_outputs=1", "--precondition_outputs only apply to flow-matching models"),
        ("--cache_latents", "--cache_latents only apply to flow-matching models"),
    ],
)
def test_a_flow_flag_on_sd_1x_is_one_line_and_writes_nothing(tmp_path, one_line_error, flag, words):
    argv = [f"--instance_data_dir={SUBJECT}", "--instance_prompt=a photo of sks dog"]
    argv += [f"--output_dir={tmp_path / 'out'}", flag]
    assert words in one_line_error(cli.main, argv)
    assert not (tmp_path / "out").exists()


def test_an_unknown_weighting_scheme_is_one_line(tmp_path, one_line_error):
    argv = ["--pretrained_model_name_or_path=toy-flow", f"--instance_data_dir={SUBJECT}"]
    argv += ["--instance_prompt=a photo of sks dog", f"--output_dir={tmp_path / 'out'}", "--weighting_scheme=uniform"]
    line = one_line_error(cli.main, argv)
    assert "--weighting_scheme 'uniform' is unknown" in line and "logit_normal" in line
    assert not (tmp_path / "out").exists()


def test_a_flow_lora_does_not_load_into_sd_and_says_so_in_one_line(tmp_path):
    from helpers.core.errors import UsageError

    train(_config(tmp_path, lora_rank=2))
    with pytest.raises(UsageError, match="does not fit this pipeline: transformer.transformer_blocks") as err:
        check_fits(load_pipeline("toy"), tmp_path / "out")
    assert "\n" not in str(err.value)
    assert json.loads((tmp_path / "out" / "lora_base.json").read_text())["rank"] == 2


def test_an_sd_lora_does_not_load_into_a_flow_model_and_says_so_in_one_line(tmp_path):
    from helpers.core.errors import UsageError

    train(_config(tmp_path, pretrained_model_name_or_path="toy", lora_rank=2))
    with pytest.raises(UsageError, match="does not fit this pipeline: unet.") as err:
        check_fits(load_pipeline("toy-flow"), tmp_path / "out")
    assert "\n" not in str(err.value) and "trained on 'toy'" in str(err.value)
