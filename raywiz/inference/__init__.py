"""One inference interface for evolve, eval and serve.

    engine = make_engine(EngineSpec(backend="transformers", model=hf_dir))
    completions = engine.generate(prompts, SamplingParams(n=1, max_tokens=512))  # one list per prompt
    async for delta in engine.stream(prompt, params): ...                            # text as it comes

Backends (heavy imports only for the one chosen):
  transformers  the default, CPU and GPU: transformers' models under raywiz's slot decoder
                (raywiz.inference.slot_decoding: fixed-shape lanes, iteration-level batching, one
                CUDA graph per decode step). Offline batches refill a lane as soon as its row ends;
                streams decode on their own thread and a new request joins at the next step.
  openai        any OpenAI-compatible endpoint through the official SDK: retries, Retry-After,
                RPM/TPM limits, token and cost accounting.

Every engine also answers chat requests (``engine.chat``, raywiz.inference.chat): an endpoint on its
chat API, a local model through ``chat_prompt``. Evolve talks to models only this way.
  vllm          vLLM's offline engine when vLLM is installed (a thin adapter).

The prompt template is the checkpoint's (its ``ModelInfo.template``, raywiz.artifacts), unless the caller names one:
``prompt_template(model_dir, override)`` says which applies, ``apply_template`` renders it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import AsyncIterator, Protocol, Sequence

from raywiz.artifacts import ModelInfo


@dataclass(frozen=True)
class SamplingParams:
    """What to generate. temperature 0 is greedy (then n copies of one decode)."""

    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 512
    stop: tuple[str, ...] = ()
    seed: int | None = 0

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"SamplingParams.n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"SamplingParams.max_tokens must be >= 1, got {self.max_tokens}")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop or ()))
        if any(s == "" for s in self.stop):
            raise ValueError("SamplingParams.stop: stop sequences must not be empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def with_(self, **changes) -> "SamplingParams":
        return replace(self, **changes)


@dataclass
class Completion:
    """One generated text: the new tokens only (never the prompt), cut before a stop sequence."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "length"  # "stop" (EOS or a stop sequence) | "length"
    prompt_tokens: int = 0
    error: str | None = None
    eos_token_id: int | None = None  # the EOS token that ended it (in neither token_ids nor text), if one did


@dataclass
class Delta:
    """A piece of one streamed choice: text since the last delta; the last one has finish_reason."""

    index: int
    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0
    token_ids: list[int] | None = None  # the choice's tokens, on its last delta
    # The EOS token that ended the choice (in neither token_ids nor text): OpenAI-style logprobs with
    # echo list it, and lm-evaluation-harness drops the last listed token as the generated one.
    eos_token_id: int | None = None


class ModelLoadError(Exception):
    """A model that does not load, or loads into something not worth running; the message says why."""


class Engine(Protocol):
    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]: ...

    def stream(self, prompt: str | list[int], params: SamplingParams) -> AsyncIterator[list[Delta]]: ...

    def chat(self, requests, on_result=None):
        """Chat requests (raywiz.inference.chat.ChatRequest) -> one ChatResult each, as each finishes;
        ``on_result`` sees each result before the engine starts anything in its place."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class EngineSpec:
    """Everything needed to build an engine anywhere (a Ray actor rebuilds it from this)."""

    backend: str = "transformers"  # transformers | openai | vllm
    model: str = ""  # model dir / hub id / tiny name, or the served model's name (openai)
    tokenizer: str | None = None
    dtype: str = "auto"
    device: str | None = None
    trust_remote_code: bool = False
    max_batch_size: int | None = None  # offline rows decoded at once (None: 256 on GPU, 16 on CPU; fewer if memory says so)
    cuda_graphs: bool | None = None  # decode steps as CUDA-graph replays (None: on GPU)
    stream_slots: int | None = None  # streams decoded at once (None: 64 on GPU, 8 on CPU)
    emit_interval_s: float = 0.0  # a stream's text goes out at most this often per choice
    # openai
    base_url: str | None = None
    api_key_env: str | None = "OPENAI_API_KEY"
    endpoint: str = "completions"  # completions | chat
    concurrency: int = 8
    timeout_s: float = 300.0
    max_retries: int = 6
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    rate_limit_window_s: float = 60.0
    # vllm
    tensor_parallel_size: int = 1
    vllm_args: dict = field(default_factory=dict)  # more vllm.LLM arguments (max_model_len, gpu_memory_utilization ...)


def make_engine(spec: EngineSpec, api_key: str | None = None, model=None, tokenizer=None):
    """The one place an engine is built: the backend `spec` names (heavy imports for that one only).
    `api_key`: an endpoint's key for processes whose environment lacks ``spec.api_key_env``.
    `model` + `tokenizer`: generate with this loaded nn.Module itself (RL's in-place rollouts: no copy,
    no reload; updates to its weights show in the next call after ``engine.weights_changed()``)."""
    if model is not None:
        if spec.backend != "transformers" or tokenizer is None:
            raise ValueError("an engine around a loaded model needs backend 'transformers' and its tokenizer")
        from raywiz.inference.transformers_backend import TransformersEngine

        return TransformersEngine.from_model(model, tokenizer, spec)
    if spec.backend == "transformers":
        from raywiz.inference.transformers_backend import TransformersEngine

        return TransformersEngine.from_spec(spec)
    if spec.backend == "openai":
        from raywiz.inference.openai_backend import OpenAIEngine

        return OpenAIEngine.from_spec(spec, api_key)
    if spec.backend == "vllm":
        from raywiz.inference.vllm_backend import VLLMEngine

        return VLLMEngine.from_spec(spec)
    raise ValueError(f"unknown inference backend {spec.backend!r}; expected transformers, openai or vllm")


# ---------------------------------------------------------------- prompt templates


def prompt_template(model_dir: str, override: str | None = None) -> str | None:
    """The template prompts are rendered with: the caller's, else the one the checkpoint trained with."""
    return override or ModelInfo.read(model_dir).template


def apply_template(instruction: str, template: str | None, tokenizer=None, custom: str | None = None) -> str:
    """An instruction as the model was trained to see it; None leaves the text as it is."""
    if template is None:
        return instruction
    from raywiz.data.template import format_prompt

    return format_prompt(instruction, template=template, custom=custom, tokenizer=tokenizer)


def chat_prompt(messages: Sequence[dict], tokenizer, template: str | None) -> str:
    """Chat messages as one prompt for a local model: the tokenizer's chat template when it has one,
    else the system and user texts joined and rendered with `template` (the one the model trained with)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    system = [m["content"] for m in messages if m["role"] == "system"]
    user = "\n\n".join(m["content"] for m in messages if m["role"] != "system")
    return apply_template("\n\n".join(system + [user]), template, tokenizer)
