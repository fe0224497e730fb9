"""The Ray side: workers, the cache in front of them, failures."""

import threading
import time

import pytest

from raywiz.evolve.config import LLMConfig
from raywiz.evolve.engine import LLMEngine
from raywiz.evolve.llm import LLMRequest
from tests.evolve.fake_llm_server import FakeLLMServer

PARAMS = {"temperature": 0.0, "max_tokens": 32}


def reqs(tag, n, model="fake"):
    return [LLMRequest.chat(model, f"{tag} task {i}", PARAMS) for i in range(n)]


@pytest.mark.slow
def test_cache_hits_are_not_sent_and_a_dead_worker_is_replaced(tmp_path, ray_local):
    with FakeLLMServer(latency_s=0.1) as server:
        cfg = LLMConfig(base_url=server.base_url, model="fake", api_key_env=None, concurrency=4)
        batch = reqs("a", 60)
        with LLMEngine(cfg, str(tmp_path), show_progress=False) as engine:
            first = engine.run(batch[:10], "warm")
            assert server.total_requests == 10

            def kill_worker_midway():
                while server.total_requests < 30:
                    time.sleep(0.01)
                ray_local.kill(engine._workers[0])

            killer = threading.Thread(target=kill_worker_midway)
            killer.start()
            answers = engine.run(batch, "all")  # 10 cached, 50 sent; the worker dies on the way
            killer.join()
        assert set(answers) == {r.key for r in batch} and all(a.ok for a in answers.values())
        assert all(answers[k].text == first[k].text for k in first)
        assert server.wait_idle()
        stats = server.stats()
        assert all(stats["requests_by_key"][k] == 1 for k in first)  # cached: never sent again
        repeats = {k: c for k, c in stats["requests_by_key"].items() if c > 1}
        # Only the dead worker's in-flight requests go again.
        assert stats["total_requests"] - 60 <= cfg.concurrency, (repeats, engine.stats)
        assert engine.stats.cache_hits == 10

        # A fresh engine on the same cache sends nothing.
        before = server.total_requests
        with LLMEngine(cfg, str(tmp_path), show_progress=False) as again:
            assert set(again.run(batch, "replay")) == set(answers)
        assert server.total_requests == before


@pytest.mark.slow
def test_a_worker_that_cannot_start_fails_once_with_the_reason(tmp_path, ray_local, monkeypatch):
    monkeypatch.delenv("RAYWIZ_NOT_SET_KEY", raising=False)
    cfg = LLMConfig(base_url="http://127.0.0.1:9/v1", model="fake", api_key_env="RAYWIZ_NOT_SET_KEY")
    with LLMEngine(cfg, str(tmp_path), show_progress=False) as engine:
        with pytest.raises(RuntimeError, match="RAYWIZ_NOT_SET_KEY"):
            engine.run(reqs("b", 3), "no key")


def test_vllm_backend_says_what_is_missing():
    from raywiz.evolve.llm import make_backend
    from raywiz.evolve.llm.vllm_data import vllm_available

    if vllm_available():
        pytest.skip("vllm is installed here")
    with pytest.raises(RuntimeError, match="pip install vllm"):
        make_backend(LLMConfig(backend="vllm", model="some/model"))
