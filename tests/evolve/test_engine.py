"""The Ray side: workers, the cache in front of them, failures."""

import threading
import time

import pytest

from raywiz.evolve.config import LLMConfig
from raywiz.evolve.engine import LLMEngine
from raywiz.inference.chat import ChatRequest
from tests.evolve.fake_llm_server import FakeLLMServer

PARAMS = {"temperature": 0.0, "max_tokens": 32}


def reqs(tag, n, model="fake"):
    return [ChatRequest.of(model, f"{tag} task {i}", PARAMS) for i in range(n)]


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
                ray_local.kill(engine.pool.actors[0])

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


def test_vllm_backend_is_the_inference_engine_s_and_says_what_is_missing():
    from raywiz.evolve.engine import build_engine
    from raywiz.inference.vllm_backend import INSTALL_HINT, vllm_available

    if vllm_available():
        pytest.skip("vllm is installed here")
    with pytest.raises(RuntimeError) as e:
        build_engine(LLMConfig(backend="vllm", model="some/model"))
    assert str(e.value) == INSTALL_HINT  # raised by raywiz.inference's vllm adapter: the one vLLM path


def test_vllm_config_maps_onto_the_engine_spec():
    from pydantic import ValidationError

    cfg = LLMConfig(backend="vllm", model="/models/x", dtype="bfloat16",
                    engine_kwargs={"tensor_parallel_size": 2, "max_model_len": 4096})
    spec = cfg.engine_spec()
    assert (spec.backend, spec.model, spec.dtype, spec.tensor_parallel_size) == ("vllm", "/models/x", "bfloat16", 2)
    assert spec.vllm_args == {"max_model_len": 4096}
    assert cfg.num_gpus_per_worker == 2  # one GPU per tensor-parallel rank unless set
    assert LLMConfig(backend="vllm", model="m", num_gpus_per_worker=0.5).num_gpus_per_worker == 0.5
    assert LLMConfig(backend="hf", model="m").num_gpus_per_worker == 0
    with pytest.raises(ValidationError, match="set num_workers"):
        LLMConfig(backend="vllm", model="m", vllm_concurrency=2)
