"""The `evolve:` section of a job config: Code Evol-Instruct (seeds -> rounds -> instruction shards).

Defaults follow WizardCoder: the five published methods, 3 rounds, seeds kept in the final dataset,
every evolved instruction answered by the same LLM. The prompt texts themselves live in
``raywiz/evolve/prompts.py``; here are only the knobs.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, Literal

from pydantic import Field, model_validator

from raywiz.config_base import ConfigSection as _Section
from raywiz.evolve.prompts import METHODS
from raywiz.inference.config import RUNTIME_FIELDS as ENGINE_RUNTIME_FIELDS
from raywiz.inference.config import ENDPOINT_BACKEND, Backend, EngineConfig


class SeedsConfig(_Section):
    paths: list[str] = Field(
        default_factory=list,
        description="Code Alpaca style seed files (JSON array, JSONL, Parquet; globs and directories too); "
        "'raywiz:quickstart/instructions.jsonl' names the seed set shipped with raywiz.",
    )
    hf_dataset: str | None = Field(
        None, description="a Hugging Face dataset name or local dataset dir (needs `pip install datasets`; online)"
    )
    hf_split: str = "train"
    instruction_field: str = "instruction"
    input_field: str = "input"
    output_field: str = "output"
    limit: int | None = Field(None, ge=1, description="use only the first N seeds (after exact-duplicate removal)")

    @model_validator(mode="after")
    def _some_source(self):
        if not self.paths and not self.hf_dataset:
            raise ValueError("give seed `paths` or an `hf_dataset`")
        return self


class GenerationParams(_Section):
    """Sampling parameters sent with each request (OpenAI names; mapped for vLLM and transformers)."""

    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(2048, ge=1)
    stop: list[str] | None = None

    def as_request_params(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class LLMConfig(EngineConfig):
    """Evolve's LLM: raywiz.inference's engine config, with evolve's defaults (an OpenAI endpoint, one
    worker sending 64 requests at once) and what only evolve needs (prices, failure tolerance)."""

    backend: Backend = Field(
        ENDPOINT_BACKEND,
        description="openai: any OpenAI-compatible chat/completions endpoint; transformers ('hf' too): a local "
        "model on raywiz's slot decoder; vllm: vLLM's engine (needs vllm). Local models run one engine per worker.",
    )
    # evolve's defaults for the engine's fields
    model: str = Field("gpt-3.5-turbo", description="model name sent to the endpoint, or the model path (vllm, "
                       "transformers)")
    base_url: str = Field("https://api.openai.com/v1", description="openai backend: the API root (…/v1)")
    concurrency: int = Field(64, ge=1, description="openai: requests in flight per worker")
    timeout_s: float = Field(120, gt=0, description="openai: per-request timeout")
    num_workers: int = Field(1, ge=1, description="Ray actors sending requests (openai), or model replicas "
                             "(transformers, vllm: one engine each)")
    num_gpus_per_worker: float = Field(0, ge=0, description="transformers, vllm: GPUs per model replica (vllm's "
                                       "default: engine_kwargs.tensor_parallel_size, else 1)")

    # evolve's own
    max_failed_fraction: float = Field(
        0.01, ge=0, le=1,
        description="fail the run when more than this fraction of a phase's requests fail after all retries "
        "(a rerun resends only those: answered requests are cached)",
    )
    price_per_1m_input_tokens: float = Field(0.0, ge=0, description="for the cost estimate (USD)")
    price_per_1m_output_tokens: float = Field(0.0, ge=0, description="for the cost estimate (USD)")

    @model_validator(mode="before")
    @classmethod
    def _vllm_concurrency_is_gone(cls, data):
        if isinstance(data, dict) and "vllm_concurrency" in data:
            raise ValueError("vllm_concurrency is gone: vLLM engines are evolve's workers now (one per Ray "
                             "actor), so set num_workers (replicas) and num_gpus_per_worker")
        return data

    @model_validator(mode="after")
    def _vllm_gets_its_gpus(self):
        # vLLM needs GPUs: unless the config says otherwise, a worker gets one per tensor-parallel rank
        # (a transformers model runs on CPU unless GPUs are asked for).
        if "num_gpus_per_worker" not in self.model_fields_set:
            self.num_gpus_per_worker = self.default_gpus_per_worker(cluster_gpus=0)
        return self


class EliminationConfig(_Section):
    info_gain: Literal["heuristic", "judge", "off"] = Field(
        "heuristic",
        description="how 'no information gain over the parent' is decided: judge asks the LLM with "
        "WizardLM's equality prompt; heuristic needs `min_new_words` words the parent lacks",
    )
    min_new_words: int = Field(3, ge=0)
    sorry_max_words: int = Field(80, ge=0, description="a response saying 'sorry' shorter than this is dropped")
    drop_truncated: bool = Field(
        True, description="drop evolutions and responses cut by max_tokens (finish_reason 'length')")
    check_python: bool = Field(
        True, description="a response that should hold Python must have a block that parses"
    )


class DecontamConfig(_Section):
    enabled: bool = True
    benchmarks: list[Literal["humaneval", "humaneval+", "mbpp", "mbpp+", "ds1000"]] = Field(
        default_factory=lambda: ["humaneval", "mbpp", "ds1000"]
    )
    data_paths: dict[str, str] = Field(
        default_factory=dict, description="benchmark name -> local data file (default: the loader's own)"
    )
    on_missing_benchmark: Literal["error", "warn"] = Field(
        "warn", description="a benchmark whose data can't be loaded: fail, or skip it (recorded in the report)"
    )
    ngram: int = Field(10, ge=2, description="word n-gram length")
    threshold: float = Field(
        0.5, gt=0, le=1, description="flag a sample holding this fraction of a benchmark text's n-grams"
    )
    min_tokens: int = Field(8, ge=1, description="benchmark texts shorter than this many words are ignored")
    embedding_model: str | None = Field(
        None, description="optional: a transformers model for embedding similarity (mean-pooled)"
    )
    embedding_threshold: float = Field(0.95, gt=0, le=1)
    exec: bool = Field(
        False, description="also run every answer that defines a function against the tests of the HumanEval(+)/"
        "MBPP(+) tasks it could answer, in the sandbox: one that passes is contamination (evolve/decontam_exec.py)")
    exec_match: Literal["name", "signature", "all"] = Field(
        "signature", description="exec: which tasks an answer's function is run against: same entry point name; "
        "that or the same number of positional arguments; or every task")

    def resolve_paths(self, fix: Callable[[str], str]) -> None:
        self.data_paths = {k: fix(v) for k, v in self.data_paths.items()}


class DedupConfig(_Section):
    exact: bool = True
    near: bool = True
    threshold: float = Field(
        0.8, gt=0, le=1, description="MinHash Jaccard above which two instructions are near-duplicates")
    num_perm: int = Field(128, ge=8, description="MinHash permutations (must be bands x rows)")
    bands: int = Field(16, ge=1)
    shingle: int = Field(5, ge=1, description="word shingle length")
    seed: int = 1

    @model_validator(mode="after")
    def _bands_divide(self):
        if self.num_perm % self.bands:
            raise ValueError(f"num_perm ({self.num_perm}) must be a multiple of bands ({self.bands})")
        return self


class VerifyConfig(_Section):
    """Execution-verified evolution (raywiz/evolve/verify.py): tests and candidate answers from the LLM,
    each (answer, tests) pair run in the sandbox; an instruction is kept only with an answer that passes."""

    enabled: bool = Field(True, description="verify every evolved instruction by execution (seeds are kept as given)")
    answers: int = Field(4, ge=1, le=32, description="candidate answers asked for per instruction")
    tests_per_task: int = Field(5, ge=1, le=20, description="assert statements asked for per instruction")
    answer_params: GenerationParams | None = Field(
        None, description="sampling of the candidate answers (each also gets its own `seed`: 0, 1, ...); default: "
        "evolve.response_params at temperature 0.8 (the same max_tokens and stops as the answers evolve writes)")
    tests_params: GenerationParams | None = Field(
        None, description="sampling of the tests; default: evolve.response_params at temperature 0")
    timeout_s: float = Field(3.0, gt=0, le=60, description="sandbox time limit per (answer, tests) run (MBPP's 3 s)")
    workers: int | None = Field(
        None, ge=1, description="sandbox workers on the Ray cluster (default: one per CPU free of other actors)")


# Fields that change how fast a run goes, not what it produces: a run may resume with new values.
RUNTIME_FIELDS: dict[str, Any] = {
    "llm": ENGINE_RUNTIME_FIELDS | {"price_per_1m_input_tokens", "price_per_1m_output_tokens", "max_failed_fraction",
                                     "base_url", "endpoint"},
    "rows_per_shard": True,
    "cache_dir": True,
    "verify": {"workers"},
}


class EvolveConfig(_Section):
    seeds: SeedsConfig
    rounds: int = Field(3, ge=0, description="evolution rounds; WizardCoder kept seeds + 3 rounds")
    methods: list[str] = Field(
        default_factory=lambda: list(METHODS),
        description=f"evolution methods drawn from (one per sample per round): {', '.join(METHODS)}",
    )
    seed: int = Field(42, description="seeds the per-sample method draw")
    keep_seeds: bool = Field(True, description="the output includes the seeds (round 0)")
    llm: LLMConfig = Field(default_factory=LLMConfig)
    evolve_params: GenerationParams = Field(default_factory=lambda: GenerationParams(temperature=1.0))
    response_params: GenerationParams = Field(default_factory=lambda: GenerationParams(temperature=0.0))
    evolve_system_prompt: str | None = Field(None, description="system message for evolution requests")
    response_system_prompt: str | None = Field(None, description="system message for response requests")
    eliminate: EliminationConfig = Field(default_factory=EliminationConfig)
    decontam: DecontamConfig = Field(default_factory=DecontamConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    rows_per_shard: int = Field(5000, ge=1)
    write_messages: bool = Field(
        False, description="also write a `messages` column (OpenAI-style turns, as JSON text), so train can read "
        "the shards with formatting: messages")
    cache_dir: str | None = Field(
        None,
        description="request cache (answers keyed by model, prompt, parameters): a path every Ray worker and "
        "the driver share. Default: {run_dir}/evolve_cache (local storage) or ~/.cache/raywiz/evolve/{name}.",
    )

    @model_validator(mode="after")
    def _verify_params_follow_response_params(self):
        # Verification asks the same LLM for answers and tests: by default within the limits the job set
        # for its answers (a served model refuses a max_tokens beyond its own).
        if self.verify.answer_params is None:
            self.verify.answer_params = self.response_params.model_copy(update={"temperature": 0.8})
        if self.verify.tests_params is None:
            self.verify.tests_params = self.response_params.model_copy(update={"temperature": 0.0})
        return self

    @model_validator(mode="after")
    def _known_methods(self):
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"methods: unknown {unknown}; choose from {list(METHODS)}")
        if not self.methods and self.rounds:
            raise ValueError("methods: empty, but rounds > 0")
        return self

    def resolve_paths(self, fix: Callable[[str], str]) -> None:
        self.seeds.paths = [fix(p) for p in self.seeds.paths]
        if self.seeds.hf_dataset and self.seeds.hf_dataset.startswith("."):
            self.seeds.hf_dataset = fix(self.seeds.hf_dataset)
        if self.cache_dir:
            self.cache_dir = fix(self.cache_dir)
        if self.llm.local and self.llm.model.startswith("."):
            self.llm.model = fix(self.llm.model)
        self.decontam.resolve_paths(fix)

    def content_hash(self) -> str:
        """A hash of everything that decides the output (not speed knobs): guards a sealed output."""
        data = self.model_dump(mode="json")
        if not self.verify.enabled:
            # Off, verification decides nothing: the hash is the one evolve had before it existed, so
            # outputs sealed then still match a config that turns it off.
            data.pop("verify")
        for key, sub in RUNTIME_FIELDS.items():
            if sub is True:
                data.pop(key, None)
            elif key in data:
                for s in sub:
                    data[key].pop(s, None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def verify_hash(self) -> str:
        """A hash of what decides the verify step's verdicts and choices (guards its verdict cache)."""
        data = self.verify.model_dump(mode="json", exclude=RUNTIME_FIELDS["verify"])
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
