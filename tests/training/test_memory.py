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
    assert lora["frozen parts"] == full["frozen parts"] + memory.SD15_PARAMS["unet"] * 2
    assert lora["total"] < full["total"] - 5 * memory.GiB
