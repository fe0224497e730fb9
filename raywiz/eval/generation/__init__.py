"""Generation backends behind one interface: `generate(prompts, params) -> n texts per prompt`.

  hf      a local checkpoint (raywiz's HF export or any AutoModelForCausalLM dir) with batched generate
  openai  any OpenAI-compatible HTTP endpoint (`raywiz serve`, vLLM's server, a hosted API)
  vllm    vLLM's offline engine, when vLLM is installed

`ray_pool.generate_with_ray` spreads prompts over Ray actors (one per GPU) holding any backend.
Texts returned are the new tokens only (never the prompt).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    greedy: bool = True
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 512
    stop: list[str] = field(default_factory=list)
    seed: int = 0


class Generator(Protocol):
    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[str]]: ...


@dataclass(frozen=True)
class BackendSpec:
    """Everything needed to build a generator anywhere (a Ray actor rebuilds it from this)."""

    backend: str  # hf | openai | vllm
    model: str  # a model directory / hub name, or the served model's name (openai)
    tokenizer: str | None = None
    dtype: str = "auto"
    trust_remote_code: bool = False
    batch_size: int = 8
    base_url: str | None = None
    api_key_env: str | None = "OPENAI_API_KEY"
    endpoint: str = "completions"  # openai: completions | chat
    concurrency: int = 8
    request_timeout_s: float = 300.0
    tensor_parallel_size: int = 1


def make_generator(spec: BackendSpec) -> Generator:
    if spec.backend == "hf":
        from raywiz.eval.generation.hf import HFGenerator

        return HFGenerator(spec.model, tokenizer=spec.tokenizer, dtype=spec.dtype,
                           trust_remote_code=spec.trust_remote_code, batch_size=spec.batch_size)
    if spec.backend == "openai":
        from raywiz.eval.generation.openai_http import OpenAIGenerator

        if not spec.base_url:
            raise ValueError("eval.generation.base_url is required for the openai backend")
        return OpenAIGenerator(spec.base_url, spec.model, api_key_env=spec.api_key_env, endpoint=spec.endpoint,
                               concurrency=spec.concurrency, timeout_s=spec.request_timeout_s)
    if spec.backend == "vllm":
        from raywiz.eval.generation.vllm import VLLMGenerator

        return VLLMGenerator(spec.model, tokenizer=spec.tokenizer, dtype=spec.dtype,
                             trust_remote_code=spec.trust_remote_code, tensor_parallel_size=spec.tensor_parallel_size)
    raise ValueError(f"unknown generation backend {spec.backend!r}; expected hf, openai or vllm")
