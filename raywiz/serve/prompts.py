"""Chat messages -> the prompt text a model was trained on.

- Models raywiz trained say which template they learned in hf/raywiz.json ("template"); chat
  requests to them are rendered with raywiz.data.template.format_prompt, so a WizardCoder model sees
  exactly WizardCoder's prompt. WizardCoder is single-turn; later turns continue in the same shape
  ("### Instruction: ... ### Response:") and a system message goes before the first instruction.
- Other models use their tokenizer's chat template; a model with neither gets a 400 that says
  to use /v1/completions instead (as vLLM does: guessing a format gives silently bad answers).
"""

from __future__ import annotations

from raywiz.data.template import format_prompt

INSTRUCTION_TEMPLATES = ("wizardcoder", "alpaca", "custom")


class PromptError(ValueError):
    """The messages cannot be turned into a prompt for this model (a client error)."""


def chat_prompt(messages: list[dict], template: str | None, tokenizer, custom: str | None = None) -> str:
    if not messages:
        raise PromptError("messages: at least one message is needed")
    if messages[-1]["role"] != "user":
        raise PromptError("messages: the last message must have role 'user'")
    if template in INSTRUCTION_TEMPLATES:
        return _instruction_prompt(messages, template, custom)
    if template == "chat" or getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    raise PromptError("this model has no chat template (and no raywiz.json template); use /v1/completions")


def _instruction_prompt(messages: list[dict], template: str, custom: str | None) -> str:
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    turns = [m for m in messages if m["role"] != "system"]
    text = None
    expected = "user"
    for i, m in enumerate(turns):
        if m["role"] != expected:
            raise PromptError(f"messages: turns must alternate user/assistant; message {i} is {m['role']!r}")
        if m["role"] == "assistant":
            text += m["content"]
            expected = "user"
            continue
        if text is None:
            instruction = f"{system}\n\n{m['content']}" if system else m["content"]
            text = format_prompt(instruction, template=template, custom=custom)
        else:
            text += f"\n\n### Instruction:\n{m['content']}\n\n### Response:"
        expected = "assistant"
    return text


def uses_special_tokens(template: str | None, chat: bool) -> bool:
    """Whether to let the tokenizer add BOS etc.: not for raywiz templates (training did not), not
    for chat templates (they write their own), yes for plain completions to other models."""
    return template is None and not chat
