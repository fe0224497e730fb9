"""The generation config section every stage shares: which engine, where it runs, how it is spread.

Evolve's ``evolve.llm``, eval's ``eval.generation`` (and so train's checkpoint validation) and serve's
``serve.engine`` extend ``EngineConfig`` with what only they need and their own defaults;
``engine_spec`` is the one place an ``EngineSpec`` is built from a config.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from raywiz.config_base import ConfigSection
from raywiz.inference import EngineSpec

Backend = Literal["transformers", "openai", "vllm"]
BACKENDS = ("transformers", "openai", "vllm")
ENDPOINT_BACKEND = "openai"  # the backend that calls a server (evolve's default) rather than holding a model
BACKEND_ALIASES = {"hf": "transformers"}  # job files written before the backends had one name each
# Old field names -> the one name each parameter has now (a clear error, not a silent second name).
RENAMED_FIELDS = {"max_new_tokens": "max_tokens", "gpus_per_worker": "num_gpus_per_worker",
                  "request_timeout_s": "timeout_s", "tensor_parallel_size": "engine_kwargs.tensor_parallel_size"}
# What changes how fast answers come, not what they are: left out of fingerprints and content hashes.
RUNTIME_FIELDS = frozenset({
    "num_workers", "num_cpus_per_worker", "num_gpus_per_worker", "concurrency", "batch_size", "timeout_s",
    "max_retries", "backoff_base_s", "backoff_max_s", "requests_per_minute", "tokens_per_minute",
    "rate_limit_window_s", "api_key_env", "stream_interval_ms"})


class EngineConfig(ConfigSection):

    backend: Backend = Field(
        "transformers",
        description="transformers: a local model on raywiz's slot decoder (CPU or GPU; 'hf' is accepted too); "
        "openai: any OpenAI-compatible endpoint; vllm: vLLM's engine (when installed)",
    )
    model: str | None = Field(None, description="openai: the served model's name; else the model path or hub id")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    batch_size: int | None = Field(None, ge=1, description="transformers: decode lanes, rows (or streams) decoded "
                                   "at once (default: 256 rows on GPU, as many as fit in half the free memory, "
                                   "16 on CPU; 64 streams on GPU, 8 on CPU)")
    stream_interval_ms: float = Field(
        0.0, ge=0, description="transformers, streams: a choice's text goes out at most this often (the first "
        "token at once); 0: every token on its own")
    # openai
    base_url: str | None = Field(None, description="openai: the API root, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str | None = Field(
        "OPENAI_API_KEY", description="openai: name of the environment variable holding the API key (the key "
        "itself is never logged or written); None: send no key (local servers)")
    endpoint: Literal["completions", "chat"] = Field("completions", description="openai: which API text prompts go to")
    concurrency: int = Field(8, ge=1, description="openai: requests in flight per worker")
    timeout_s: float = Field(300, gt=0, description="openai: per-request timeout")
    max_retries: int = Field(6, ge=0, description="openai: retries on 429, 5xx, timeouts, broken responses")
    backoff_base_s: float = Field(1.0, ge=0, description="openai: the first retry waits about this long, doubling")
    backoff_max_s: float = Field(60.0, ge=0)
    requests_per_minute: float | None = Field(None, gt=0, description="openai: request rate limit (all workers)")
    tokens_per_minute: float | None = Field(
        None, gt=0, description="openai: token rate limit (all workers); counts prompt estimate + max_tokens")
    rate_limit_window_s: float = Field(60.0, gt=0, description="limits hold over sliding windows this long")
    # vllm
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="vllm: vLLM engine arguments (tensor_parallel_size, max_model_len, ...)")
    # the Ray fan-out (raywiz.inference.ray_pool)
    num_workers: int = Field(0, ge=0, description="Ray actors, one engine each; 0: generate in this process")
    num_cpus_per_worker: float = Field(1, ge=0)
    num_gpus_per_worker: float | None = Field(
        None, ge=0, description="GPUs per engine actor; None: 1 when the cluster has GPUs and the engine is "
        "local (vllm: one per engine_kwargs.tensor_parallel_size), else 0")

    @model_validator(mode="before")
    @classmethod
    def _one_name_each(cls, data):
        if not isinstance(data, dict):
            return data
        for old, new in RENAMED_FIELDS.items():
            if old in data:
                raise ValueError(f"`{old}` is now `{new}`")
        if data.get("backend") in BACKEND_ALIASES:
            data = {**data, "backend": BACKEND_ALIASES[data["backend"]]}
        return data

    @model_validator(mode="after")
    def _openai_needs_url(self):
        if self.backend == "openai" and not self.base_url:
            raise ValueError("backend 'openai' needs `base_url`")
        return self

    @property
    def local(self) -> bool:
        """Whether the engine holds a model itself (and wants GPUs), rather than calling a server."""
        return self.backend != ENDPOINT_BACKEND

    @property
    def streams(self) -> bool:
        """Whether the engine can stream text as it decodes (serve needs one that does)."""
        return self.backend == "transformers"

    @property
    def server_chats(self) -> bool:
        """Whether prompts go to an endpoint's chat API (the server applies its chat template)."""
        return not self.local and self.endpoint == "chat"

    @property
    def on_ray(self) -> bool:
        """Whether generation goes to Ray engine actors (an endpoint's client already spreads it)."""
        return self.num_workers > 0 and self.local

    def gpus_per_worker(self, cluster_gpus: float = 0) -> float:
        """GPUs each engine actor asks Ray for, on a cluster with `cluster_gpus`."""
        if self.num_gpus_per_worker is not None:
            return self.num_gpus_per_worker
        return self.default_gpus_per_worker(cluster_gpus)

    def default_gpus_per_worker(self, cluster_gpus: float = 0) -> float:
        if not self.local:
            return 0
        if self.backend == "vllm":
            return float(self.engine_kwargs.get("tensor_parallel_size", 1))
        return 1 if cluster_gpus > 0 else 0

    def engine_spec(self, model: str | None = None, tokenizer: str | None = None, trust_remote_code: bool = False,
                    workers_sharing_limits: int = 1, device: str | None = None) -> EngineSpec:
        """The engine this section names, for `model` (a local model dir; an endpoint's model name
        defaults to its base name). Rate limits are for all workers: each takes 1/`workers_sharing_limits`."""
        served = self.model or (model or "").rstrip("/").rsplit("/", 1)[-1]
        vllm_args = dict(self.engine_kwargs)
        share = max(1, workers_sharing_limits)
        return EngineSpec(
            backend=self.backend, model=(model or self.model or "") if self.local else served, tokenizer=tokenizer,
            dtype=self.dtype, device=device, trust_remote_code=trust_remote_code, max_batch_size=self.batch_size,
            stream_slots=self.batch_size, emit_interval_s=self.stream_interval_ms / 1000,
            base_url=self.base_url, api_key_env=self.api_key_env, endpoint=self.endpoint,
            concurrency=self.concurrency, timeout_s=self.timeout_s, max_retries=self.max_retries,
            backoff_base_s=self.backoff_base_s, backoff_max_s=self.backoff_max_s,
            requests_per_minute=self.requests_per_minute / share if self.requests_per_minute else None,
            tokens_per_minute=self.tokens_per_minute / share if self.tokens_per_minute else None,
            rate_limit_window_s=self.rate_limit_window_s,
            tensor_parallel_size=int(vllm_args.pop("tensor_parallel_size", 1)), vllm_args=vllm_args,
        )
