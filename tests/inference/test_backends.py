"""The vllm adapter without vLLM (guard, message, mapping) and the openai engine against a real server."""

import pytest

from raywiz.inference import EngineSpec, SamplingParams, make_engine
from raywiz.inference.vllm_backend import INSTALL_HINT, vllm_available, vllm_llm_kwargs, vllm_sampling_kwargs


def test_vllm_guard_names_the_fix():
    if vllm_available():
        pytest.skip("vLLM is installed here")
    with pytest.raises(RuntimeError) as e:
        make_engine(EngineSpec(backend="vllm", model="any"))
    assert str(e.value) == INSTALL_HINT and "pip install vllm" in INSTALL_HINT


def test_vllm_parameter_mapping():
    greedy = vllm_sampling_kwargs(SamplingParams(n=4, max_tokens=7, stop=("\nclass",), seed=3))
    assert greedy == dict(n=1, temperature=0.0, top_p=1.0, max_tokens=7, stop=["\nclass"], seed=3)
    sampled = vllm_sampling_kwargs(SamplingParams(n=4, temperature=0.8, top_p=0.95, max_tokens=7))
    assert sampled == dict(n=4, temperature=0.8, top_p=0.95, max_tokens=7, stop=None, seed=0)
    llm = vllm_llm_kwargs("/m", None, "bfloat16", False, 2, {"max_model_len": 4096, "dtype": "float16"})
    assert llm == dict(model="/m", tokenizer="/m", dtype="float16", trust_remote_code=False, tensor_parallel_size=2,
                       max_model_len=4096)  # vllm_args add to the spec's arguments and win over them


def test_unknown_backend_is_refused_by_name():
    with pytest.raises(ValueError, match="'tgi'"):
        make_engine(EngineSpec(backend="tgi", model="x"))


def test_openai_engine_retries_and_counts_usage_against_a_faulty_server():
    from tests.evolve.fake_llm_server import FakeLLMServer
    from raywiz.inference.openai_backend import OpenAIClient, OpenAIEngine

    with FakeLLMServer(faults=["429", "503", "malformed"]) as server:
        client = OpenAIClient(server.base_url, backoff_base_s=0.01, backoff_max_s=0.05, concurrency=4)
        engine = OpenAIEngine(client, "fake", endpoint="chat")
        out = engine.generate(["Write a Python function number 1.", "Write a Python function number 2."],
                              SamplingParams(n=2, max_tokens=16))
    assert [len(row) for row in out] == [2, 2] and all(c.text for row in out for c in row)
    assert client.usage.requests == 2 and client.usage.failed == 0
    assert sorted(client.usage.retries) == ["429", "503", "malformed response: JSONDecodeError"]
    assert client.usage.prompt_tokens > 0 and client.usage.completion_tokens > 0
