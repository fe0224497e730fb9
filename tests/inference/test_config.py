"""The one generation config section (raywiz.inference.config.EngineConfig) and the one place an
EngineSpec is built from it."""

import pytest
from pydantic import ValidationError

from raywiz.inference.config import EngineConfig


def test_hf_is_read_as_transformers_and_old_names_say_the_new_one():
    assert EngineConfig(backend="hf").backend == "transformers"
    for old, new in (("max_new_tokens", "max_tokens"), ("gpus_per_worker", "num_gpus_per_worker"),
                     ("request_timeout_s", "timeout_s")):
        with pytest.raises(ValidationError, match=f"`{old}` is now `{new}`"):
            EngineConfig(**{old: 1})
    with pytest.raises(ValidationError, match="needs `base_url`"):
        EngineConfig(backend="openai")


def test_engine_spec_for_a_local_model_and_for_an_endpoint():
    local = EngineConfig(batch_size=4, dtype="float32", engine_kwargs={"tensor_parallel_size": 2, "max_model_len": 64})
    spec = local.engine_spec("/models/ckpt/hf", tokenizer="tok", trust_remote_code=True)
    assert (spec.backend, spec.model, spec.tokenizer, spec.trust_remote_code) == ("transformers", "/models/ckpt/hf",
                                                                                  "tok", True)
    assert (spec.max_batch_size, spec.dtype, spec.tensor_parallel_size, spec.vllm_args) == (4, "float32", 2,
                                                                                             {"max_model_len": 64})
    endpoint = EngineConfig(backend="openai", base_url="http://127.0.0.1:9/v1", requests_per_minute=60,
                            tokens_per_minute=1000, endpoint="chat", timeout_s=5)
    spec = endpoint.engine_spec("/models/ckpt/hf/", workers_sharing_limits=4)
    assert (spec.backend, spec.model, spec.endpoint, spec.timeout_s) == ("openai", "hf", "chat", 5)
    assert (spec.requests_per_minute, spec.tokens_per_minute) == (15, 250)  # each worker's share
    assert EngineConfig(backend="openai", base_url="u", model="served").engine_spec("/x").model == "served"
    assert endpoint.server_chats and not endpoint.local and not endpoint.on_ray


def test_gpus_per_worker_defaults():
    assert EngineConfig().gpus_per_worker(cluster_gpus=0) == 0
    assert EngineConfig().gpus_per_worker(cluster_gpus=8) == 1
    assert EngineConfig(backend="vllm", engine_kwargs={"tensor_parallel_size": 2}).gpus_per_worker() == 2
    assert EngineConfig(backend="openai", base_url="u").gpus_per_worker(cluster_gpus=8) == 0
    assert EngineConfig(num_gpus_per_worker=0.5).gpus_per_worker(cluster_gpus=8) == 0.5
    assert EngineConfig(num_workers=2).on_ray and not EngineConfig().on_ray


def test_serve_engine_is_the_same_section_with_serve_s_defaults():
    from raywiz.serve.config import ServeConfig, ServeEngineConfig

    engine = ServeConfig().engine
    assert isinstance(engine, EngineConfig) and isinstance(engine, ServeEngineConfig)
    spec = ServeConfig(engine={"batch_size": 8, "stream_interval_ms": 20, "dtype": "float32"}).engine.engine_spec(
        "/models/ckpt/hf", device="cpu")
    # Streams decode in `batch_size` lanes and go out every `stream_interval_ms`.
    assert (spec.model, spec.device, spec.dtype, spec.stream_slots, spec.emit_interval_s) == (
        "/models/ckpt/hf", "cpu", "float32", 8, 0.02)
    assert (engine.batch_size, engine.stream_interval_ms) == (64, 50.0)
    for old, new in (("max_batch_size", "engine.batch_size"), ("stream_interval_ms", "engine.stream_interval_ms")):
        with pytest.raises(ValidationError, match=f"`serve.{old}` is now `serve.{new}`"):
            ServeConfig(**{old: 1})
    with pytest.raises(ValidationError, match="does not stream"):
        ServeConfig(engine={"backend": "openai", "base_url": "http://127.0.0.1:9/v1"})
    with pytest.raises(ValidationError, match="serve.checkpoint"):
        ServeConfig(engine={"model": "/elsewhere"})


def test_serve_engine_dtype_is_the_job_s_model_dtype_unless_set(tmp_path):
    from raywiz.config import parse_job
    from raywiz.serve.app import plan

    base = {"name": "d", "storage": str(tmp_path), "model": {"name_or_path": "tiny-gpt-bigcode", "dtype": "float32"}}
    (tmp_path / "d" / "train").mkdir(parents=True)
    settings, _ = plan(parse_job(base))
    assert settings.serve.engine.dtype == "float32"
    settings, _ = plan(parse_job({**base, "serve": {"engine": {"dtype": "bfloat16"}}}))
    assert settings.serve.engine.dtype == "bfloat16"
