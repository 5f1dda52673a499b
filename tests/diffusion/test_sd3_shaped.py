"""The SD 3.5 Medium-shaped fixture (tests/sd3_shaped.py): it has the hub model's structure, saves, reloads
and draws on the CPU, so that the real flow-matching path can be tested without the gated download."""

import numpy as np
import pytest
import sd3_shaped
import sd_shaped
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
from transformers import T5Config, T5TokenizerFast

PROMPT = "a photo of sks dog"
TOY_PROMPTS = [PROMPT, "a photo of a red dog on the left"]


def _load(folder, **kw) -> StableDiffusion3Pipeline:
    pipe = StableDiffusion3Pipeline.from_pretrained(folder, **kw)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe(sd3_folders):
    return _load(sd3_folders.fp32)


def _dtypes(pipe) -> dict[str, torch.dtype]:
    names = ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")
    return {name: getattr(pipe, name).dtype for name in names}


def test_the_fp32_folder_reloads_with_every_sd3_part_in_float32(sd3_folders, pipe):
    assert sd_shaped.disk_dtypes(sd3_folders.fp32) == {"F32"}
    assert set(_dtypes(pipe).values()) == {torch.float32}
    assert pipe.text_encoder_3 is not None and pipe.tokenizer_3 is not None
    assert type(pipe.tokenizer_3).__name__ == "T5Tokenizer"  # T5TokenizerFast is its alias in transformers 5


def test_the_fp16_copy_is_float16_on_disk_and_loads_as_float32_when_asked(sd3_folders):
    assert sd_shaped.disk_dtypes(sd3_folders.fp16) == {"F16"}
    assert set(_dtypes(_load(sd3_folders.fp16, dtype=torch.float32)).values()) == {torch.float32}
    asked = _load(sd3_folders.fp16, dtype=torch.float16)
    assert set(_dtypes(asked).values()) == {torch.float16}
    # T5's feed-forward output layers stay in float32 (transformers' _keep_in_fp32_modules), as on a GPU.
    wo = asked.text_encoder_3.encoder.block[0].layer[-1].DenseReluDense.wo
    assert wo.weight.dtype == torch.float32


def test_the_fp16_copy_loaded_without_a_dtype_mixes_float32_models_and_float16_encoders(sd3_folders):
    # diffusers loads its models in float32 unless told otherwise; transformers 5 keeps the saved float16.
    # The pipeline then fails on the first layer that meets both, so loading code must always pass a dtype.
    assert _dtypes(_load(sd3_folders.fp16)) == {
        "transformer": torch.float32,
        "vae": torch.float32,
        "text_encoder": torch.float16,
        "text_encoder_2": torch.float16,
        "text_encoder_3": torch.float16,
    }


def test_the_transformer_is_an_mmdit_x_on_16_latent_channels(pipe):
    config = pipe.transformer.config
    assert (config.in_channels, config.out_channels, config.patch_size) == (16, 16, 2)
    assert config.qk_norm == "rms_norm"
    dual = [block.attn2 is not None for block in pipe.transformer.transformer_blocks]
    assert dual == [i in config.dual_attention_layers for i in range(config.num_layers)]
    assert dual[0] and not all(dual)  # the first layers only, as in SD 3.5 Medium
    assert config.caption_projection_dim == config.num_attention_heads * config.attention_head_dim
    assert config.joint_attention_dim == pipe.text_encoder_3.config.d_model


def test_the_vae_downsamples_8x_to_16_shifted_and_scaled_channels(pipe):
    assert pipe.vae_scale_factor == 8
    config = pipe.vae.config
    assert (config.scaling_factor, config.shift_factor) == (1.5305, 0.0609)
    assert pipe.vae.quant_conv is None and pipe.vae.post_quant_conv is None
    with torch.no_grad():
        latents = pipe.vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mode()
    assert latents.shape == (1, 16, 8, 8)


def test_the_scheduler_shifts_sigmas_by_3_as_sd3s(pipe):
    assert pipe.scheduler.config.shift == 3.0
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(sigmas=[1.0, 0.5])
    # sigma -> 3 sigma / (1 + 2 sigma): halfway in training time is three quarters noise.
    assert scheduler.sigmas.tolist() == pytest.approx([1.0, 0.75, 0.0])


def test_encode_prompt_pads_the_two_clips_to_t5s_width_and_appends_t5s_tokens(pipe):
    clip_l, clip_g, t5 = pipe.text_encoder.config, pipe.text_encoder_2.config, pipe.text_encoder_3.config
    with torch.no_grad():
        embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
            PROMPT, None, None, device="cpu", do_classifier_free_guidance=True, max_sequence_length=16
        )
        t5_alone = pipe.text_encoder_3(
            pipe.tokenizer_3(PROMPT, padding="max_length", max_length=16, return_tensors="pt").input_ids
        )
    clip_width = clip_l.hidden_size + clip_g.hidden_size
    assert embeds.shape == negative.shape == (1, pipe.tokenizer.model_max_length + 16, t5.d_model) == (1, 93, 96)
    assert pooled.shape == negative_pooled.shape == (1, clip_l.projection_dim + clip_g.projection_dim) == (1, 64)
    assert pooled.shape[-1] == pipe.transformer.config.pooled_projection_dim
    clip_part = embeds[:, :77]
    assert clip_part[..., :clip_width].ne(0).any(dim=-1).all()
    assert torch.equal(clip_part[..., clip_width:], torch.zeros_like(clip_part[..., clip_width:]))
    assert torch.allclose(embeds[:, 77:], t5_alone[0])


def test_two_steps_on_the_cpu_draw_a_finite_image_the_seed_decides(pipe):
    def draw(seed: int) -> np.ndarray:
        generator = torch.Generator().manual_seed(seed)
        kw = dict(num_inference_steps=2, height=64, width=64, output_type="np", generator=generator)
        return pipe(PROMPT, **kw).images

    first = draw(0)
    assert first.shape == (1, 64, 64, 3) and np.isfinite(first).all()
    assert np.array_equal(first, draw(0))
    assert not np.array_equal(first, draw(1))


@pytest.mark.parametrize("prompt", TOY_PROMPTS)
def test_the_t5_tokenizer_reloads_and_round_trips_toy_prompts_word_by_word(sd3_folders, prompt):
    tok = T5TokenizerFast.from_pretrained(sd3_folders.fp32 / "tokenizer_3")
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    ids = tok(prompt).input_ids
    assert ids == sd3_shaped.t5_tokenizer()(prompt).input_ids
    assert ids[-1] == tok.eos_token_id and tok.unk_token_id not in ids
    assert len(ids) == len(prompt.split()) + 1  # every toy word one token, then </s>
    assert tok.decode(ids, skip_special_tokens=True) == prompt
    assert len(tok) <= T5Config.from_pretrained(sd3_folders.fp32 / "text_encoder_3").vocab_size


def test_an_unknown_word_falls_back_to_letters_not_unk():
    tok = sd3_shaped.t5_tokenizer()
    ids = tok("a zebra").input_ids
    assert tok.unk_token_id not in ids and tok.decode(ids, skip_special_tokens=True) == "a zebra"
    assert len(ids) > 3
