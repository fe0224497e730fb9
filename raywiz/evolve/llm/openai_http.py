"""Evolve's OpenAI-compatible backend: chat requests through raywiz.inference's one OpenAI client
(the official SDK; retries, Retry-After, RPM/TPM limits, token accounting live there).

The API key comes from the environment variable named in the config, read where the backend is
built (on the Ray worker), else the one the driver forwarded. It lives only in the client.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from typing import AsyncIterator, Callable, Iterator, Sequence

from raywiz.evolve.llm import LLMBackend, LLMRequest, LLMResult
from raywiz.inference.openai_backend import OpenAIClient, RateLimiter, Secret, estimate_tokens  # noqa: F401 (re-exported)


class OpenAIHTTPBackend(LLMBackend):
    def __init__(self, base_url: str, model: str, api_key: str | None = None, concurrency: int = 64,
                 timeout_s: float = 120.0, max_retries: int = 6, backoff_base_s: float = 1.0,
                 backoff_max_s: float = 60.0, requests_per_minute: float | None = None,
                 tokens_per_minute: float | None = None, rate_limit_window_s: float = 60.0):
        self.model = model
        self.concurrency = concurrency
        self.client = OpenAIClient(base_url, api_key, timeout_s=timeout_s, max_retries=max_retries,
                                   backoff_base_s=backoff_base_s, backoff_max_s=backoff_max_s,
                                   concurrency=concurrency, requests_per_minute=requests_per_minute,
                                   tokens_per_minute=tokens_per_minute, rate_limit_window_s=rate_limit_window_s)

    def __repr__(self) -> str:
        return f"OpenAIHTTPBackend(url={self.client.base_url!r}, model={self.model!r}, concurrency={self.concurrency})"

    @classmethod
    def from_config(cls, cfg, num_workers: int | None = None, forwarded_key: "Secret | None" = None
                    ) -> "OpenAIHTTPBackend":
        """Build from an LLMConfig. The key: this process's environment first, else the one the
        driver forwarded (read from the driver's environment; see raywiz.evolve.engine)."""
        api_key = None
        if cfg.api_key_env:
            api_key = os.environ.get(cfg.api_key_env) or (forwarded_key.value if forwarded_key else None)
            if not api_key:
                raise RuntimeError(
                    f"evolve.llm.api_key_env: the environment variable {cfg.api_key_env} is set neither where "
                    f"`raywiz evolve` runs nor on the Ray worker (host {os.uname().nodename}); set it, or set "
                    "api_key_env: null for a server that needs no key"
                )
        # The limits are for the whole run: each of the workers takes its share.
        spec = cfg.engine_spec(workers_sharing_limits=num_workers or cfg.num_workers)
        return cls(spec.base_url, spec.model, api_key, spec.concurrency, spec.timeout_s, spec.max_retries,
                   spec.backoff_base_s, spec.backoff_max_s, spec.requests_per_minute, spec.tokens_per_minute,
                   spec.rate_limit_window_s)

    async def agenerate(self, requests: Sequence[LLMRequest],
                        on_result: Callable[[LLMResult], None] | None = None) -> AsyncIterator[LLMResult]:
        """Send every request (at most ``concurrency`` at once); yield results as they finish."""

        async def one(req: LLMRequest) -> LLMResult:
            body = {"model": req.model, "messages": list(req.messages), **req.params}
            answer = await self.client.request("chat", body, req.prompt_text)
            if answer.ok:
                result = LLMResult(req.key, text=answer.texts[0], finish_reason=answer.finish_reasons[0],
                                   prompt_tokens=answer.prompt_tokens, completion_tokens=answer.completion_tokens,
                                   retries=answer.retries)
            else:
                result = LLMResult(req.key, error=answer.error, retries=answer.retries)
            if on_result is not None:
                on_result(result)  # recorded before this request's slot goes to the next one
            return result

        pending = {asyncio.ensure_future(one(r)) for r in requests}
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    yield task.result()
        finally:
            for task in pending:
                task.cancel()

    def generate(self, requests: Sequence[LLMRequest],
                 on_result: Callable[[LLMResult], None] | None = None) -> Iterator[LLMResult]:
        """The blocking form: an event loop on a helper thread feeds results through a queue."""
        out: queue.Queue = queue.Queue()
        done = object()

        async def produce() -> None:
            async for result in self.agenerate(requests, on_result):
                out.put(result)

        def run() -> None:
            try:
                asyncio.run(produce())
                out.put(done)
            except BaseException as e:  # surfaced in the consumer's thread
                out.put(e)

        threading.Thread(target=run, name="openai-client", daemon=True).start()
        while (item := out.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
