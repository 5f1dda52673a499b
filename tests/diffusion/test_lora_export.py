"""A LoRA in kohya's format for A1111 and ComfyUI, and a LoRA whose alpha survives saving."""

import numpy as np
import pytest
from safetensors.torch import load_file

from helpers.core.errors import UsageError
from helpers.core.paths import ROOT
from helpers.diffusion.generate import generate_images
from helpers.diffusion.lora_export import KOHYA_WEIGHTS, export_kohya
from helpers.diffusion.profiles import load_pipeline
from helpers.dreambooth.trainer import TrainConfig, Trainer

PROMPT = "a photo of sks dog"


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A rank-4, alpha-8 LoRA of UNet and text encoder, trained hard enough to change the images."""
    out = tmp_path_factory.mktemp("lora")
    trainer = Trainer(
        TrainConfig(
            instance_data_dir=str(ROOT / "data" / "subjects" / "toy_dog"),
            instance_prompt=PROMPT,
            output_dir=str(out),
            max_train_steps=3,
            learning_rate=1e-2,
            lora_rank=4,
            lora_alpha=8,
            train_text_encoder=True,
            output_kohya_format=True,
            checkpointing_steps=0,
            progress=False,
        )
    )
    trainer.train()
    live = generate_images(trainer._live_pipeline(), PROMPT, 2, num_inference_steps=10)
    return out, live


def _draw(pipe) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.int16) for im in generate_images(pipe, PROMPT, 2, num_inference_steps=10)])


def test_the_saved_lora_draws_what_the_trained_model_drew_alpha_included(lora_run):
    out, live = lora_run
    base = _draw(load_pipeline("toy"))
    reloaded_pipe = load_pipeline("toy")
    reloaded_pipe.load_lora_weights(str(out))
    reloaded = _draw(reloaded_pipe)
    trained = np.stack([np.asarray(im, dtype=np.int16) for im in live])
    assert np.abs(trained - base).mean() > 5  # the adapters change the images
    assert np.abs(trained - reloaded).max() <= 1  # alpha/rank = 2, not 1, after loading


def test_the_kohya_export_draws_the_same_images_through_load_lora_weights(lora_run):
    out, _ = lora_run
    kohya = load_file(str(out / KOHYA_WEIGHTS))
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in kohya  # as A1111 names it
    assert "lora_unet_down_blocks_2_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight" in kohya
    assert {k.split("_")[0] + "_" + k.split("_")[1] for k in kohya} == {"lora_unet", "lora_te"}
    alphas = {k: v for k, v in kohya.items() if k.endswith(".alpha")}
    assert alphas and {float(v) for v in alphas.values()} == {8.0}
    assert len(alphas) * 3 == len(kohya)  # a down, an up and an alpha per module
    diffusers_format, from_kohya = load_pipeline("toy"), load_pipeline("toy")
    diffusers_format.load_lora_weights(str(out))
    from_kohya.load_lora_weights(str(out / KOHYA_WEIGHTS))
    assert np.abs(_draw(diffusers_format) - _draw(from_kohya)).max() == 0


def test_exporting_a_folder_without_a_lora_is_one_line(tmp_path, run_tool):
    with pytest.raises(UsageError, match=r"holds no LoRA \(pytorch_lora_weights.safetensors\): pass the --output_dir"):
        export_kohya(tmp_path)
    done = run_tool("export_lora", str(tmp_path))
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0 and "holds no LoRA" in done.stderr
