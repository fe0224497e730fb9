"""The `serve:` section of a job config.

`raywiz serve JOB.yaml` follows the job's run: it serves the newest complete checkpoint in
``{storage}/{name}/train`` and swaps in each newer one as training writes it. ``checkpoint`` pins a
model instead (an HF directory, a checkpoint directory, another run's directory or run name).
"""

from __future__ import annotations

from typing import Callable

from pydantic import Field, field_validator, model_validator

from raywiz.config_base import ConfigSection as _Section
from raywiz.inference.config import EngineConfig

# serve's engine settings before they moved into `serve.engine` (a clear error, not a silent second name)
MOVED_TO_ENGINE = {"max_batch_size": "engine.batch_size", "stream_interval_ms": "engine.stream_interval_ms"}


class ServeEngineConfig(EngineConfig):
    """The generation section every stage shares, with serve's defaults: a model served by streaming
    on a local engine (transformers, the default and the one that streams; the checkpoint comes from `serve.checkpoint`, the dtype from
    `model.dtype` unless set here)."""

    batch_size: int = Field(64, ge=1, description="requests decoded together by one model (continuous batching: "
                            "a new request joins the running batch at the next step)")
    stream_interval_ms: float = Field(
        50.0, ge=0, description="streamed text goes out at most this often per choice (the first token at once); "
        "0: every token on its own (costly under load: each event is a hop through Ray Serve)")

    @model_validator(mode="after")
    def _serve_needs_a_streaming_local_engine(self):
        if not self.streams:
            raise ValueError(f"backend {self.backend!r} does not stream; serve needs one that does (transformers)")
        if self.model is not None:
            raise ValueError("`model`: serve's model is `serve.checkpoint` (or the job's run)")
        return self


class ServeLimits(_Section):
    """What one request may ask for; anything beyond gets a 400 that names the field."""

    max_prompt_tokens: int = Field(4096, ge=1, description="prompt tokens after the template is applied")
    max_tokens: int = Field(1024, ge=1, description="the largest `max_tokens` a request may ask for")
    default_max_tokens: int = Field(256, ge=1, description="`max_tokens` when a request gives none")
    max_n: int = Field(4, ge=1, description="completions per request (`n`)")
    max_prompts: int = Field(64, ge=1, description="prompts in one /v1/completions request (lm-evaluation-harness "
                             "sends its batch_size of them)")
    # OpenAI allows 4; lm-evaluation-harness sends a task's `until` plus the EOS string (HumanEval's is 6).
    max_stop: int = Field(16, ge=0, description="stop sequences per request")
    max_request_bytes: int = Field(1_000_000, ge=1024, description="request body size (413 beyond)")


class ServeConfig(_Section):
    checkpoint: str | None = Field(
        None,
        description="what to serve: an HF model directory (raywiz's hf/ export or any AutoModelForCausalLM "
        "dir), a checkpoint_* directory, a run directory or a run name under `storage`. "
        "None: this job's run, following its newest checkpoint.",
    )
    watch: bool = Field(True, description="when serving a run: swap in each newer complete checkpoint")
    watch_interval_s: float = Field(5.0, gt=0, description="how often the run's train/ directory is listed")
    verify_checksums: bool = Field(
        False, description="also compare sha256 sums when the manifest has them (reads every byte once)"
    )

    # Where the HTTP API listens (Ray Serve's proxy; one per cluster, so the first app to start sets it).
    host: str = Field("127.0.0.1", description="0.0.0.0 to accept connections from other machines (then routes "
                      "that run the model or code need api_key_env, and clients' Host names go in allowed_hosts)")
    port: int = Field(8000, ge=0, le=65535, description="0: pick a free port")
    route_prefix: str = "/"
    app_name: str = Field("raywiz", description="Ray Serve application name")
    api_key_env: str | None = Field(
        None,
        description="name of an environment variable holding a bearer token; when set, every /v1 and /api "
        "request needs `Authorization: Bearer <token>` (the token itself never goes in the YAML)",
    )

    # Who may use serve's /v1 and /api routes (raywiz.serve.guard); how many /api/check run at once.
    allowed_hosts: list[str] = Field(
        default_factory=list, description="Host header names accepted besides loopback and `host` (DNS rebinding "
        "guard): list the names clients use when `host` is 0.0.0.0")
    check_allowed_origins: list[str] = Field(
        default_factory=list, description="web origins besides the page's own that may use /v1 and /api (run "
        "the model, post checks), e.g. https://lab.example:8443")
    checks_per_client: int = Field(2, ge=1, description="checks one client may have running at once (429 beyond)")
    check_workers: int = Field(2, ge=1, description="checks run at once; they have their own threads, so slow "
                               "ones never hold up /v1 or /api/status")

    # Replicas and what each holds.
    num_replicas: int = Field(1, ge=1)
    num_cpus: float = Field(1, gt=0, description="CPUs per replica")
    num_gpus: float | None = Field(None, ge=0, description="GPUs per replica; None: 1 if the cluster has GPUs")
    max_models: int = Field(3, ge=1, description="checkpoints loaded side by side per replica (LRU)")
    max_model_memory_gb: float | None = Field(
        None, gt=0, description="also evict least-recently-used checkpoints until their weights fit"
    )
    engine: ServeEngineConfig = Field(default_factory=ServeEngineConfig,
                                      description="how each model generates (the generation section every stage shares)")
    max_ongoing_requests: int = Field(64, ge=1, description="per replica; more are queued by Ray Serve")
    cache_dir: str | None = Field(
        None, description="local copies of s3:// / gs:// checkpoints (default: a temp directory)"
    )

    # The evaluation page's task picker.
    benchmarks: dict[str, str | None] = Field(
        default_factory=lambda: {"humaneval": None, "mbpp": None},
        description="benchmarks offered on the page: name -> data file (None: raywiz's default location); "
        "tests run in the eval sandbox with the benchmark's own time limits",
    )

    limits: ServeLimits = Field(default_factory=ServeLimits)

    @model_validator(mode="before")
    @classmethod
    def _engine_settings_moved(cls, data):
        if isinstance(data, dict):
            for old, new in MOVED_TO_ENGINE.items():
                if old in data:
                    raise ValueError(f"`serve.{old}` is now `serve.{new}`")
        return data

    @field_validator("route_prefix")
    @classmethod
    def _route_prefix(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must start with '/'")
        return v

    def resolve_paths(self, fix: Callable[[str], str]) -> None:
        if self.checkpoint is not None:
            self.checkpoint = fix(self.checkpoint)
        if self.cache_dir is not None:
            self.cache_dir = fix(self.cache_dir)
        self.benchmarks = {k: (fix(v) if v else v) for k, v in self.benchmarks.items()}
