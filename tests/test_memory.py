import pytest

from helpers import memory


def test_terms_add_up_and_the_recipes_order_as_expected():
    rows = {r["recipe"]: r for r in memory.table()}
    for r in rows.values():
        assert r["total"] == pytest.approx(sum(v for k, v in r.items() if k not in ("recipe", "total")), abs=0.05)
    assert rows["fp32, AdamW"]["total"] > 15 > rows["+ gradient checkpointing (T4 recipe)"]["total"]
    assert rows["+ 8-bit AdamW"]["total"] < rows["+ fp16 mixed precision"]["total"]
    assert rows["T4 recipe + text encoder"]["total"] > rows["+ gradient checkpointing (T4 recipe)"]["total"]


def test_optimizer_state_bytes_per_parameter():
    assert memory.adam_state_bytes(1000, eight_bit=False) == 8000
    assert memory.adam_state_bytes(256_000, eight_bit=True) == pytest.approx(256_000 * 2 + 2 * 1000 * 4)


def test_activations_grow_with_batch_and_resolution_and_shrink_with_checkpointing():
    base = memory.MemoryConfig(gradient_checkpointing=False)
    act = lambda **kw: memory.estimate(memory.MemoryConfig(**{**base.__dict__, **kw}))  # noqa: E731
    assert act(resolution=768)["total"] > act()["total"]
    assert act(train_batch_size=2)["total"] > act()["total"]
    assert act(gradient_checkpointing=True)["total"] < act()["total"]
