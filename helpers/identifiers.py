"""Choosing a DreamBooth identifier: how common is a word to a CLIP tokenizer?

CLIP's byte-pair vocabulary lists its 512 byte symbols first and then one token per learned
merge, most frequent first. A word that is a single token with a low id is therefore a common
word (it has a strong prior meaning); a single token with a high id is rare; a word that splits
into many pieces has no token of its own. DreamBooth wants a rare single token.
"""

from __future__ import annotations

BYTE_SYMBOLS = 512  # 256 byte symbols, each also in its end-of-word form


def merge_rank_fraction(tokenizer, word: str) -> float | None:
    """Where the word's single token sits among the merges (0 = most frequent, 1 = rarest);
    None if the word is not one token."""
    ids = tokenizer(word, add_special_tokens=False).input_ids
    if len(ids) != 1:
        return None
    merges = len(tokenizer) - BYTE_SYMBOLS - len(tokenizer.all_special_ids)
    return max(0.0, (ids[0] - BYTE_SYMBOLS) / max(1, merges))


def identifier_warnings(tokenizer, instance_prompt: str, class_prompt: str | None,
                        common_below: float = 0.33) -> list[str]:
    """Why the identifier may be a poor choice: a common word, or one that splits into many tokens.

    The identifier is every word of the instance prompt that is not in the class prompt and not a
    filler word ("a photo of sks dog" with class prompt "a photo of dog" -> "sks"); without a class
    prompt, the instance prompt's last word is taken as the class noun, as DreamBooth writes them.
    """
    filler = {"a", "an", "the", "photo", "picture", "of", "in", "on", "at", "with", "and"}
    words = instance_prompt.lower().split()
    class_words = set(class_prompt.lower().split()) if class_prompt else set(words[-1:])
    out = []
    for word in words:
        if word in class_words or word in filler:
            continue
        rank = merge_rank_fraction(tokenizer, word)
        pieces = tokenizer.tokenize(word)
        if rank is not None and rank < common_below:
            out.append(f"identifier {word!r} is a common token (merge rank in the first {rank:.0%} of the "
                       "vocabulary): fine-tuning overwrites a meaning the model already has; a rare token such as "
                       "'sks' carries less prior")
        elif len(pieces) > 2:
            out.append(f"identifier {word!r} splits into {len(pieces)} tokens {pieces}: a rare single token "
                       "binds faster and disturbs less")
    return out
