"""The identifier finder on the toy tokenizer and text encoder."""

import statistics

import pytest
from transformers import CLIPTextModel, CLIPTokenizer

from helpers.diffusion.profiles import TOY_MODEL
from helpers.dreambooth import identifiers
from helpers.toy import world as toyworld


@pytest.fixture(scope="module")
def toy_text():
    tokenizer = CLIPTokenizer.from_pretrained(TOY_MODEL, subfolder="tokenizer")
    return tokenizer, CLIPTextModel.from_pretrained(TOY_MODEL, subfolder="text_encoder").eval()


def test_candidates_are_short_rare_single_tokens_rarest_first(toy_text):
    tokenizer, _ = toy_text
    words = identifiers.candidate_tokens(tokenizer, max_chars=3, band=(0.5, 1.0))
    ranks = [identifiers.merge_rank_fraction(tokenizer, w) for w in words]
    assert words and all(len(w) <= 3 and w.isalpha() for w in words)
    assert all(r is not None and 0.5 <= r <= 1.0 for r in ranks)
    assert ranks == sorted(ranks, reverse=True)
    assert "dog" not in words and "sks" in words


def test_prior_shift_is_zero_for_the_filler_and_large_for_bound_names(toy_text):
    tokenizer, text_encoder = toy_text
    assert identifiers.prior_shift(text_encoder, tokenizer, ["the"], "dog")[0] == pytest.approx(0, abs=1e-6)
    bound = list(toyworld.named_instances())[:10]
    free = [t for t in toyworld.rare_tokens() if t not in toyworld.named_instances() and t != "sks"][:10]
    bound_shift = statistics.mean(identifiers.prior_shift(text_encoder, tokenizer, bound, "dog"))
    free_shift = statistics.mean(identifiers.prior_shift(text_encoder, tokenizer, free, "dog"))
    assert bound_shift > 5 * free_shift  # 0.89 against 0.07 on the committed model


def test_find_identifiers_returns_the_least_meaningful_candidates(toy_text):
    tokenizer, text_encoder = toy_text
    rows = identifiers.find_identifiers(tokenizer, text_encoder, "dog", count=5)
    shifts = [r["prior_shift"] for r in rows]
    assert len(rows) == 5 and shifts == sorted(shifts)
    assert not {r["identifier"] for r in rows} & set(toyworld.named_instances())
    everything = identifiers.prior_shift(text_encoder, tokenizer, identifiers.candidate_tokens(tokenizer), "dog")
    assert shifts[0] == pytest.approx(min(everything), abs=1e-4)
