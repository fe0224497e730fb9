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
