"""Conversation data: ShareGPT and OpenAI-style messages rows, checked, templated and masked.

    turns = parse(record, "sharegpt")        # [Turn(role, content), ...] or raises BadConversation
    sample = tokenize_conversation(tokenizer, turns, template="wizardcoder")

Roles are ``system`` (optional, first), then ``user`` and ``assistant`` alternating, starting with the
user and ending with the assistant. The loss falls on assistant turns only (plus EOS after the last).

How a conversation becomes text:
- one exchange (an optional system prompt, one user turn, one assistant turn) with a text template
  (``wizardcoder``, ``alpaca``, ``custom``) uses that template, as instruction rows do; a system prompt
  takes the place of the template's opening sentence;
- several exchanges, or a chat template (``model``/``chat``: the tokenizer's own; a named one such as
  ``chatml``, installed on any tokenizer by raywiz.data.template.with_chat_template), use the
  tokenizer's chat template. Each assistant turn is found by rendering the conversation up to it,
  so the mask follows the template exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from raywiz.data.template import CHAT_STYLE_TEMPLATES, WIZARDCODER_PROMPT, format_prompt
from raywiz.data.tokenize import IGNORE_INDEX, TokenizedSample

FORMATTINGS = ("alpaca", "sharegpt", "messages")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
WIZARDCODER_PREAMBLE = WIZARDCODER_PROMPT.split("\n\n", 1)[0]


class BadConversation(ValueError):
    """A row that cannot train: the message says why (counted and reported like other bad rows)."""


@dataclass(frozen=True)
class Turn:
    role: str  # system | user | assistant
    content: str


def parse(record: dict, formatting: str) -> list[Turn]:
    """A record's turns in order, checked: roles known and in order, no empty assistant turn."""
    if formatting == "sharegpt":
        raw, role_key, text_key = record.get("conversations"), "from", "value"
        field = "conversations"
    elif formatting == "messages":
        raw, role_key, text_key = record.get("messages"), "role", "content"
        field = "messages"
    else:
        raise ValueError(f"formatting {formatting!r} is not a conversation format")
    if isinstance(raw, str):  # Parquet writers often store the list as a JSON string
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raise BadConversation(f"field '{field}' is text that is not a JSON list") from None
    if raw is None:
        raise BadConversation(f"missing field '{field}'")
    if not isinstance(raw, list) or not raw:
        raise BadConversation(f"field '{field}' must be a non-empty list of turns")
    turns = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise BadConversation(f"{field}[{i}] is not an object")
        role, content = item.get(role_key), item.get(text_key)
        if role is None or content is None:
            raise BadConversation(f"{field}[{i}]: missing field '{role_key if role is None else text_key}'")
        roles = SHAREGPT_ROLES if formatting == "sharegpt" else {r: r for r in ("system", "user", "assistant")}
        if role not in roles:
            raise BadConversation(f"{field}[{i}]: unknown role {role!r} (expected {', '.join(roles)})")
        if not isinstance(content, str):
            raise BadConversation(f"{field}[{i}]: '{text_key}' is {type(content).__name__}, expected text")
        turns.append(Turn(roles[role], content))
    check_order(turns, field)
    return turns


def check_order(turns: list[Turn], field: str = "turns") -> None:
    body = turns[1:] if turns and turns[0].role == "system" else turns
    if not body:
        raise BadConversation(f"{field}: no user or assistant turn")
    for i, turn in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if turn.role != expected:
            where = i + (len(turns) - len(body))
            raise BadConversation(f"{field}[{where}]: role out of order ({turn.role} where {expected} was expected)")
        if turn.role == "assistant" and not turn.content.strip():
            raise BadConversation(f"{field}[{i + len(turns) - len(body)}]: empty assistant turn")
    if body[-1].role != "assistant":
        raise BadConversation(f"{field}: ends with a {body[-1].role} turn, not the assistant's")


def from_instruction(instruction: str, input: str | None, output: str) -> list[Turn]:
    """An alpaca row as a one-exchange conversation (its input folded in by the template later)."""
    return [Turn("user", instruction), Turn("assistant", output)]


def is_single_exchange(turns: list[Turn]) -> bool:
    return len([t for t in turns if t.role != "system"]) == 2


def tokenize_conversation(tokenizer, turns: list[Turn], template: str = "wizardcoder",
                          custom: str | None = None) -> TokenizedSample:
    """input_ids and labels: -100 everywhere but the assistant turns and the final EOS."""
    if template not in CHAT_STYLE_TEMPLATES and is_single_exchange(turns):
        return _single_exchange(tokenizer, turns, template, custom)
    if not getattr(tokenizer, "chat_template", None):
        raise BadConversation("a multi-turn conversation needs a tokenizer with a chat template: a model's own "
                              "(train.data.template.name: model), or a named one for any tokenizer "
                              "(train.data.template.name: chatml)")
    return _with_chat_template(tokenizer, turns)


def _single_exchange(tokenizer, turns: list[Turn], template: str, custom: str | None) -> TokenizedSample:
    system = turns[0].content if turns[0].role == "system" else None
    user, assistant = [t.content for t in turns if t.role != "system"]
    prompt = format_prompt(user, None, template=template, custom=custom, tokenizer=tokenizer)
    if system and template == "wizardcoder":  # the system prompt replaces "Below is an instruction ..."
        prompt = system + prompt[len(WIZARDCODER_PREAMBLE):]
    elif system:
        prompt = f"{system}\n\n{prompt}"
    return _segments(tokenizer, [(prompt, False), (assistant, True)])


def _with_chat_template(tokenizer, turns: list[Turn]) -> TokenizedSample:
    messages = [{"role": t.role, "content": t.content} for t in turns]
    segments: list[tuple[str, bool]] = []
    done = ""  # the text rendered so far
    for i, turn in enumerate(turns):
        if turn.role != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        through = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not before.startswith(done) or not through.startswith(before):
            raise BadConversation("the tokenizer's chat template does not render conversations prefix by prefix; "
                                  "its assistant turns cannot be masked")
        segments += [(before[len(done):], False), (through[len(before):], True)]
        done = through
    last = segments[-1][0]
    if tokenizer.eos_token and last.rstrip().endswith(tokenizer.eos_token):
        # The template ends the turn with EOS itself (ChatML's <|im_end|>): learn to stop there, not to
        # write the newline after it and a second EOS.
        segments[-1] = (last.rstrip(), True)
    return _segments(tokenizer, segments)


def _segments(tokenizer, segments: list[tuple[str, bool]]) -> TokenizedSample:
    """Tokenize each piece apart (exact boundaries), learn from the flagged ones, end with EOS."""
    ids: list[int] = []
    labels: list[int] = []
    for text, learn in segments:
        piece = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
        ids += piece
        labels += piece if learn else [IGNORE_INDEX] * len(piece)
    if not ids or ids[-1] != tokenizer.eos_token_id:
        ids.append(tokenizer.eos_token_id)
        labels.append(tokenizer.eos_token_id)
    return TokenizedSample(ids, labels)


def to_json(turns: list[Turn]) -> str:
    return json.dumps([[t.role, t.content] for t in turns], ensure_ascii=False)


def from_json(text: str) -> list[Turn]:
    return [Turn(role, content) for role, content in json.loads(text)]
