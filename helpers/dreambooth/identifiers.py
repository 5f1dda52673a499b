"""Choosing a DreamBooth identifier: how common is a word to a CLIP tokenizer?

CLIP's byte-pair vocabulary lists its 512 byte symbols first and then one token per learned
merge, most frequent first. A word that is a single token with a low id is therefore a common
word (it has a strong prior meaning); a single token with a high id is rare; a word that splits
into many pieces has no token of its own. DreamBooth wants a rare single token.

Merge rank is only a proxy for meaning, though: ``sks`` is a rare token in CLIP's vocabulary and
still names a rifle. ``prior_shift`` asks the text encoder itself how much a word already means,
and ``find_identifiers`` ranks rare candidates by it.
"""

from __future__ import annotations

import torch

from helpers.diffusion.prompts import token_ids

BYTE_SYMBOLS = 512  # 256 byte symbols, each also in its end-of-word form


def merge_rank_fraction(tokenizer, word: str) -> float | None:
    """Where the word's single token sits among the merges (0 = most frequent, 1 = rarest);
    None if the word is not one token."""
    ids = tokenizer(word, add_special_tokens=False).input_ids
    if len(ids) != 1:
        return None
    merges = len(tokenizer) - BYTE_SYMBOLS - len(tokenizer.all_special_ids)
    return max(0.0, (ids[0] - BYTE_SYMBOLS) / max(1, merges))


FILLER = {"a", "an", "the", "photo", "picture", "of", "in", "on", "at", "with", "and"}


def identifier_words(instance_prompt: str, class_prompt: str | None) -> list[str]:
    """The identifier: every word of the instance prompt that is not in the class prompt and not a
    filler word ("a photo of sks dog" with class prompt "a photo of dog" -> ["sks"]); without a class
    prompt, the instance prompt's last word is taken as the class noun, as DreamBooth writes them."""
    words = instance_prompt.lower().split()
    class_words = set(class_prompt.lower().split()) if class_prompt else set(words[-1:])
    return [w for w in words if w not in class_words and w not in FILLER]


def identifier_warnings(
    tokenizer, instance_prompt: str, class_prompt: str | None, common_below: float = 0.33
) -> list[str]:
    """Why the identifier (``identifier_words``) may be a poor choice: a common word, or one that
    splits into many tokens."""
    out = []
    for word in identifier_words(instance_prompt, class_prompt):
        rank = merge_rank_fraction(tokenizer, word)
        pieces = tokenizer.tokenize(word)
        if rank is not None and rank < common_below:
            out.append(
                f"identifier {word!r} is a common token (merge rank in the first {rank:.0%} of the "
                "vocabulary): fine-tuning overwrites a meaning the model already has; a rare token that means "
                "little to the text encoder carries less prior "
                "(helpers.dreambooth.identifiers.find_identifiers finds some)"
            )
        elif len(pieces) > 2:
            out.append(
                f"identifier {word!r} splits into {len(pieces)} tokens {pieces}: a rare single token "
                "binds faster and disturbs less"
            )
    return out


def candidate_tokens(tokenizer, max_chars: int = 3, band: tuple[float, float] = (0.5, 1.0)) -> list[str]:
    """Whole-word tokens of at most ``max_chars`` letters whose merge rank lies in ``band``, rarest
    first: the paper's recipe (short rare tokens from a band of the vocabulary) for a CLIP BPE."""
    words = []
    for token in tokenizer.get_vocab():
        word = token[:-4] if token.endswith("</w>") else None
        if word and word.isascii() and word.isalpha() and len(word) <= max_chars:
            rank = merge_rank_fraction(tokenizer, word)
            if rank is not None and band[0] <= rank <= band[1]:
                words.append((rank, word))
    return [w for _, w in sorted(words, reverse=True)]


@torch.no_grad()
def prior_shift(text_encoder, tokenizer, words: list[str], class_noun: str) -> list[float]:
    """How much each word already means to the text encoder: the cosine distance between the pooled
    embeddings of "a photo of WORD NOUN" and "a photo of the NOUN" (0: no more than "the").

    The reference holds a filler word in the same place so that both prompts have the same length:
    the pooled embedding is read at the end-of-text token, whose position moves with the length, and
    a text encoder trained on captions of many lengths tells them apart even when the word is empty
    of meaning."""
    prompts = [f"a photo of the {class_noun}"] + [f"a photo of {w} {class_noun}" for w in words]
    ids = token_ids(tokenizer, prompts).to(text_encoder.device)
    pooled = text_encoder(ids).pooler_output.float()
    return (1 - torch.nn.functional.cosine_similarity(pooled[1:], pooled[:1])).cpu().tolist()


def find_identifiers(
    tokenizer,
    text_encoder,
    class_noun: str,
    count: int = 5,
    max_chars: int = 3,
    band: tuple[float, float] = (0.5, 1.0),
    max_candidates: int = 512,
) -> list[dict]:
    """The ``count`` rare short tokens that mean least to the text encoder, with their merge rank and
    prior shift; at most ``max_candidates`` evenly spaced candidates are scored (CLIP has thousands)."""
    candidates = candidate_tokens(tokenizer, max_chars, band)
    step = max(1, len(candidates) // max_candidates)
    candidates = candidates[::step][:max_candidates]
    shifts = []
    for i in range(0, len(candidates), 64):
        shifts += prior_shift(text_encoder, tokenizer, candidates[i : i + 64], class_noun)
    rows = [
        {"identifier": w, "merge_rank": round(merge_rank_fraction(tokenizer, w), 3), "prior_shift": round(d, 4)}
        for w, d in zip(candidates, shifts)
    ]
    return sorted(rows, key=lambda r: r["prior_shift"])[:count]
