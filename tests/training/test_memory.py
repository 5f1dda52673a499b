import sys

import pytest

from helpers.core.paths import ROOT
from helpers.training import memory


def test_terms_add_up_and_the_recipes_order_as_expected():
    rows = {r["recipe"]: r for r in memory.table()}
    for r in rows.values():
        assert r["total"] == pytest.approx(
            sum(v for k, v in r.items() if k not in ("recipe", "total", "peak at")), abs=0.05
        )
    assert rows["fp32, AdamW"]["total"] > 15 > rows["+ gradient checkpointing (T4 recipe)"]["total"]
    assert rows["+ 8-bit AdamW"]["total"] < rows["+ fp16 mixed precision"]["total"]
    assert rows["T4 recipe + text encoder"]["total"] > rows["+ gradient checkpointing (T4 recipe)"]["total"]


def test_each_trick_moves_the_peak_to_the_moment_it_leaves_largest():
    peaks = {r["recipe"]: r["peak at"] for r in memory.table()}
    # 32-bit AdamW's step temporaries make the optimizer step the peak; 8-bit AdamW has none, so the
    # forward pass's activations are; checkpointing shrinks those, and all gradients at once are.
    assert peaks["fp32, AdamW"] == peaks["+ fp16 mixed precision"] == "optimizer step"
    assert peaks["+ 8-bit AdamW"] == "end of forward"
    assert peaks["+ gradient checkpointing (T4 recipe)"] == "end of backward"
    moments, _ = memory._moments(memory.MemoryConfig(use_8bit_adam=False, gradient_checkpointing=False))
    total = memory.estimate(memory.MemoryConfig(use_8bit_adam=False, gradient_checkpointing=False))
    assert total["gradients"] + total["optimizer step temporaries"] == sum(moments["optimizer step"].values())


def test_optimizer_state_bytes_per_parameter():
    assert memory.adam_state_bytes(1000, eight_bit=False) == 8000
    assert memory.adam_state_bytes(256_000, eight_bit=True) == pytest.approx(256_000 * 2 + 2 * 1000 * 4)


def test_activations_grow_with_batch_and_resolution_and_shrink_with_checkpointing():
    base = memory.MemoryConfig(gradient_checkpointing=False)
    act = lambda **kw: memory.estimate(memory.MemoryConfig(**{**base.__dict__, **kw}))  # noqa: E731
    assert act(resolution=768)["total"] > act()["total"]
    assert act(train_batch_size=2)["total"] > act()["total"]
    assert act(gradient_checkpointing=True)["total"] < act()["total"]


def test_sd15_lora_parameter_count_matches_the_real_architecture():
    import torch
    from diffusers import UNet2DConditionModel

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from sd15_memory import UNET_CONFIG

    with torch.device("meta"):
        unet = UNet2DConditionModel(**UNET_CONFIG)
    per_rank = sum(
        m.in_features + m.out_features
        for name, m in unet.named_modules()
        if isinstance(m, torch.nn.Linear)
        and name.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v", "0")
        and ".attn" in name
    )
    assert memory.sd15_lora_params_per_rank()["unet"] == per_rank


def test_lora_trains_the_adapters_and_freezes_the_unet():
    full = memory.estimate(memory.MemoryConfig())
    lora = memory.estimate(memory.MemoryConfig(lora_rank=4))
    adapters = 4 * memory.sd15_lora_params_per_rank()["unet"]
    assert lora["weights (trainable, fp32)"] == adapters * 4
    assert full["frozen base"] == 0 and lora["frozen base"] == memory.SD15_PARAMS["unet"] * 2
    assert lora["encoders and VAE"] == full["encoders and VAE"]
    assert lora["total"] < full["total"] - 5 * memory.GiB


def _sd35_parts():
    import torch
    from accelerate import init_empty_weights

    sys.path.insert(0, str(ROOT / "tests"))
    import sd3_shaped
    import sd_shaped

    with init_empty_weights(include_buffers=False):
        tok = sd_shaped.tokenizer()
        return {
            "transformer": sd3_shaped.transformer("sd35"),
            "clip_l": sd3_shaped.clip_encoder(tok, sd3_shaped.CLIP_L["sd35"], "sd35"),
            "clip_g": sd3_shaped.clip_encoder(tok, sd3_shaped.CLIP_G["sd35"], "sd35"),
            "t5": sd3_shaped.t5_encoder(sd3_shaped.t5_tokenizer(), "sd35"),
            "vae": sd3_shaped.vae("sd35"),
        }, torch


def test_sd35_counts_are_those_of_its_configs():
    from helpers.dreambooth.flow_trainer import SD3_LORA_TARGETS

    parts, torch = _sd35_parts()
    assert {name: model.num_parameters() for name, model in parts.items()} == memory.SD35_PARAMS
    transformer = parts["transformer"]
    linears = {n: m for n, m in transformer.named_modules() if type(m) is torch.nn.Linear}
    assert sum(m.weight.numel() for m in linears.values()) == memory.SD35_LINEAR_WEIGHTS
    adapted = [m for n, m in linears.items() if any(n.endswith(t) for t in SD3_LORA_TARGETS)]
    assert sum(m.in_features + m.out_features for m in adapted) == memory.SD35_LORA_PARAMS_PER_RANK
    assert transformer.pos_embed.pos_embed.numel() == memory.SD35_POSITION_TABLE
    wo = sum(m.weight.numel() for n, m in parts["t5"].named_modules() if n.endswith(".wo"))
    assert wo == memory.SD35_T5_FP32 and "wo" in parts["t5"]._keep_in_fp32_modules


def test_sd35_activation_coefficients_are_what_the_benchmark_measures():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import sd35_activations

    measured = sd35_activations.measure(rank=16)
    for mode, per_token in memory.SD35_ACTIVATION_BYTES_PER_TOKEN.items():
        assert per_token["image"] == pytest.approx(measured["per_image_token"][mode], rel=0.01)
        assert per_token["text"] == pytest.approx(measured["per_text_token"][mode], rel=0.01)


def test_sd35_recipes_shrink_step_by_step_to_the_t4_recipe_and_t5_is_the_largest_step():
    rows = memory.table(memory.sd35_recipes())
    totals = [r["total"] for r in rows]
    assert totals == sorted(totals, reverse=True) and totals[0] > 15 > totals[-1]
    drops = [a - b for a, b in zip(totals, totals[1:])]
    assert drops.index(max(drops)) == 0  # leaving T5 out saves the most
    t4 = memory.estimate(memory.sd35_recipes()["+ 4-bit NF4 base (T4 recipe)"])
    p = memory.SD35_PARAMS
    others = p["transformer"] - memory.SD35_LINEAR_WEIGHTS + memory.SD35_POSITION_TABLE
    assert t4["frozen base"] == memory.SD35_LINEAR_WEIGHTS * (0.5 + 4 / 64) + others * 2
    assert t4["encoders and VAE"] == 0 and t4["weights (trainable, fp32)"] == 16 * memory.SD35_LORA_PARAMS_PER_RANK * 4


def test_sd35_terms_refuse_what_was_not_measured():
    with pytest.raises(ValueError, match="fp16 mixed precision"):
        memory.estimate(memory.MemoryConfig(model="sd35", lora_rank=4, mixed_precision="no"))
    with pytest.raises(ValueError, match="set lora_rank"):
        memory.estimate(memory.MemoryConfig(model="sd35", quantized_base=True))
