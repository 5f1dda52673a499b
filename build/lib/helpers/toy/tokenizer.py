"""A CLIP byte-pair-encoding vocabulary for the toy world, built the way CLIP's was.

CLIP's tokenizer starts from the 256 byte symbols (each also with an end-of-word ``</w>`` form)
and learns merges from word frequencies in its corpus, most frequent pair first. We do the same on
toy captions, stopping once every toy word and every rare token (``sks`` among them) is one token.
Any other word still tokenizes: it falls back to shorter pieces, down to single characters. Because merges
are learned in frequency order, a merge's rank says how common its token was: the rare-token
lessons use exactly that, as with real CLIP.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

from transformers import CLIPTokenizer

from helpers.toy import world as toyworld

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 24


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible map from bytes to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def word_counts(num_captions: int = 4000, seed: int = 0) -> collections.Counter:
    """Word frequencies of toy captions (the BPE training corpus), plus one count for every toy
    word and rare token so that each becomes a single token."""
    names = toyworld.named_instances()
    counts: collections.Counter = collections.Counter()
    for i in range(num_captions):
        counts.update(toyworld.random_sample(seed + i, names).caption.split())
    for w in list(toyworld.vocabulary_words()) + list(toyworld.rare_tokens()):
        counts[w] += 1
    return counts


def learn_merges(counts: collections.Counter) -> list[tuple[str, str]]:
    """Sennrich-style BPE: repeatedly merge the most frequent adjacent pair until no pair is left."""
    words = {tuple(w[:-1]) + (w[-1] + "</w>",): c for w, c in counts.items()}
    merges = []
    while True:
        pairs: collections.Counter = collections.Counter()
        for symbols, c in words.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += c
        if not pairs:
            return merges
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]
        merges.append(best)
        words = {_merge(symbols, best): c for symbols, c in words.items()}


def _merge(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


def build_tokenizer(directory: str | Path) -> CLIPTokenizer:
    """Write vocab.json and merges.txt for the toy world into ``directory`` and load them."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    merges = learn_merges(word_counts())
    base = list(bytes_to_unicode().values())
    tokens = base + [b + "</w>" for b in base] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    lines = ["#version: 0.2 - toy world BPE"] + [" ".join(m) for m in merges]
    (directory / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    tok = CLIPTokenizer(
        str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=MAX_LENGTH, pad_token=EOS
    )
    tok.save_pretrained(directory)
    return tok
