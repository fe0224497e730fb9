"""Prompt templates: the text a model sees before its response.

WizardCoder trained and evaluated with the Alpaca prompt without an input section; its training
data folded any Code Alpaca `input` into the instruction. The strings below are theirs, exactly.
"""

from __future__ import annotations

WIZARDCODER_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes "
    "the request.\n\n### Instruction:\n{instruction}\n\n### Response:"
)
# Alpaca's variant for rows that carry an input.
ALPACA_INPUT_PROMPT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n"
    "### Input:\n{input}\n\n### Response:"
)
TEMPLATES = ("wizardcoder", "alpaca", "chat", "custom")


def fold_input(instruction: str, input: str | None) -> str:
    """WizardCoder-style: an input, when present, is appended to the instruction."""
    return f"{instruction}\n{input}" if input else instruction


def format_prompt(instruction: str, input: str | None = None, template: str = "wizardcoder",
                  custom: str | None = None, tokenizer=None) -> str:
    """The prompt text for one sample (the response is appended after it)."""
    if template == "wizardcoder":
        return WIZARDCODER_PROMPT.format(instruction=fold_input(instruction, input))
    if template == "alpaca":
        if input:
            return ALPACA_INPUT_PROMPT.format(instruction=instruction, input=input)
        return WIZARDCODER_PROMPT.format(instruction=instruction)
    if template == "custom":
        if not custom:
            raise ValueError("template 'custom' needs a prompt string")
        return custom.format(instruction=instruction, input=input or "")
    if template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("template 'chat' needs a tokenizer with a chat_template")
        messages = [{"role": "user", "content": fold_input(instruction, input)}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    raise ValueError(f"unknown template {template!r}; expected one of {TEMPLATES}")
