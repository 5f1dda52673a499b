import json
import random

from transformers import CLIPTokenizer

from helpers import toytokenizer, toyworld
from helpers.profiles import TOY_MODEL


def _tok() -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(TOY_MODEL / "tokenizer")


def test_every_toy_word_is_one_token():
    tok = _tok()
    for word in toyworld.vocabulary_words():
        assert len(tok(word, add_special_tokens=False).input_ids) == 1, word


def test_any_word_tokenizes_without_unknowns():
    tok = _tok()
    rng = random.Random(0)
    words = ["sks", "zwx", "Ünïcode", "ohw", "123"] + [toytokenizer.random_word(rng) for _ in range(50)]
    for word in words:
        ids = tok(word, add_special_tokens=False).input_ids
        assert ids and tok.unk_token_id not in ids
        assert tok.decode(ids).replace(" ", "") == word.lower()


def test_sks_is_unfamiliar_to_the_toy_world():
    tok = _tok()
    pieces = tok.convert_ids_to_tokens(tok("sks", add_special_tokens=False).input_ids)
    assert pieces == ["s", "k", "s</w>"]


def test_prompts_are_padded_to_the_model_length():
    tok = _tok()
    ids = tok("a photo of sks dog", padding="max_length", max_length=tok.model_max_length).input_ids
    assert len(ids) == tok.model_max_length == toytokenizer.MAX_LENGTH
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id


def test_merge_ranks_follow_frequency():
    counts = toytokenizer.word_counts(num_captions=500)
    merges = toytokenizer.learn_merges(counts)
    assert len(set(merges)) == len(merges)
    pairs = {}
    for word, c in counts.items():
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        for pair in zip(symbols, symbols[1:]):
            pairs[pair] = pairs.get(pair, 0) + c
    assert pairs[merges[0]] == max(pairs.values())
    rank = {a + b: i for i, (a, b) in enumerate(merges)}
    assert rank["photo</w>"] < rank["grassy</w>"] and rank["photo</w>"] < rank["sunglasses</w>"]


def test_committed_vocabulary_matches_the_builder(tmp_path):
    built = toytokenizer.build_tokenizer(tmp_path)
    committed = json.loads((TOY_MODEL / "tokenizer" / "vocab.json").read_text())
    assert built.get_vocab() == committed
