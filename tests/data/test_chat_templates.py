"""Named chat templates on any tokenizer (train.data.template.name: chatml): tokens added where missing,
multi-turn conversations rendered with the loss on assistant turns only, Alpaca rows beside them."""

from __future__ import annotations

import pytest

from raywiz.config import parse_job
from raywiz.data import conversation as conv
from raywiz.data.template import CHAT_TEMPLATES, with_chat_template
from raywiz.data.tokenize import IGNORE_INDEX, tokenize_sample
from raywiz.modeling import load_tokenizer

TURNS = [conv.Turn("system", "You write Python."), conv.Turn("user", "Add two numbers."),
         conv.Turn("assistant", "def add(a, b):\n    return a + b"), conv.Turn("user", "Now three."),
         conv.Turn("assistant", "def add3(a, b, c):\n    return a + b + c")]


@pytest.fixture(scope="module")
def chatml():
    return with_chat_template(load_tokenizer("tiny-gpt-bigcode"), "chatml")


def test_chatml_on_a_tokenizer_without_it_adds_its_tokens(chatml):
    plain = load_tokenizer("tiny-gpt-bigcode")
    assert plain.chat_template is None and "<|im_start|>" not in plain.get_vocab()
    assert len(chatml) == len(plain) + 2 and chatml.eos_token == "<|im_end|>"
    start, end = chatml.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert chatml("<|im_start|>user\nhi<|im_end|>")["input_ids"][0] == start and start >= len(plain)
    assert chatml.eos_token_id == end
    # installing it again (a second tokenize task in the same process) adds nothing
    assert len(with_chat_template(chatml, "chatml")) == len(chatml)
    # any other name leaves the tokenizer as it is
    assert with_chat_template(load_tokenizer("tiny-gpt-bigcode"), "wizardcoder").chat_template is None


def test_multi_turn_with_chatml_learns_only_the_assistant_turns(chatml):
    sample = conv.tokenize_conversation(chatml, TURNS, template="chatml")
    text = chatml.decode(sample.input_ids)
    assert text == ("<|im_start|>system\nYou write Python.<|im_end|>\n<|im_start|>user\nAdd two numbers.<|im_end|>\n"
                    "<|im_start|>assistant\ndef add(a, b):\n    return a + b<|im_end|>\n<|im_start|>user\nNow three."
                    "<|im_end|>\n<|im_start|>assistant\ndef add3(a, b, c):\n    return a + b + c<|im_end|>")
    learned = [t for t, label in zip(sample.input_ids, sample.labels) if label != IGNORE_INDEX]
    assert chatml.decode(learned) == ("def add(a, b):\n    return a + b<|im_end|>\n"
                                      "def add3(a, b, c):\n    return a + b + c<|im_end|>")
    assert sample.input_ids[-1] == chatml.eos_token_id and sample.input_ids.count(chatml.eos_token_id) == 5


def test_one_exchange_and_alpaca_rows_use_chatml_too(chatml):
    one = conv.tokenize_conversation(chatml, TURNS[1:3], template="chatml")
    alpaca = tokenize_sample(chatml, "Add two numbers.", "def add(a, b):\n    return a + b", template="chatml")
    prompt = "<|im_start|>user\nAdd two numbers.<|im_end|>\n<|im_start|>assistant\n"
    for sample in (one, alpaca):
        assert chatml.decode(sample.input_ids).startswith(prompt)
        n_prompt = sum(label == IGNORE_INDEX for label in sample.labels)
        assert chatml.decode(sample.input_ids[:n_prompt]) == prompt
    assert one.input_ids == alpaca.input_ids


def test_without_a_chat_template_multi_turn_rows_name_the_fix():
    with pytest.raises(conv.BadConversation, match="template.name: chatml"):
        conv.tokenize_conversation(load_tokenizer("tiny-gpt-bigcode"), TURNS, template="wizardcoder")


def test_config_takes_the_named_templates_and_help_lists_them():
    for name in ("chatml", "model", "chat"):
        assert parse_job({"name": "t", "train": {"data": {"paths": ["x"], "template": {"name": name}}}}
                         ).train.data.template.name == name
    from raywiz.train.cli import _templates_help

    assert all(name in _templates_help() for name in ("model", *CHAT_TEMPLATES))
