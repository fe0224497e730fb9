"""raywiz's test tokenizer with a FIM token set added (the shipped one has none), saved to a directory
so Ray tasks, `raywiz train` and `raywiz serve` can load it by path as they would a hub model's."""

from __future__ import annotations

from pathlib import Path

from raywiz.data.fim import TOKEN_SETS, FimTokens

STARCODER = TOKEN_SETS[0]


def save_fim_tokenizer(directory: Path, tokens: FimTokens = STARCODER) -> Path:
    from raywiz.modeling import load_tokenizer

    tok = load_tokenizer("tiny-gpt-bigcode")
    added = [t for t in (tokens.prefix, tokens.middle, tokens.suffix, tokens.pad) if t]
    tok.add_special_tokens({"additional_special_tokens": added})
    tok.save_pretrained(directory)
    return directory
