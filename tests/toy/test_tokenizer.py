import json
import random

from transformers import CLIPTokenizer

from helpers.diffusion.profiles import TOY_MODEL
from helpers.toy import tokenizer as toytokenizer
from helpers.toy import world as toyworld


def _tok() -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(TOY_MODEL / "tokenizer")


def test_every_toy_word_and_rare_token_is_one_token():
    tok = _tok()
    for word in toyworld.vocabulary_words() + list(toyworld.rare_tokens()):
        assert len(tok(word, add_special_tokens=False).input_ids) == 1, word


def test_any_word_tokenizes_without_unknowns():
    tok = _tok()
    rng = random.Random(0)
    words = ["sks", "zwxq", "Ünïcode", "ohw", "123", "supercalifragilistic"]
    words += ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(50)]
    for word in words:
        ids = tok(word, add_special_tokens=False).input_ids
        assert ids and tok.unk_token_id not in ids
        assert tok.decode(ids).replace(" ", "") == word.lower()


def test_sks_is_a_single_rare_token():
    tok = _tok()
    assert tok.convert_ids_to_tokens(tok("sks", add_special_tokens=False).input_ids) == ["sks</w>"]
    # merges are learned most frequent first, so a rare token's id comes after every common word's
    assert tok.convert_tokens_to_ids("sks</w>") > max(tok.convert_tokens_to_ids(w + "</w>") for w in ("dog", "photo"))


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
    committed = json.loads((TOY_MODEL / "tokenizer" / "tokenizer.json").read_text())["model"]
    assert built.get_vocab() == _tok().get_vocab() == committed["vocab"]
    assert [" ".join(m) if isinstance(m, list) else m for m in committed["merges"]] == (
        tmp_path / "merges.txt"
    ).read_text().splitlines()[1:]
