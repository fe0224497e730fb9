"""OpenAI-compatible chat/completions over HTTP: async, bounded concurrency, retries, rate limits.

One ``aiohttp`` session sends up to ``concurrency`` requests at once. A request that meets a 429,
a 5xx, a timeout, a dropped connection, a truncated body or malformed JSON is retried with
exponential backoff and jitter (a 429's ``Retry-After`` is honoured); other 4xx answers fail at
once (they would fail again). Requests- and tokens-per-minute limits hold over sliding windows.

The API key comes from the environment variable named in the config, read where the backend is
built (on the Ray worker). It lives only in the request header: never in a repr, a log line, an
error message or an output file.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import queue
import random
import threading
import time
from typing import AsyncIterator, Callable, Iterator, Sequence

from raywiz.evolve.llm import LLMBackend, LLMRequest, LLMResult

RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}


class Secret:
    """A value that never shows itself in a repr, a log line or a traceback."""

    def __init__(self, value: str):
        self.value = value

    def __repr__(self) -> str:
        return "Secret(****)"

    __str__ = __repr__

    @classmethod
    def from_env(cls, name: str | None) -> "Secret | None":
        value = os.environ.get(name) if name else None
        return cls(value) if value else None


class RetryableError(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class RateLimiter:
    """Sliding-window limits on requests and tokens, shared by every coroutine of one backend.

    ``per_minute`` limits are pro-rated to ``window_s`` (a 60 s window allows a burst of the whole
    minute's budget; shorter windows smooth it). A request estimated above the window's token budget
    alone still goes, once the window is empty, so it can't wait forever.
    """

    def __init__(self, requests_per_minute: float | None, tokens_per_minute: float | None, window_s: float = 60.0):
        scale = window_s / 60.0
        self.max_requests = None if requests_per_minute is None else max(1.0, requests_per_minute * scale)
        self.max_tokens = None if tokens_per_minute is None else max(1.0, tokens_per_minute * scale)
        self.window_s = window_s
        self._events: collections.deque[tuple[float, int]] = collections.deque()  # (time, tokens)
        self._tokens_in_window = 0
        self._lock = asyncio.Lock()  # FIFO: waiting requests go in arrival order

    @property
    def active(self) -> bool:
        return self.max_requests is not None or self.max_tokens is not None

    def _expire(self, now: float) -> None:
        while self._events and self._events[0][0] <= now - self.window_s:
            self._tokens_in_window -= self._events.popleft()[1]

    def _fits(self, tokens: int) -> bool:
        if self.max_requests is not None and len(self._events) + 1 > self.max_requests:
            return False
        if self.max_tokens is not None and self._events and self._tokens_in_window + tokens > self.max_tokens:
            return False
        return True

    async def acquire(self, tokens: int) -> None:
        if not self.active:
            return
        async with self._lock:
            while True:
                now = time.monotonic()
                self._expire(now)
                if self._fits(tokens):
                    self._events.append((now, tokens))
                    self._tokens_in_window += tokens
                    return
                await asyncio.sleep(max(0.001, self._events[0][0] + self.window_s - now))


def estimate_tokens(text: str) -> int:
    """Rough token count (4 characters a token) for rate limiting and servers that omit usage."""
    return max(1, len(text) // 4)


class OpenAIHTTPBackend(LLMBackend):
    def __init__(self, base_url: str, model: str, api_key: str | None = None, concurrency: int = 64,
                 timeout_s: float = 120.0, max_retries: int = 6, backoff_base_s: float = 1.0,
                 backoff_max_s: float = 60.0, requests_per_minute: float | None = None,
                 tokens_per_minute: float | None = None, rate_limit_window_s: float = 60.0):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.__api_key = api_key  # name-mangled and left out of repr: keep it out of logs
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._limits = (requests_per_minute, tokens_per_minute, rate_limit_window_s)

    def __repr__(self) -> str:
        return f"OpenAIHTTPBackend(url={self.url!r}, model={self.model!r}, concurrency={self.concurrency})"

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
        share = num_workers or cfg.num_workers
        rpm = cfg.requests_per_minute / share if cfg.requests_per_minute else None
        tpm = cfg.tokens_per_minute / share if cfg.tokens_per_minute else None
        return cls(cfg.base_url, cfg.model, api_key, cfg.concurrency, cfg.timeout_s, cfg.max_retries,
                   cfg.backoff_base_s, cfg.backoff_max_s, rpm, tpm, cfg.rate_limit_window_s)

    # ------------------------------------------------------------------ async core

    async def agenerate(self, requests: Sequence[LLMRequest],
                        on_result: Callable[[LLMResult], None] | None = None) -> AsyncIterator[LLMResult]:
        """Send every request (at most ``concurrency`` at once); yield results as they finish."""
        import aiohttp

        limiter = RateLimiter(*self._limits)
        gate = asyncio.Semaphore(self.concurrency)
        headers = {"Content-Type": "application/json"}
        if self.__api_key:
            headers["Authorization"] = f"Bearer {self.__api_key}"
        connector = aiohttp.TCPConnector(limit=self.concurrency)
        async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

            async def one(req: LLMRequest) -> LLMResult:
                async with gate:
                    result = await self._send_with_retries(session, limiter, req)
                    if on_result is not None:
                        on_result(result)  # while holding the slot: recorded before the next request goes
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

    async def _send_with_retries(self, session, limiter: RateLimiter, req: LLMRequest) -> LLMResult:
        body = {"model": req.model, "messages": list(req.messages), **req.params}
        estimate = estimate_tokens(req.prompt_text) + int(req.params.get("max_tokens", 0))
        retries: list[str] = []
        for attempt in range(self.max_retries + 1):
            await limiter.acquire(estimate)
            try:
                result = await self._send_once(session, req, body)
                result.retries = retries
                return result
            except RetryableError as e:
                retries.append(e.reason)
                if attempt == self.max_retries:
                    return LLMResult(req.key, error=f"gave up after {attempt + 1} attempts: {e.reason}",
                                     retries=retries)
                delay = min(self.backoff_max_s, self.backoff_base_s * 2**attempt) * (0.5 + random.random() / 2)
                if e.retry_after is not None:
                    delay = max(delay, min(e.retry_after, self.backoff_max_s))
                await asyncio.sleep(delay)
            except _Fatal as e:
                return LLMResult(req.key, error=str(e), retries=retries)
        raise AssertionError("unreachable")

    async def _send_once(self, session, req: LLMRequest, body: dict) -> LLMResult:
        import aiohttp

        try:
            timeout = aiohttp.ClientTimeout(total=self.timeout_s)
            async with session.post(self.url, json=body, timeout=timeout) as resp:
                raw = await resp.read()
                status = resp.status
                retry_after = _retry_after_seconds(resp.headers.get("Retry-After"))
        except asyncio.TimeoutError:
            raise RetryableError("timeout") from None
        except aiohttp.ClientPayloadError:
            raise RetryableError("truncated body") from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientResponseError) as e:
            raise RetryableError(f"connection: {type(e).__name__}") from None
        if status in RETRYABLE_STATUS or status >= 500:
            raise RetryableError(str(status), retry_after)
        if status >= 400:
            detail = raw[:300].decode("utf-8", "replace")
            raise _Fatal(f"HTTP {status} from {self.url}: {detail}")
        try:
            data = json.loads(raw)
            choice = data["choices"][0]
            text = choice["message"]["content"]
            if not isinstance(text, str):
                raise TypeError("content is not text")
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise RetryableError(f"malformed response: {type(e).__name__}") from None
        usage = data.get("usage") or {}
        return LLMResult(
            req.key,
            text=text,
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=int(usage.get("prompt_tokens") or estimate_tokens(req.prompt_text)),
            completion_tokens=int(usage.get("completion_tokens") or estimate_tokens(text)),
        )

    # ------------------------------------------------------------------ sync interface

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

        threading.Thread(target=run, name="openai-http", daemon=True).start()
        while (item := out.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item


class _Fatal(Exception):
    """A response that retrying cannot fix (4xx other than 408/409/429)."""


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff
