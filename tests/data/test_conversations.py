"""Conversation data (ShareGPT, OpenAI messages) and weighted mixing of several sources."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from raywiz.config import ConfigError, parse_job
from raywiz.data import conversation as conv
from raywiz.data import mix
from raywiz.data.tokenize import IGNORE_INDEX, tokenize_sample
from raywiz.modeling import load_tokenizer

# A minimal chat template in the usual shape (role headers, an end-of-turn marker).
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


@pytest.fixture(scope="module")
def tokenizer():
    tok = load_tokenizer("tiny-gpt-bigcode")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _sharegpt(*turns):
    return {"conversations": [{"from": r, "value": v} for r, v in turns]}


def test_both_formats_parse_to_the_same_turns():
    a = conv.parse(_sharegpt(("system", "Be brief."), ("human", "hi"), ("gpt", "hello")), "sharegpt")
    b = conv.parse({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                                 {"role": "assistant", "content": "hello"}]}, "messages")
    assert a == b == [conv.Turn("system", "Be brief."), conv.Turn("user", "hi"), conv.Turn("assistant", "hello")]
    assert conv.parse({"messages": json.dumps([{"role": "user", "content": "q"},
                                               {"role": "assistant", "content": "a"}])}, "messages")[1].content == "a"


@pytest.mark.parametrize("record,formatting,reason", [
    (_sharegpt(("gpt", "hello"), ("human", "hi")), "sharegpt", r"conversations\[0\]: role out of order"),
    (_sharegpt(("human", "hi"), ("human", "again"), ("gpt", "x")), "sharegpt", r"\[1\]: role out of order"),
    (_sharegpt(("human", "hi"), ("gpt", "  ")), "sharegpt", r"conversations\[1\]: empty assistant turn"),
    (_sharegpt(("human", "hi")), "sharegpt", "ends with a user turn"),
    ({"conversations": [{"from": "human"}]}, "sharegpt", r"\[0\]: missing field 'value'"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages", "unknown role 'robot'"),
    ({"instruction": "x"}, "messages", "missing field 'messages'"),
])
def test_bad_conversations_say_why(record, formatting, reason):
    with pytest.raises(conv.BadConversation, match=reason):
        conv.parse(record, formatting)


def test_multi_turn_masks_every_user_turn_token_for_token(tokenizer):
    turns = [conv.Turn("system", "You write Python."), conv.Turn("user", "Add two numbers."),
             conv.Turn("assistant", "def add(a, b):\n    return a + b"), conv.Turn("user", "Now three."),
             conv.Turn("assistant", "def add3(a, b, c):\n    return a + b + c")]
    sample = conv.tokenize_conversation(tokenizer, turns)
    assert len(sample.input_ids) == len(sample.labels)
    text = tokenizer.decode(sample.input_ids)
    assert text.startswith("<|system|>\nYou write Python.<|end|>\n<|user|>\nAdd two numbers.")
    learned = [i for i, lab in zip(sample.input_ids, sample.labels) if lab != IGNORE_INDEX]
    assert all(lab in (IGNORE_INDEX, i) for i, lab in zip(sample.input_ids, sample.labels))
    # Exactly the assistant turns (with the template's end-of-turn after each) and the final EOS.
    expected = []
    for answer in (turns[2].content, turns[4].content):
        expected += tokenizer(answer + "<|end|>\n", add_special_tokens=False)["input_ids"]
    assert learned == expected + [tokenizer.eos_token_id]
    # Every token of the system and user turns is masked.
    masked = tokenizer.decode([i for i, lab in zip(sample.input_ids, sample.labels) if lab == IGNORE_INDEX])
    assert masked == ("<|system|>\nYou write Python.<|end|>\n<|user|>\nAdd two numbers.<|end|>\n<|assistant|>\n"
                      "<|user|>\nNow three.<|end|>\n<|assistant|>\n")


def test_one_exchange_uses_the_wizardcoder_prompt_like_instruction_rows(tokenizer):
    turns = [conv.Turn("user", "Reverse a string."), conv.Turn("assistant", "s[::-1]")]
    assert conv.tokenize_conversation(tokenizer, turns) == tokenize_sample(tokenizer, "Reverse a string.", "s[::-1]")
    with_system = conv.tokenize_conversation(tokenizer, [conv.Turn("system", "You are terse."), *turns])
    prompt = tokenizer.decode([i for i, lab in zip(with_system.input_ids, with_system.labels) if lab == IGNORE_INDEX])
    assert prompt == "You are terse.\n\n### Instruction:\nReverse a string.\n\n### Response:"
    plain = load_tokenizer("tiny-gpt-bigcode")  # no chat template: more than one exchange can't be rendered
    with pytest.raises(conv.BadConversation, match="needs a tokenizer with a chat template"):
        conv.tokenize_conversation(plain, [*turns, conv.Turn("user", "again"), conv.Turn("assistant", "x")])


def test_mix_targets_follow_the_weights_and_are_deterministic():
    assert mix.targets([100, 100], [3.0, 1.0]) == [150, 50]
    assert sum(mix.targets([7, 5, 1], [1.0, 1.0, 1.0])) == 13
    ids = [[f"a{i}" for i in range(10)], [f"b{i}" for i in range(30)]]
    copies = mix.choose(ids, [3.0, 1.0], seed=7)
    assert copies == mix.choose([list(reversed(ids[0])), ids[1]], [3.0, 1.0], seed=7)  # not arrival-order bound
    per_source = Counter()
    for (source, _), n in copies.items():
        per_source[source] += n
    assert per_source == {0: 30, 1: 10}  # 40 samples, 3:1; source 0 repeated 3 times over
    assert all(n == 3 for (s, _), n in copies.items() if s == 0)
    assert mix.choose(ids, [3.0, 1.0], seed=8) != copies
    batch = {"sample_id": ["a1", "b0"], "source": [0, 1], "x": [1, 2]}
    expanded = mix.expand(batch, {(0, "a1"): 3})
    assert expanded == {"sample_id": ["a1", "a1#2", "a1#3"], "source": [0, 0, 0], "x": [1, 1, 1]}


def test_sources_config_is_checked():
    job = parse_job({"name": "t", "train": {"data": {"sources": [
        {"path": "a.jsonl", "weight": 2}, {"hf_dataset": "org/chats", "formatting": "messages"}]}}})
    assert [s.name for s in job.train.data.sources] == ["a.jsonl", "org/chats[train]"]
    with pytest.raises(ConfigError, match="exactly one of `path` or `hf_dataset`"):
        parse_job({"name": "t", "train": {"data": {"sources": [{"weight": 1}]}}})
    with pytest.raises(ConfigError, match="not both"):
        parse_job({"name": "t", "train": {"data": {"paths": ["a"], "sources": [{"path": "b"}]}}})
    with pytest.raises(ConfigError, match="weight"):
        parse_job({"name": "t", "train": {"data": {"sources": [{"path": "b", "weight": 0}]}}})


@pytest.mark.slow
def test_three_sources_mixed_by_weight_on_ray(ray_local, tmp_path):
    import datasets

    from raywiz.data.pipeline import prepare_packed_dataset
    from raywiz.train.launch import resolve_sources

    alpaca = tmp_path / "alpaca.jsonl"
    alpaca.write_text("".join(json.dumps({"instruction": f"task {i}", "output": f"x = {i}"}) + "\n" for i in range(20)))
    chats = tmp_path / "chats.jsonl"
    rows = [_sharegpt(("human", f"question {i}"), ("gpt", f"answer {i}")) for i in range(20)]
    rows.insert(3, _sharegpt(("gpt", "I speak first"), ("human", "?")))  # a bad row, counted and listed
    chats.write_text("".join(json.dumps(r) + "\n" for r in rows))
    saved = tmp_path / "hf"
    datasets.Dataset.from_list([{"messages": [{"role": "user", "content": f"hf {i}"},
                                              {"role": "assistant", "content": f"ok {i}"}]} for i in range(20)]
                               ).save_to_disk(str(saved))
    job = parse_job({"name": "t", "train": {"data": {"max_length": 64, "sources": [
        {"path": str(alpaca), "weight": 2.0}, {"path": str(chats), "formatting": "sharegpt", "weight": 1.0},
        {"hf_dataset": str(saved), "formatting": "messages", "weight": 1.0}]}}})
    packed, report = prepare_packed_dataset(resolve_sources(job), job.train.data, job.model, seed=5, num_cpus=2)
    assert report.bad_rows == [{"where": f"{chats}:line 4",
                                "reason": "conversations[0]: role out of order (assistant where user was expected)"}]
    assert [(s["samples"], s["used"]) for s in report.sources] == [(20, 30), (20, 15), (20, 15)]
    assert [s["proportion"] for s in report.sources] == [0.5, 0.25, 0.25]
    ids = [s for r in packed.take_all() for s in r["sample_ids"].split(",")]
    assert len(ids) == 60 and len(set(ids)) == 60  # copies carry their own ids


def test_evolve_shards_with_messages_read_as_conversations(tmp_path, tokenizer):
    from raywiz.data.pipeline import read_shard_batch
    from raywiz.evolve.samples import Sample
    from raywiz.evolve.writer import ShardWriter

    writer = ShardWriter(str(tmp_path), rows_per_shard=10, write_messages=True, system_prompt="Answer in Python.")
    sample = Sample(sample_id="s1", instruction="Sum a list.", input="[1, 2]", output="sum(xs)", evol_round=0,
                    method="seed", parent_id="", source="seed", model="m")
    [name] = writer.write_round(0, [sample])
    out = read_shard_batch({"path": [str(tmp_path / name)]}, "auto", formatting="messages")
    assert out["bad_reason"] == [""] and out["sample_id"] == ["s1"]
    assert conv.from_json(out["conversation"][0]) == [
        conv.Turn("system", "Answer in Python."), conv.Turn("user", "Sum a list.\n[1, 2]"), conv.Turn("assistant", "sum(xs)")]
