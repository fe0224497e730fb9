import pytest

from raywiz.evolve.config import LLMConfig
from raywiz.evolve.engine import build_engine
from raywiz.inference import chat_prompt
from raywiz.inference.chat import ChatRequest


@pytest.mark.slow
def test_tiny_model_batched_generate():
    backend = build_engine(LLMConfig(backend="transformers", model="tiny-gpt-bigcode", batch_size=3))
    greedy = {"temperature": 0.0, "max_tokens": 12}
    reqs = [ChatRequest.of("tiny-gpt-bigcode", f"Write function {i} " + "x " * i, greedy) for i in range(7)]
    reqs.append(ChatRequest.of("tiny-gpt-bigcode", "Sample me", {"temperature": 0.8, "max_tokens": 5}))
    results = list(backend.chat(reqs))
    assert sorted(r.key for r in results) == sorted(r.key for r in reqs)  # one result each, 3 batches + 1
    by_key = {r.key: r for r in results}
    for req in reqs:
        r = by_key[req.key]
        assert r.ok and r.prompt_tokens > 0
        assert 0 < r.completion_tokens <= req.params["max_tokens"] or r.finish_reason == "stop"
        assert r.finish_reason in ("stop", "length")
    # Greedy decoding is deterministic, batch composition aside.
    again = {r.key: r.text for r in backend.chat(reqs[:2])}
    assert again[reqs[0].key] == by_key[reqs[0].key].text
    # WizardCoder's prompt wraps the message when the tokenizer has no chat template.
    assert chat_prompt(reqs[0].messages, backend.tokenizer, "wizardcoder").startswith("Below is an instruction")
