"""QLoRA on the SD 3.5 Medium-shaped model: a 4-bit NF4 transformer (bitsandbytes' CPU backend), fp32 adapters
on it, no T5, the encoders and VAE parked off the device after caching; and each bad setting as one line.

What needs CUDA (the 4-bit kernels' memory on a 15 GB T4) is measured by ``benchmarks/gpu_notebooks.py``."""

import bitsandbytes as bnb
import pytest
import torch
from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
from safetensors.torch import load_file

from helpers.core.errors import UsageError
from helpers.core.paths import ROOT
from helpers.diffusion import quantize
from helpers.diffusion.lora import WEIGHTS
from helpers.dreambooth import cli
from helpers.dreambooth.base import validation_grid
from helpers.dreambooth.flow_trainer import FlowTrainer
from helpers.dreambooth.trainer import TrainConfig

SUBJECT = str(ROOT / "data" / "subjects" / "toy_dog")
NF4 = str(ROOT / "configs" / "nf4.json")


def _transformer(folders) -> SD3Transformer2DModel:
    return SD3Transformer2DModel.from_pretrained(folders.fp32, subfolder="transformer")


def _inputs(config, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(2, config.in_channels, 8, 8, generator=g),
        encoder_hidden_states=torch.randn(2, 5, config.joint_attention_dim, generator=g),
        pooled_projections=torch.randn(2, config.pooled_projection_dim, generator=g),
        timestep=torch.tensor([500.0, 100.0]),
    )


def test_the_shipped_config_is_nf4_and_bad_files_are_one_line_each(tmp_path):
    assert quantize.read_quantization(NF4) == quantize.Quantization("nf4", False)
    cases = {
        "missing.json": (None, "does not exist"),
        "folder": (None, "is a folder"),
        "broken.json": ("{load_in_4bit: true", "is not a JSON file"),
        "list.json": ("[1]", "holds no JSON object"),
        "eight.json": ('{"load_in_8bit": true}', "asks for an 8-bit base"),
        "extra.json": ('{"load_in_4bit": true, "llm_int8_threshold": 6}', "llm_int8_threshold"),
        "off.json": ('{"load_in_4bit": false}', "does not set load_in_4bit"),
        "int4.json": ('{"load_in_4bit": true, "bnb_4bit_quant_type": "int4"}', "'int4' is unknown"),
    }
    (tmp_path / "folder").mkdir()
    for name, (text, words) in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(UsageError, match=words) as err:
            quantize.read_quantization(tmp_path / name)
        message = str(err.value)
        assert "\n" not in message and ("nf4.json" in message or "one of" in message)


def test_every_linear_layer_becomes_4_bit_and_computes_with_its_dequantized_weights(sd3_folders):
    model = _transformer(sd3_folders)
    linears = {n: m.weight.detach().clone() for n, m in model.named_modules() if type(m) is torch.nn.Linear}
    assert quantize.quantize_linears(model, quantize.Quantization(), torch.float32, "cpu") == len(linears)
    layers = dict(model.named_modules())
    for name, weight in linears.items():
        layer = layers[name]
        assert isinstance(layer, bnb.nn.Linear4bit) and layer.weight.dtype == torch.uint8
        assert layer.weight.numel() == weight.numel() // 2  # two 4-bit codes a byte
        restored = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
        assert restored.shape == weight.shape and (restored - weight).abs().max() <= weight.abs().max() / 4
        x = torch.randn(3, weight.shape[1])
        reference = torch.nn.functional.linear(x, restored, layer.bias)
        assert torch.allclose(layer(x), reference, atol=1e-5)
    assert not any(p.requires_grad for p in model.parameters()) and model.is_loaded_in_4bit
    others = sum(
        p.numel() * p.element_size()
        for n, p in model.named_parameters()
        if not n.endswith(".weight") or n.rsplit(".", 1)[0] not in linears
    )
    # two weights a byte and one fp32 scale per block of 64 weights; biases and everything else as they were
    packed = sum(w.numel() // 2 + -(-w.numel() // 64) * 4 for w in linears.values())
    assert quantize.quantized_bytes(model) == others + packed


def test_the_4_bit_transformer_stays_close_to_its_full_precision_self(sd3_folders):
    full, quantized = _transformer(sd3_folders), _transformer(sd3_folders)
    quantize.quantize_linears(quantized, quantize.Quantization(), torch.float32, "cpu")
    with torch.no_grad():
        want = full(**_inputs(full.config)).sample
        got = quantized(**_inputs(full.config)).sample
    assert 0 < ((got - want).norm() / want.norm()).item() < 0.25


def _config(folders, tmp_path, **kw) -> TrainConfig:
    settings = dict(
        pretrained_model_name_or_path=str(folders.fp16),
        instance_data_dir=SUBJECT,
        instance_prompt="a photo of sks dog",
        class_prompt="a photo of dog",
        with_prior_preservation=True,
        class_data_dir=str(tmp_path / "class"),
        num_class_images=2,
        output_dir=str(tmp_path / "out"),
        max_train_steps=2,
        resolution=64,
        mixed_precision="bf16",
        lora_rank=4,
        max_sequence_length=8,
        without_t5=True,
        use_8bit_adam=True,
        gradient_checkpointing=True,
        checkpointing_steps=0,
        progress=False,
    )
    return TrainConfig(**settings | kw)


def test_a_qlora_run_trains_fp32_adapters_on_a_4_bit_base_and_they_load_into_the_fp16_base(sd3_folders, tmp_path):
    trainer = FlowTrainer(_config(sd3_folders, tmp_path / "q", bnb_quantization_config_path=NF4))
    to_q = trainer.transformer.transformer_blocks[0].attn.to_q
    assert isinstance(to_q.base_layer, bnb.nn.Linear4bit) and to_q.base_layer.weight.dtype == torch.uint8
    trained = {n: p for n, p in trainer.transformer.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n and p.dtype == torch.float32 for n, p in trained.items())
    assert trainer.pipe.text_encoder_3 is None and trainer.clips[0].dtype == torch.bfloat16
    result = trainer.train()
    assert len(result.history) == 2 and all(h["prior_loss"] > 0 for h in result.history)
    assert len(list((tmp_path / "q" / "class").glob("*.png"))) == 2  # drawn by the trainer's own 4-bit pipeline
    data = trainer.data
    assert (data.instance_embeds[:, 77:] == 0).all() and data.instance_embeds.shape[1] == 77 + 8  # no T5: zeros
    assert all(p.device.type == "cpu" for part in [*trainer.encoders, trainer.vae] for p in part.parameters())
    card = (tmp_path / "q" / "out" / "README.md").read_text()
    assert "4-bit NF4 (QLoRA)" in card and "text_encoder_3=None, tokenizer_3=None" in card  # how to load it
    assert 'pipe("a photo of sks dog", max_sequence_length=8)' in card  # sampled as it was trained
    assert "ComfyUI: put `pytorch_lora_weights.safetensors` in `models/loras`" in card
    plain = FlowTrainer(_config(sd3_folders, tmp_path / "plain"))
    plain.train()
    saved = load_file(tmp_path / "q" / "out" / WEIGHTS)
    assert saved.keys() == load_file(tmp_path / "plain" / "out" / WEIGHTS).keys()
    assert all(k.startswith("transformer.") and v.dtype == torch.float32 for k, v in saved.items())
    pipe = StableDiffusion3Pipeline.from_pretrained(sd3_folders.fp16, text_encoder_3=None, tokenizer_3=None)
    pipe.load_lora_weights(tmp_path / "q" / "out")
    lora_b = pipe.transformer.transformer_blocks[0].attn.to_q.lora_B.default_0.weight
    assert torch.equal(lora_b, saved["transformer.transformer_blocks.0.attn.to_q.lora_B.weight"].to(lora_b.dtype))
    assert lora_b.abs().sum() > 0  # trained: the B matrices start at zero


def test_a_validation_brings_the_parked_encoders_back_and_parks_them_again(sd3_folders, tmp_path, monkeypatch):
    moves = []
    real_to = torch.nn.Module.to

    def noted_to(module, *args, **kwargs):
        device = kwargs.get("device", args[0] if args else None)
        if isinstance(module, type(trainer.vae)) and device is not None:
            moves.append(str(device))
        return real_to(module, *args, **kwargs)

    trainer = FlowTrainer(
        _config(
            sd3_folders,
            tmp_path,
            bnb_quantization_config_path=NF4,
            validation_prompt="a photo of sks dog",
            validation_steps=1,
            num_validation_images=1,
            with_prior_preservation=False,
            max_train_steps=1,
        )
    )
    monkeypatch.setattr(torch.nn.Module, "to", noted_to)
    trainer.train()
    assert moves[:1] == ["cpu"] and moves[-1] == "cpu" and len(moves) >= 3  # parked, back for samples, parked
    assert validation_grid(tmp_path / "out", 1).exists()


@pytest.mark.parametrize(
    "flags, words",
    [
        ([f"--bnb_quantization_config_path={NF4}"], "a 4-bit base cannot be trained itself: add --lora_rank"),
        (["--lora_rank=4", "--bnb_quantization_config_path=nowhere.json"], "nowhere.json does not exist"),
    ],
)
def test_a_4_bit_base_without_lora_or_its_file_is_one_line_and_writes_nothing(tmp_path, one_line_error, flags, words):
    argv = ["--pretrained_model_name_or_path=toy-flow", f"--instance_data_dir={SUBJECT}"]
    argv += ["--instance_prompt=a photo of sks dog", f"--output_dir={tmp_path / 'out'}", *flags]
    assert words in one_line_error(cli.main, argv)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag", [f"--bnb_quantization_config_path={NF4}", "--without_t5"])
def test_the_4_bit_base_and_without_t5_on_sd_1x_are_one_line(tmp_path, one_line_error, flag):
    argv = ["--pretrained_model_name_or_path=toy", f"--instance_data_dir={SUBJECT}", "--lora_rank=4"]
    argv += ["--instance_prompt=a photo of sks dog", f"--output_dir={tmp_path / 'out'}", flag]
    assert f"{flag.split('=')[0]} only apply to flow-matching models" in one_line_error(cli.main, argv)
    assert not (tmp_path / "out").exists()


def test_bitsandbytes_without_4_bit_kernels_for_the_device_is_one_line(tmp_path, monkeypatch, one_line_error):
    def no_kernel(*args, **kwargs):
        raise RuntimeError("no 4-bit kernel for this device\nsecond line")

    monkeypatch.setattr(bnb.nn, "Linear4bit", no_kernel)
    argv = ["--pretrained_model_name_or_path=toy-flow", f"--instance_data_dir={SUBJECT}", "--lora_rank=4"]
    argv += ["--instance_prompt=a photo of sks dog", f"--output_dir={tmp_path / 'out'}"]
    line = one_line_error(cli.main, [*argv, f"--bnb_quantization_config_path={NF4}"])
    assert "bitsandbytes' 4-bit kernels on cpu, which did not run (no 4-bit kernel for this device)" in line
    assert not (tmp_path / "out").exists()


def test_a_qlora_run_resumes_where_it_stopped(sd3_folders, tmp_path, killed_run):
    kw = dict(bnb_quantization_config_path=NF4, max_train_steps=4, checkpointing_steps=2, learning_rate=1e-3)
    kw |= dict(with_prior_preservation=False)
    whole = FlowTrainer(_config(sd3_folders, tmp_path / "whole", **kw)).train()
    killed_run(FlowTrainer, lambda: FlowTrainer(_config(sd3_folders, tmp_path / "cut", **kw)).train(), 3)
    assert (tmp_path / "cut" / "out" / "checkpoint-2" / WEIGHTS).exists()
    resumed = FlowTrainer(_config(sd3_folders, tmp_path / "cut", resume_from_checkpoint="latest", **kw)).train()
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in whole.history], rel=1e-5)
