"""LoRA DreamBooth on the toy profile: what is trained, what is saved, and how it loads."""

import json
import shutil

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file, save_file

from helpers.core.errors import UsageError
from helpers.core.paths import ROOT
from helpers.diffusion import lora
from helpers.diffusion.profiles import TOY_MODEL, load_pipeline
from helpers.dreambooth.trainer import TrainConfig, train

SUBJECT = str(ROOT / "data" / "subjects" / "toy_dog")


def _config(out, **kw) -> TrainConfig:
    base = dict(
        instance_data_dir=SUBJECT,
        instance_prompt="a photo of sks dog",
        output_dir=str(out),
        progress=False,
        lora_rank=4,
    )
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lora")
    result = train(
        _config(
            out,
            max_train_steps=4,
            learning_rate=1e-2,
            checkpointing_steps=0,
            train_text_encoder=True,
            use_8bit_adam=True,
        )
    )
    return out, result


def _expected_trainable(pipe, rank: int) -> int:
    """r * (d_in + d_out) for every targeted projection of the UNet and the text encoder."""
    total = 0
    for model, targets in ((pipe.unet, lora.UNET_TARGETS), (pipe.text_encoder, lora.TEXT_ENCODER_TARGETS)):
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and any(name.endswith(t) for t in targets):
                total += rank * (module.in_features + module.out_features)
    return total


def test_only_the_adapters_train_and_are_saved(lora_run):
    out, result = lora_run
    base = StableDiffusionPipeline.from_pretrained(TOY_MODEL)
    assert result.trainable_parameters == _expected_trainable(base, 4)
    assert json.loads((out / lora.BASE).read_text())["base_model"] == "toy"
    assert not (out / "unet").exists()
    unet_bytes = (TOY_MODEL / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size
    assert (out / lora.WEIGHTS).stat().st_size * 20 < unet_bytes


def test_loaded_adapters_add_scaled_b_times_a(lora_run):
    out, _ = lora_run
    pipe = StableDiffusionPipeline.from_pretrained(TOY_MODEL)
    name = "down_blocks.2.attentions.0.transformer_blocks.0.attn2.to_q"
    before = dict(pipe.unet.named_modules())[name].weight.detach().clone()
    saved = load_file(str(out / lora.WEIGHTS))
    down = saved[f"unet.{name}.lora.down.weight"]
    up = saved[f"unet.{name}.lora.up.weight"]
    assert not torch.all(up == 0), "the up matrix starts at zero and must have trained"
    lora.load_lora(pipe, out)
    pipe.fuse_lora()
    after = dict(pipe.unet.named_modules())[name].weight
    torch.testing.assert_close(after, before + up @ down, atol=1e-5, rtol=1e-4)  # alpha == rank: scale 1


def test_a_lora_folder_works_as_a_model(lora_run):
    out, _ = lora_run
    pipe = load_pipeline(str(out))
    base = load_pipeline("toy")
    kw = dict(num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt")
    tuned = pipe("a photo of sks dog", **kw).images
    kw["generator"] = torch.Generator().manual_seed(0)
    assert not torch.allclose(tuned, base("a photo of sks dog", **kw).images)


def test_a_lora_from_another_base_is_one_clear_line(lora_run, tmp_path):
    out, _ = lora_run
    wrong = tmp_path / "wrong"
    shutil.copytree(out, wrong)
    weights = load_file(str(wrong / lora.WEIGHTS))
    key = next(k for k in weights if k.startswith("unet.") and k.endswith("to_k.lora.down.weight"))
    weights[key] = torch.zeros(4, 768)  # as if trained on SD 1.5, whose text features are 768 wide
    save_file(weights, str(wrong / lora.WEIGHTS))
    with pytest.raises(UsageError, match=r"does not fit this pipeline: .*to_k is \d+x768 in the LoRA but \d+x\d+ here"):
        lora.load_lora(StableDiffusionPipeline.from_pretrained(TOY_MODEL), wrong)


@pytest.mark.parametrize("rank", [0, -2])
def test_lora_rank_must_be_positive(rank, tmp_path):
    config = _config(tmp_path, lora_rank=rank)
    with pytest.raises(UsageError, match="--lora_rank must be a positive integer"):
        config.check()


def test_the_same_seed_gives_the_same_adapters(tmp_path):
    weights = []
    for run, global_seed in (("a", 1), ("b", 2)):
        torch.manual_seed(global_seed)  # whatever the global random state, --seed decides
        train(_config(tmp_path / run, max_train_steps=2, learning_rate=1e-3, checkpointing_steps=0, seed=3))
        weights.append(load_file(str(tmp_path / run / lora.WEIGHTS)))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_checkpoints_hold_the_adapters_only_and_resume_exactly(tmp_path, killed_run):
    from helpers.dreambooth.trainer import Trainer
    from helpers.training.loop import checkpoints

    def run(out, **kw):
        return train(
            _config(
                out,
                max_train_steps=6,
                checkpointing_steps=3,
                learning_rate=1e-2,
                train_text_encoder=True,
                use_8bit_adam=True,
                seed=5,
                **kw,
            )
        )

    run(tmp_path / "full")
    killed_run(Trainer, lambda: run(tmp_path / "killed"), step=4)
    [checkpoint] = checkpoints(tmp_path / "killed")
    saved = {p.name for p in checkpoint.iterdir()}
    assert lora.WEIGHTS in saved and not any(name.startswith("model") for name in saved)
    unet_bytes = (ROOT / "data" / "toy-sd" / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size
    assert sum(p.stat().st_size for p in checkpoint.iterdir()) * 5 < unet_bytes
    result = run(tmp_path / "killed", resume_from_checkpoint="latest")
    full, resumed = (load_file(str(tmp_path / run_dir / lora.WEIGHTS)) for run_dir in ("full", "killed"))
    assert full.keys() == resumed.keys()
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    assert [h["step"] for h in result.history] == list(range(1, 7))
    with pytest.raises(UsageError, match="does not fit this model.*--lora_rank"):
        train(
            _config(
                tmp_path / "killed",
                max_train_steps=6,
                lora_rank=8,
                train_text_encoder=True,
                resume_from_checkpoint=str(checkpoint),
            )
        )
    with pytest.raises(UsageError, match="text-encoder adapters and this run trains none.*text-encoder choice"):
        train(
            _config(
                tmp_path / "killed", max_train_steps=6, train_text_encoder=False, resume_from_checkpoint=str(checkpoint)
            )
        )
