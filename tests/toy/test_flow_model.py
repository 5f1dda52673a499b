"""The toy flow-matching pipeline (SD3 family) and its pretraining step and loop."""

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from safetensors.torch import load_file
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from helpers.toy import flow_model, flow_pretrain

PROMPT = "a photo of a red dog on the left"


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def pipe():
    return flow_model.build_pipeline()


def _sample(pipe, steps: int = 2):
    return pipe(
        [PROMPT],
        num_inference_steps=steps,
        guidance_scale=4.0,
        height=64,
        width=64,
        max_sequence_length=flow_model.MAX_SEQUENCE_LENGTH,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images


def test_the_pipeline_is_made_of_the_sd3_familys_classes(pipe):
    assert isinstance(pipe, StableDiffusion3Pipeline)
    assert isinstance(pipe.transformer, SD3Transformer2DModel)
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler) and pipe.scheduler.config.shift == 1.0
    assert isinstance(pipe.vae, AutoencoderKL) and pipe.vae.config.shift_factor == 0.0
    assert isinstance(pipe.text_encoder, CLIPTextModelWithProjection)
    assert isinstance(pipe.text_encoder_2, CLIPTextModelWithProjection)
    assert pipe.text_encoder_3 is None and pipe.tokenizer_3 is None
    assert 3.4e6 < flow_model.parameter_count(pipe.transformer) < 3.6e6


def test_the_second_encoder_is_the_toy_encoder_read_one_layer_deeper(pipe):
    toy = CLIPTextModel.from_pretrained(flow_model.TOY_SD, subfolder="text_encoder")
    ids = pipe.tokenizer([PROMPT], padding="max_length", max_length=24, return_tensors="pt").input_ids
    with torch.no_grad():
        mine, deeper = toy(ids, output_hidden_states=True), pipe.text_encoder_2(ids, output_hidden_states=True)
    assert torch.allclose(deeper.hidden_states[-2], mine.hidden_states[-1], atol=1e-6)
    assert torch.allclose(deeper.text_embeds, mine.pooler_output, atol=1e-6)


def test_the_caption_conditions_are_the_two_clips_side_by_side_and_no_t5(pipe):
    cache = flow_pretrain.cache_captions(pipe, [PROMPT, "a photo of a cat", PROMPT])
    assert cache.embeds.shape == (3, 24, flow_model.TEXT_WIDTH) and cache.pooled.shape == (3, flow_model.TEXT_WIDTH)
    assert cache.index.tolist() == [1, 2, 1]  # row 0 is the empty caption's
    embeds, _ = cache.batch(torch.tensor([0, 1]), torch.tensor([False, True]))
    assert torch.equal(embeds[0], cache.embeds[1]) and torch.equal(embeds[1], cache.embeds[0])


def test_a_two_step_sample_is_a_64x64_image(pipe):
    assert _sample(pipe).shape == (1, 64, 64, 3)


def test_save_and_load_round_trip_in_safetensors_under_25_mb(pipe, tmp_path):
    pipe.save_pretrained(tmp_path, safe_serialization=True)
    files = [f for f in tmp_path.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) < 25e6
    assert not [f for f in files if f.suffix in (".bin", ".pt")]
    back = flow_model.load_pipeline(tmp_path)
    assert back.text_encoder_3 is None
    assert (_sample(back) == _sample(pipe)).all()


def test_one_training_step_is_the_velocity_mse_in_closed_form(pipe):
    torch.manual_seed(1)
    x0 = torch.randn(3, 8, 16, 16)
    cache = flow_pretrain.cache_captions(pipe, [PROMPT, "a photo of a cat", "a photo of a cup"])
    embeds, pooled = cache.batch(torch.arange(3), torch.zeros(3, dtype=torch.bool))
    with torch.no_grad():
        loss = flow_pretrain.step_loss(
            pipe.transformer,
            flow_model.scheduler(),
            flow_pretrain.FlowObjective(),
            x0,
            embeds,
            pooled,
            generator=torch.Generator().manual_seed(0),
        )
        g = torch.Generator().manual_seed(0)
        u = torch.sigmoid(torch.normal(0.0, 1.0, (3,), generator=g))
        eps = torch.randn(x0.shape, generator=g)
        sigma = (1000 - torch.floor(1000 * u)) / 1000  # shift 1: the scheduler's sigmas are 1000/1000 ... 1/1000
        s = sigma[:, None, None, None]
        pred = pipe.transformer(
            hidden_states=(1 - s) * x0 + s * eps,
            timestep=1000 * sigma,
            encoder_hidden_states=embeds,
            pooled_projections=pooled,
        ).sample
    assert torch.allclose(loss, torch.mean((pred - (eps - x0)) ** 2), rtol=1e-5)


def test_a_killed_and_resumed_loop_ends_with_the_weights_of_an_uninterrupted_one(tmp_path, monkeypatch):
    monkeypatch.setattr(flow_pretrain, "SAVE_EVERY_SECONDS", 0.0)
    monkeypatch.setattr(flow_pretrain, "layout_indices", lambda captions: list(range(len(captions))))
    kw = dict(steps=4, batch_size=4, seed=0, dataset_size=8, lr=1e-3, layout_fraction=0.5, object_weight=4.0)
    _, whole = flow_pretrain.train_flow(tmp_path / "a" / "flow", **kw)
    real, calls = flow_pretrain.step_loss, [0]

    def killed(*args, **kwargs):
        calls[0] += 1
        if calls[0] > 2:
            raise Killed
        return real(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(flow_pretrain, "step_loss", killed)
        with pytest.raises(Killed):
            flow_pretrain.train_flow(tmp_path / "b" / "flow", **kw)
    assert (flow_pretrain.flow_stage_dir(tmp_path / "b" / "flow") / "state.pt").exists()
    _, resumed = flow_pretrain.train_flow(tmp_path / "b" / "flow", **kw)
    name = "transformer/diffusion_pytorch_model.safetensors"
    a, b = load_file(whole / name), load_file(resumed / name)
    assert all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(0)  # build_pipeline's seed: the weights the loop started from
    start = flow_model.transformer().state_dict()
    assert not any(torch.equal(a[k], start[k]) for k in ("proj_out.weight", "transformer_blocks.0.ff.net.2.weight"))
