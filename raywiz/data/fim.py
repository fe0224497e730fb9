"""Fill-in-the-middle (FIM): code samples rearranged so a model learns to write the middle of a file
from the code before and after it (Bavarian et al. 2022, "Efficient Training of Language Models to
Fill in the Middle"), as StarCoder was trained.

The transformation is bigcode's (bigcode-project/Megatron-LM, ``permute`` in
megatron/data/gpt_dataset.py): with probability ``rate`` a document is cut at two character positions
drawn uniformly (either may be 0 or the end; they may be equal) into prefix, middle and suffix, each
tokenized apart, and laid out as

    PSM  <prefix> prefix <suffix> suffix <middle> middle          (probability 1 - spm_rate)
    SPM  <prefix> <suffix> suffix <middle> prefix middle          (probability spm_rate; the paper's variant 2)

and the sample ends with EOS, the end of the document. The loss covers every token (code is learned
as a whole, not as a masked response). raywiz applies it to one document at a time and never pads or
truncates the segments (bigcode's fixed-length chunks did); the random draws come from the seed and
the sample's id alone, so the same run, and its resume, sees the same samples.

The sentinel tokens are the model's own: a tokenizer's vocabulary is searched for the known sets
(``TOKEN_SETS``); serve builds its FIM prompts from the same set, recorded in hf/raywiz.json.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np

from raywiz.config_base import ConfigError
from raywiz.data.tokenize import TokenizedSample

FIELD = "train.data.fim"


@dataclass(frozen=True)
class FimTokens:
    """One family's FIM sentinels. `pad` is StarCoder's <fim_pad> where the family has one."""

    family: str
    prefix: str
    suffix: str
    middle: str
    pad: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FimTokens":
        return cls(**{k: d.get(k) for k in ("family", "prefix", "suffix", "middle", "pad")})

    def ids(self, tokenizer) -> tuple[int, int, int]:
        """The prefix, suffix and middle sentinels' token ids in this tokenizer."""
        return tuple(tokenizer.convert_tokens_to_ids(t) for t in (self.prefix, self.suffix, self.middle))

    def prompt(self, prefix: str, suffix: str, spm: bool = False) -> str:
        """The text a model continues with the middle (PSM, or SPM as trained above)."""
        if spm:
            return f"{self.prefix}{self.suffix}{suffix}{self.middle}{prefix}"
        return f"{self.prefix}{prefix}{self.suffix}{suffix}{self.middle}"


# Known sets, by the names in their tokenizers' vocabularies (checked: StarCoder/StarCoder2/SantaCoder's
# tokenizer.json; Qwen2.5-Coder's added tokens; CodeLlama's ids 32007-32010 (its tokenizer calls them
# prefix/suffix/middle/eot); DeepSeek-Coder's begin/hole/end, which mark the prefix, the hole, the middle).
TOKEN_SETS = (
    FimTokens("starcoder", "<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<fim_pad>"),
    FimTokens("qwen2.5-coder", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|fim_pad|>"),
    FimTokens("codellama", "▁<PRE>", "▁<SUF>", "▁<MID>", None),
    FimTokens("deepseek-coder", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>", None),
)


class FimUnavailable(ConfigError):
    """The tokenizer has none of the known FIM token sets (a config error: exit 2, no traceback)."""


def find_tokens(tokenizer) -> FimTokens | None:
    """The first known set whose prefix/suffix/middle tokens are all single tokens of this tokenizer."""
    vocab = tokenizer.get_vocab()
    for tokens in TOKEN_SETS:
        if all(t in vocab for t in (tokens.prefix, tokens.suffix, tokens.middle)):
            return tokens
    return None


def model_tokens(recorded: dict | None, tokenizer) -> FimTokens | None:
    """The FIM tokens a model was trained with (`recorded`: its hf/raywiz.json's "fim"), else a known set
    in its tokenizer; None when it has neither (serve's `suffix` and eval's infilling both ask this)."""
    return FimTokens.from_dict(recorded) if isinstance(recorded, dict) else find_tokens(tokenizer)


def require_tokens(tokenizer, where: str = FIELD) -> FimTokens:
    tokens = find_tokens(tokenizer)
    if tokens is None:
        known = "; ".join(f"{t.family}: {t.prefix} {t.suffix} {t.middle}" for t in TOKEN_SETS)
        raise FimUnavailable(f"{where}: the tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no "
                             f"fill-in-the-middle tokens (known sets: {known}); use a model trained with FIM "
                             "or turn FIM off")
    return tokens


def record(tokenizer) -> dict:
    """What hf/raywiz.json says about FIM: {"fim": the tokens} when the tokenizer has a known set."""
    tokens = find_tokens(tokenizer)
    return {"fim": tokens.to_dict()} if tokens else {}


def rng_for(seed: int, sample_id: str) -> np.random.RandomState:
    """The random draws of one sample: from the run's seed and the sample's id only."""
    digest = hashlib.sha256(f"{seed}:{sample_id}".encode("utf-8", "surrogatepass")).digest()
    return np.random.RandomState(int.from_bytes(digest[:4], "little"))


@dataclass(frozen=True)
class FimSplit:
    prefix: str
    middle: str
    suffix: str
    spm: bool


def split(text: str, rng: np.random.RandomState, rate: float, spm_rate: float) -> FimSplit | None:
    """bigcode's permute, on characters: None (keep the document as it is) or its three parts."""
    if not rng.binomial(1, rate):
        return None
    lo, hi = sorted(int(b) for b in rng.randint(low=0, high=len(text) + 1, size=2))
    spm = bool(rng.binomial(1, spm_rate))
    return FimSplit(text[:lo], text[lo:hi], text[hi:], spm)


def tokenize_code(tokenizer, text: str, sample_id: str, seed: int, rate: float = 0.0, spm_rate: float = 0.0,
                  tokens: FimTokens | None = None) -> TokenizedSample:
    """One code document as a training sample: FIM-transformed (with probability `rate`) or as it is,
    then EOS; every token is learned."""
    parts = split(text, rng_for(seed, sample_id), rate, spm_rate) if tokens is not None and rate > 0 else None
    if parts is None:
        ids = _ids(tokenizer, text)
    else:
        pre, suf, mid = tokens.ids(tokenizer)
        prefix, middle, suffix = (_ids(tokenizer, s) for s in (parts.prefix, parts.middle, parts.suffix))
        if parts.spm:
            ids = [pre, suf, *suffix, mid, *prefix, *middle]
        else:
            ids = [pre, *prefix, suf, *suffix, mid, *middle]
    ids = ids + [tokenizer.eos_token_id]
    return TokenizedSample(ids, list(ids))


def _ids(tokenizer, text: str) -> list[int]:
    # split_special_tokens: a file that holds the text "<fim_middle>" gets its characters, not the sentinel.
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"] if text else []


def prompt_ids(tokenizer, tokens: FimTokens, prefix: str, suffix: str, lead: list[int] | None = None) -> list[int]:
    """The PSM prompt a model continues with the middle, as token ids: each part tokenized apart as in
    training (text that spells a sentinel stays text), after `lead` (a BOS, for models that take one)."""
    pre, suf, mid = tokens.ids(tokenizer)
    return [*(lead or []), pre, *_ids(tokenizer, prefix), suf, *_ids(tokenizer, suffix), mid]


def undo(tokenizer, ids: list[int], tokens: FimTokens) -> str:
    """The document a FIM sample was made from (EOS dropped): the inverse of tokenize_code."""
    pre, suf, mid = tokens.ids(tokenizer)
    ids = ids[:-1] if ids and ids[-1] == tokenizer.eos_token_id else ids
    if not ids or ids[0] != pre:
        return tokenizer.decode(ids)
    text = lambda part: tokenizer.decode(part)  # noqa: E731
    m = ids.index(mid)
    if ids[1] == suf:  # SPM: <pre> <suf> suffix <mid> prefix+middle
        return text(ids[m + 1:]) + text(ids[2:m])
    s = ids.index(suf)
    return text(ids[1:s]) + text(ids[m + 1:]) + text(ids[s + 1:m])
