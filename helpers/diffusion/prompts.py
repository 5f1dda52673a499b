"""Prompts that fit the text encoder's window: a CLIP text encoder reads 77 tokens (the toy's, 24), the
start and end tokens included, and the tokenizer silently drops the rest.

A long caption losing its last words is worth a warning; a prompt whose identifier falls beyond the
window ("... a photo of sks dog" after a long description) trains the class words without the
identifier, which is a DreamBooth run that cannot work, so it is refused.
"""

from __future__ import annotations

from helpers.core.errors import UsageError

SPECIAL_TOKENS = 2  # the start-of-text and end-of-text tokens around every prompt


def window(tokenizer) -> int | None:
    """How many of a prompt's own tokens the text encoder reads (None for a tokenizer without a limit)."""
    length = tokenizer.model_max_length
    return None if length is None or length > 100_000 else length - SPECIAL_TOKENS


def token_ids(tokenizer, prompts: list[str]):
    """The prompts' token ids padded to the text encoder's window and cut at its end, as diffusers' training
    scripts feed them: every row the same length, so that a batch of prompts is one tensor."""
    return tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def token_count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False).input_ids)


def check_prompt(tokenizer, prompt: str, what: str, identifier: list[str] = ()) -> str | None:
    """A warning for a prompt longer than the window (None when it fits); a ``UsageError`` when one of the
    ``identifier`` words ends beyond it. ``what`` names the prompt's source for the message
    (``--instance_prompt``, a caption file)."""
    kept = window(tokenizer)
    if kept is None or token_count(tokenizer, prompt) <= kept:
        return None
    words = prompt.split()
    for k, word in enumerate(words):
        if word.lower() in identifier and token_count(tokenizer, " ".join(words[: k + 1])) > kept:
            raise UsageError(
                f"{what} {prompt!r} is {token_count(tokenizer, prompt)} tokens long and the text encoder reads only "
                f"the first {kept}: the identifier {word!r} falls outside them; shorten it so that the identifier "
                f"comes within the first {kept} tokens"
            )
    cut = tokenizer.decode(tokenizer(prompt, add_special_tokens=False).input_ids[kept:])
    return (
        f"{what} is {token_count(tokenizer, prompt)} tokens long; the text encoder reads the first {kept} "
        f"and drops the rest ({cut!r})"
    )
