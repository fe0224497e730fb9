"""Evolve's chat requests through raywiz.inference's OpenAI engine, against a real HTTP server on
127.0.0.1 that misbehaves on purpose."""

import asyncio
import time

from raywiz.inference.chat import ChatRequest
from raywiz.inference.openai_backend import OpenAIClient, OpenAIEngine, RateLimiter
from tests.evolve.fake_llm_server import FakeLLMServer

PARAMS = {"temperature": 0.0, "max_tokens": 64}


def requests(n, model="fake"):
    return [ChatRequest.of(model, f"Write a Python function number {i}.", PARAMS) for i in range(n)]


def backend(server, api_key=None, **kw):
    args = dict(concurrency=8, timeout_s=2.0, max_retries=4, backoff_base_s=0.01, backoff_max_s=0.05)
    args.update(kw)
    return OpenAIEngine(OpenAIClient(server.base_url, api_key, **args), "fake", endpoint="chat")


def test_every_fault_is_retried_and_every_request_answered_once(fake_llm):
    faults = ["429", "500", "503", "malformed", "truncated", "no_choices", "timeout"]
    fake_llm.set_faults(faults)
    fake_llm.hang_s = 1.0
    reqs = requests(30)
    results = list(backend(fake_llm, timeout_s=0.5).chat(reqs))
    assert sorted(r.key for r in results) == sorted(r.key for r in reqs)  # one result per request
    assert all(r.ok for r in results)
    retries = sorted(reason for r in results for reason in r.retries)
    assert len(retries) == len(faults)
    assert {"429", "500", "503", "timeout", "truncated body"} <= set(retries)
    assert sum("malformed" in r for r in retries) == 2
    assert fake_llm.wait_idle()
    stats = fake_llm.stats()
    assert stats["total_requests"] == 30 + len(faults)
    assert stats["completed"] == 30 and stats["completed_more_than_once"] == 0
    # Token accounting comes from the server's usage field.
    assert all(r.prompt_tokens > 0 and r.completion_tokens > 0 for r in results)


def test_concurrency_limit_is_reached_and_never_exceeded():
    with FakeLLMServer(latency_s=0.1) as server:
        start = time.monotonic()
        results = list(backend(server, concurrency=6).chat(requests(36)))
        elapsed = time.monotonic() - start
        assert len(results) == 36 and server.max_in_flight == 6
    assert elapsed < 36 * 0.1 / 2  # concurrent, not one at a time


def test_gives_up_after_max_retries_and_fails_fast_on_4xx(fake_llm):
    fake_llm.set_faults(["503"] * 3)
    [result] = list(backend(fake_llm, max_retries=2).chat(requests(1)))
    assert not result.ok and "3 attempts" in result.error and result.retries == ["503"] * 3

    fake_llm.require_api_key = "sk-right"
    before = fake_llm.total_requests
    [result] = list(backend(fake_llm, api_key="sk-wrong").chat(requests(1)))
    assert not result.ok and "HTTP 401" in result.error
    assert fake_llm.total_requests == before + 1  # not retried
    [result] = list(backend(fake_llm, api_key="sk-right").chat(requests(1)))
    assert result.ok


def test_api_key_comes_from_the_environment_and_stays_out_of_reprs(monkeypatch, fake_llm):
    from raywiz.evolve.config import LLMConfig
    from raywiz.evolve.engine import build_engine

    cfg = LLMConfig(base_url=fake_llm.base_url, model="fake", api_key_env="RAYWIZ_TEST_KEY")
    monkeypatch.delenv("RAYWIZ_TEST_KEY", raising=False)
    try:
        build_engine(cfg)
        raise AssertionError("a missing key must fail")
    except RuntimeError as e:
        assert "RAYWIZ_TEST_KEY" in str(e)
    monkeypatch.setenv("RAYWIZ_TEST_KEY", "sk-very-secret-123")
    fake_llm.require_api_key = "sk-very-secret-123"
    b = build_engine(cfg)
    assert "secret" not in repr(b) and "secret" not in repr(b.client) and "secret" not in str(vars(b).keys())
    assert all(r.ok for r in b.chat(requests(2)))


def test_rate_limiter_holds_requests_and_tokens_per_window():
    async def acquire_all(limiter, n, tokens):
        start = time.monotonic()
        for _ in range(n):
            await limiter.acquire(tokens)
        return time.monotonic() - start

    # 1200 requests/minute over 0.25 s windows = 5 per window: 12 requests need 3 windows.
    elapsed = asyncio.run(acquire_all(RateLimiter(1200, None, window_s=0.25), 12, 1))
    assert 0.45 < elapsed < 1.2
    # 2400 tokens/minute over 0.25 s windows = 10 tokens per window; 4-token requests: 2 per window.
    elapsed = asyncio.run(acquire_all(RateLimiter(None, 2400, window_s=0.25), 6, 4))
    assert 0.45 < elapsed < 1.2
    assert asyncio.run(acquire_all(RateLimiter(None, None), 1000, 10)) < 0.5  # no limits, no waiting


def test_rpm_limit_spreads_requests_against_the_server():
    with FakeLLMServer() as server:
        b = backend(server, requests_per_minute=1200, rate_limit_window_s=0.25)  # 5 per 0.25 s
        list(b.chat(requests(15)))
        times = sorted(server.request_times)
    assert times[-1] - times[0] >= 0.45  # 15 requests need at least 3 windows
    for i in range(len(times) - 5):
        assert times[i + 5] - times[i] >= 0.2  # never more than 5 within a window
