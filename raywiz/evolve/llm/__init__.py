"""LLM backends behind one interface: a list of requests in, one result per request out.

    backend = make_backend(llm_config)
    for result in backend.generate(requests):   # in completion order, not request order
        ...

Backends: ``openai_http`` (any OpenAI-compatible chat/completions server) and ``local_hf`` (a local
model on raywiz.inference's engine: transformers or vLLM). A request's
``key`` identifies it by (model, messages, parameters): the request cache and the server-side
accounting in tests use the same key.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Sequence


def request_key(model: str, messages: Sequence[dict], params: dict[str, Any]) -> str:
    """Stable id of a request: equal inputs give equal keys in every process."""
    blob = json.dumps({"model": model, "messages": list(messages), "params": params}, sort_keys=True,
                      ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()[:32]


@dataclass(frozen=True)
class LLMRequest:
    model: str
    messages: tuple[dict, ...]
    params: dict[str, Any]
    key: str

    @classmethod
    def chat(cls, model: str, user: str, params: dict[str, Any], system: str | None = None) -> "LLMRequest":
        messages: list[dict] = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": user})
        return cls(model, tuple(messages), dict(params), request_key(model, messages, params))

    @property
    def prompt_text(self) -> str:
        return "\n".join(m["content"] for m in self.messages)


@dataclass
class LLMResult:
    key: str
    text: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None  # set when the request failed after all retries; never cached
    retries: list[str] = field(default_factory=list)  # one reason per retry ("429", "timeout", ...)

    @property
    def ok(self) -> bool:
        return self.error is None and self.text is not None

    def to_cache_record(self) -> dict:
        rec = asdict(self)
        rec.pop("error")
        rec.pop("retries")
        return rec

    @classmethod
    def from_cache_record(cls, rec: dict) -> "LLMResult":
        return cls(key=rec["key"], text=rec["text"], finish_reason=rec.get("finish_reason"),
                   prompt_tokens=int(rec.get("prompt_tokens") or 0),
                   completion_tokens=int(rec.get("completion_tokens") or 0))


class LLMBackend(ABC):
    """Turns requests into results. Implementations hold their own client, model or engine."""

    @abstractmethod
    def generate(self, requests: Sequence[LLMRequest],
                 on_result: Callable[[LLMResult], None] | None = None) -> Iterator[LLMResult]:
        """Yield exactly one result per request, as each finishes.

        ``on_result`` is called with each result the moment it exists, before the backend starts
        anything else in its place (the request cache hooks in here, so an answer is on disk before
        the next request goes out).
        """

    def close(self) -> None:
        pass


def make_backend(llm_config, forwarded_key=None) -> LLMBackend:
    """The backend ``evolve.llm`` names: an endpoint's chat client, or a local engine (heavy imports
    happen only for the one chosen). ``forwarded_key``: the driver's API key, for workers without one."""
    if llm_config.local:
        from raywiz.evolve.llm.local_hf import LocalHFBackend

        return LocalHFBackend.from_config(llm_config)
    from raywiz.evolve.llm.openai_http import OpenAIHTTPBackend

    return OpenAIHTTPBackend.from_config(llm_config, forwarded_key=forwarded_key)
