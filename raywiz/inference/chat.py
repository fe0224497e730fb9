"""Chat requests, the one request type evolve sends to any engine (``engine.chat``).

    requests = [ChatRequest.of(model, "Write ...", {"temperature": 0, "max_tokens": 256})]
    for result in make_engine(spec).chat(requests, on_result=cache.put):  # in completion order
        ...

An OpenAI-compatible endpoint gets the messages on its chat API; a local engine (transformers, vLLM)
renders them into a prompt (``chat_prompt``) and decodes requests with equal parameters together.
A request's ``key`` identifies it by (model, messages, parameters): evolve's request cache and the
test server's accounting use the same key.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Sequence

from raywiz.inference import SamplingParams, chat_prompt, prompt_template

OnResult = Callable[["ChatResult"], None]


def request_key(model: str, messages: Sequence[dict], params: dict[str, Any]) -> str:
    """Stable id of a request: equal inputs give equal keys in every process."""
    blob = json.dumps({"model": model, "messages": list(messages), "params": params}, sort_keys=True,
                      ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()[:32]


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: tuple[dict, ...]
    params: dict[str, Any]  # OpenAI-style: temperature, top_p, max_tokens, stop, seed
    key: str

    @classmethod
    def of(cls, model: str, user: str, params: dict[str, Any], system: str | None = None) -> "ChatRequest":
        messages: list[dict] = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": user})
        return cls(model, tuple(messages), dict(params), request_key(model, messages, params))

    @property
    def prompt_text(self) -> str:
        return "\n".join(m["content"] for m in self.messages)

    def sampling_params(self) -> SamplingParams:
        """The OpenAI-style parameters as raywiz.inference's (for local engines)."""
        p = self.params
        stop = p.get("stop") or ()
        return SamplingParams(n=1, temperature=float(p.get("temperature", 1.0)), top_p=float(p.get("top_p", 1.0)),
                              max_tokens=int(p.get("max_tokens", 256)), stop=(stop,) if isinstance(stop, str) else stop,
                              seed=p.get("seed", 0))


@dataclass
class ChatResult:
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
    def from_cache_record(cls, rec: dict) -> "ChatResult":
        return cls(key=rec["key"], text=rec["text"], finish_reason=rec.get("finish_reason"),
                   prompt_tokens=int(rec.get("prompt_tokens") or 0),
                   completion_tokens=int(rec.get("completion_tokens") or 0))


class LocalChat:
    """``chat`` for an engine that holds the model (it has ``tokenizer`` and ``generate``): messages
    become prompts (the tokenizer's chat template, else the template the checkpoint trained with,
    WizardCoder's by default), and requests with equal parameters go to ``generate`` together."""

    model_name: str = ""  # set by the engine's from_spec; where the checkpoint's template is read
    _chat_template: str | None = None

    def template_for_chat(self) -> str:
        """The template messages are rendered with when the tokenizer has no chat template (read once)."""
        if self._chat_template is None:
            self._chat_template = (prompt_template(self.model_name) if self.model_name else None) or "wizardcoder"
        return self._chat_template

    def chat(self, requests: Sequence[ChatRequest], on_result: OnResult | None = None) -> Iterator[ChatResult]:
        groups: dict[str, list[ChatRequest]] = {}
        for r in requests:
            groups.setdefault(repr(sorted(r.params.items())), []).append(r)
        for group in groups.values():
            prompts = [chat_prompt(list(r.messages), self.tokenizer, self.template_for_chat()) for r in group]
            for req, (c,) in zip(group, self.generate(prompts, group[0].sampling_params())):
                result = ChatResult(req.key, text=c.text, finish_reason=c.finish_reason,
                                    prompt_tokens=c.prompt_tokens, completion_tokens=len(c.token_ids))
                if on_result is not None:
                    on_result(result)  # recorded before anything else is yielded
                yield result
