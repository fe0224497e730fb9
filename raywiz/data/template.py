"""Prompt templates: the text a model sees before its response.

WizardCoder trained and evaluated with the Alpaca prompt without an input section; its training
data folded any Code Alpaca `input` into the instruction. The strings below are theirs, exactly.

Chat templates render whole conversations through the tokenizer's `chat_template`: `model` (or
`chat`) is the tokenizer's own; a named one (`CHAT_TEMPLATES`, e.g. `chatml`) is installed on any
tokenizer by `with_chat_template`, its special tokens added where missing (train grows the model's
embeddings to match and saves the tokenizer, template set, in hf/), as LLaMA-Factory's `template:`
and axolotl's `chat_template:` do for base models.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class ChatTemplate:
    """A named chat template: its Jinja text, the special tokens it needs, and the token that ends a turn
    (made the tokenizer's EOS, so generation stops where an assistant turn ends)."""

    name: str
    jinja: str
    special_tokens: tuple[str, ...]
    end_of_turn: str
    description: str


CHAT_TEMPLATES: dict[str, ChatTemplate] = {t.name: t for t in [
    ChatTemplate(
        "chatml",
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'"
        " + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
        ("<|im_start|>", "<|im_end|>"), "<|im_end|>",
        "ChatML (<|im_start|>role ... <|im_end|>), as Qwen and many fine-tunes use"),
]}
# Templates rendered by the tokenizer's chat_template (the model's own, or a named one installed on it).
CHAT_STYLE_TEMPLATES = ("chat", "model", *CHAT_TEMPLATES)
TEMPLATES = ("wizardcoder", "alpaca", "custom", *CHAT_STYLE_TEMPLATES)


def with_chat_template(tokenizer, name: str):
    """The tokenizer with the named chat template installed (its special tokens added when missing, the
    end-of-turn token made EOS); any other name leaves it as it is. Changes and returns `tokenizer`."""
    template = CHAT_TEMPLATES.get(name)
    if template is None:
        return tokenizer
    vocab = tokenizer.get_vocab()
    missing = [t for t in template.special_tokens if t not in vocab]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    tokenizer.chat_template = template.jinja
    tokenizer.eos_token = template.end_of_turn
    return tokenizer


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
    if template in CHAT_STYLE_TEMPLATES:
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"template {template!r} needs a tokenizer with a chat_template")
        messages = [{"role": "user", "content": fold_input(instruction, input)}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    raise ValueError(f"unknown template {template!r}; expected one of {TEMPLATES}")
