"""Template + tokenize one batch of samples; mask the prompt.

A sample becomes ``input_ids`` = prompt + response + EOS and ``labels`` = -100 over the prompt and
the response ids after it, so the loss covers the response and EOS only (WizardCoder's recipe).
"""

from __future__ import annotations

from dataclasses import dataclass

from raywiz.data.template import format_prompt

IGNORE_INDEX = -100


@dataclass
class TokenizedSample:
    input_ids: list[int]
    labels: list[int]


def tokenize_sample(tokenizer, instruction: str, output: str, input: str | None = None,
                    template: str = "wizardcoder", custom: str | None = None) -> TokenizedSample:
    prompt = format_prompt(instruction, input, template=template, custom=custom, tokenizer=tokenizer)
    # Tokenize prompt and response apart, so the boundary is exact (no merge across it).
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(output, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return TokenizedSample(prompt_ids + response_ids, [IGNORE_INDEX] * len(prompt_ids) + response_ids)


def fit_to_length(sample: TokenizedSample, max_length: int, overlong: str) -> TokenizedSample | None:
    """None when the sample must be dropped; truncated when asked (keeps the prompt whole if it can)."""
    if len(sample.input_ids) <= max_length:
        return sample
    if overlong == "drop":
        return None
    ids, labels = sample.input_ids[:max_length], sample.labels[:max_length]
    if all(lab == IGNORE_INDEX for lab in labels):
        return None  # the prompt alone fills max_length: nothing left to learn from
    return TokenizedSample(ids, labels)
