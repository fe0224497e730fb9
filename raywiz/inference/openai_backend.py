"""Any OpenAI-compatible endpoint through the official ``openai`` SDK: one async client, retries,
backoff honouring Retry-After, RPM/TPM limits, token and cost accounting.

The SDK's own retries are off (``max_retries=0``): raywiz retries here, so that every retry has a
reason on record ("429", "503", "timeout", "truncated body", "malformed response: ..."), rate
limits are re-acquired before each attempt, and the backoff and Retry-After bounds are the
config's. A 429, a 5xx, a timeout, a dropped connection, a truncated body or malformed JSON is
retried with exponential backoff and jitter; other 4xx answers fail at once (they would fail again).

The API key lives only in the client's header: never in a repr, a log line or an error message.
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
from dataclasses import dataclass, field
from typing import AsyncIterator, Iterator, Sequence

from raywiz.inference import Completion, Delta, EngineSpec, SamplingParams
from raywiz.inference.chat import ChatRequest, ChatResult, OnResult

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
        self.reason, self.retry_after = reason, retry_after


class FatalError(Exception):
    """A response that retrying cannot fix (4xx other than 408/409/429)."""


class RateLimiter:
    """Sliding-window limits on requests and tokens, shared by every coroutine of one client.

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
        self._lock: asyncio.Lock | None = None  # made on first use, in the loop that uses it

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
        if self._lock is None:
            self._lock = asyncio.Lock()  # FIFO: waiting requests go in arrival order
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


def retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


@dataclass
class Usage:
    """Tokens and money spent by one client (summed over every answered request)."""

    requests: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: collections.Counter = field(default_factory=collections.Counter)


@dataclass
class Answer:
    """One request's outcome: its choices' texts (or an error), usage, and why it was retried."""

    texts: list[str] = field(default_factory=list)
    finish_reasons: list[str | None] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    retries: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


class OpenAIClient:
    """One ``AsyncOpenAI`` client per event loop, with raywiz's retries and limits around it."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 120.0, max_retries: int = 6,
                 backoff_base_s: float = 1.0, backoff_max_s: float = 60.0, concurrency: int = 64,
                 requests_per_minute: float | None = None, tokens_per_minute: float | None = None,
                 rate_limit_window_s: float = 60.0):
        self.base_url = base_url.rstrip("/")
        self.__api_key = api_key  # name-mangled and left out of repr: keep it out of logs
        self.timeout_s, self.max_retries = timeout_s, max_retries
        self.backoff_base_s, self.backoff_max_s = backoff_base_s, backoff_max_s
        self.concurrency = concurrency
        self._limits = (requests_per_minute, tokens_per_minute, rate_limit_window_s)
        self.usage = Usage()
        self._lock = threading.Lock()
        self._per_loop: dict[int, tuple] = {}  # id(loop) -> (AsyncOpenAI, semaphore, limiter)

    def __repr__(self) -> str:
        return f"OpenAIClient(base_url={self.base_url!r}, concurrency={self.concurrency})"

    def _for_loop(self):
        import openai

        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._per_loop.get(id(loop))
            if entry is None or entry[3] is not loop:
                client = openai.AsyncOpenAI(base_url=self.base_url, api_key=self.__api_key or "EMPTY",
                                            max_retries=0, timeout=self.timeout_s)
                entry = (client, asyncio.Semaphore(self.concurrency), RateLimiter(*self._limits), loop)
                self._per_loop[id(loop)] = entry
        return entry[:3]

    async def request(self, endpoint: str, body: dict, prompt_text: str) -> Answer:
        """POST one chat/completions (endpoint "chat") or completions request, with retries."""
        client, gate, limiter = self._for_loop()
        estimate = estimate_tokens(prompt_text) + int(body.get("max_tokens") or 0)
        retries: list[str] = []
        async with gate:
            for attempt in range(self.max_retries + 1):
                await limiter.acquire(estimate)
                try:
                    answer = await self._once(client, endpoint, body, prompt_text)
                    answer.retries = retries
                    break
                except RetryableError as e:
                    retries.append(e.reason)
                    if attempt == self.max_retries:
                        answer = Answer(error=f"gave up after {attempt + 1} attempts: {e.reason}", retries=retries)
                        break
                    delay = min(self.backoff_max_s, self.backoff_base_s * 2**attempt) * (0.5 + random.random() / 2)
                    if e.retry_after is not None:
                        delay = max(delay, min(e.retry_after, self.backoff_max_s))
                    await asyncio.sleep(delay)
                except FatalError as e:
                    answer = Answer(error=str(e), retries=retries)
                    break
        with self._lock:
            self.usage.requests += 1
            self.usage.failed += 0 if answer.ok else 1
            self.usage.prompt_tokens += answer.prompt_tokens
            self.usage.completion_tokens += answer.completion_tokens
            self.usage.retries.update(retries)
        return answer

    async def _once(self, client, endpoint: str, body: dict, prompt_text: str) -> Answer:
        import openai

        create = (client.chat.completions if endpoint == "chat" else client.completions).with_raw_response.create
        try:
            raw = await create(**body)
            text = raw.text
        except openai.APITimeoutError:
            raise RetryableError("timeout") from None
        except openai.APIStatusError as e:
            status = e.status_code
            if status in RETRYABLE_STATUS or status >= 500:
                raise RetryableError(str(status), retry_after_seconds(e.response.headers.get("retry-after"))) from None
            detail = (e.response.text or "")[:300]
            raise FatalError(f"HTTP {status} from {self.base_url}: {detail}") from None
        except openai.APIConnectionError as e:
            # The SDK's HTTP library (httpx or httpx2) says so when the body broke off after the headers.
            cause = str(e.__cause__ or "").lower()
            if "complete message body" in cause or "incomplete" in cause:
                raise RetryableError("truncated body") from None
            raise RetryableError(f"connection: {type(e.__cause__ or e).__name__}") from None
        try:
            data = json.loads(text)
            choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
            if not choices:
                raise IndexError("no choices")
            texts = [c["message"]["content"] if endpoint == "chat" else c["text"] for c in choices]
            if not all(isinstance(t, str) for t in texts):
                raise TypeError("content is not text")
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise RetryableError(f"malformed response: {type(e).__name__}") from None
        usage = data.get("usage") or {}
        return Answer(texts=texts, finish_reasons=[c.get("finish_reason") for c in choices],
                      prompt_tokens=int(usage.get("prompt_tokens") or estimate_tokens(prompt_text)),
                      completion_tokens=int(usage.get("completion_tokens") or sum(map(estimate_tokens, texts))))

    async def stream(self, endpoint: str, body: dict) -> AsyncIterator[list[Delta]]:
        """Server-sent deltas (no retries once the stream has started: text already went out)."""
        client, gate, limiter = self._for_loop()
        create = client.chat.completions.create if endpoint == "chat" else client.completions.create
        async with gate:
            await limiter.acquire(int(body.get("max_tokens") or 0))
            response = await create(**body, stream=True)
            async for chunk in response:
                deltas = []
                for c in chunk.choices:
                    text = (c.delta.content or "") if endpoint == "chat" else (c.text or "")
                    deltas.append(Delta(c.index, text, c.finish_reason))
                if deltas:
                    yield deltas


def _run_sync(coro):
    """Run a coroutine to completion from sync code, also when the caller's thread has a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict = {}
    thread = threading.Thread(target=lambda: box.setdefault("r", asyncio.run(coro)), daemon=True)
    thread.start()
    thread.join()
    return box["r"]


class OpenAIEngine:
    """The inference interface over an OpenAI-compatible server (eval, or evolve's text prompts)."""

    def __init__(self, client: OpenAIClient, model: str, endpoint: str = "completions"):
        if endpoint not in ("completions", "chat"):
            raise ValueError(f"endpoint must be 'completions' or 'chat', got {endpoint!r}")
        self.client, self.model, self.endpoint = client, model, endpoint

    def __repr__(self) -> str:
        return f"OpenAIEngine({self.client!r}, model={self.model!r})"

    @classmethod
    def from_spec(cls, spec: EngineSpec, api_key: str | None = None) -> "OpenAIEngine":
        """`api_key`: used when this process's environment lacks ``spec.api_key_env`` (a Ray worker
        on a node without it gets the driver's)."""
        if not spec.base_url:
            raise ValueError("the openai inference backend needs base_url (e.g. http://127.0.0.1:8000/v1)")
        key = (os.environ.get(spec.api_key_env) if spec.api_key_env else None) or api_key
        client = OpenAIClient(spec.base_url, key, timeout_s=spec.timeout_s, max_retries=spec.max_retries,
                              backoff_base_s=spec.backoff_base_s, backoff_max_s=spec.backoff_max_s,
                              concurrency=spec.concurrency, requests_per_minute=spec.requests_per_minute,
                              tokens_per_minute=spec.tokens_per_minute, rate_limit_window_s=spec.rate_limit_window_s)
        return cls(client, spec.model, spec.endpoint)

    def body(self, prompt: str, params: SamplingParams, suffix: str | None = None) -> dict:
        body = {"model": self.model, "max_tokens": params.max_tokens, "n": 1 if params.greedy else params.n,
                "temperature": params.temperature}
        if not params.greedy:
            body["top_p"] = params.top_p
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop:
            body["stop"] = list(params.stop)[:4]  # the OpenAI API takes at most 4
        if self.endpoint == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
            if suffix is not None:  # fill in the middle: the server builds the model's FIM prompt
                body["suffix"] = suffix
        return body

    async def agenerate(self, prompts: Sequence[str], params: SamplingParams,
                        suffixes: Sequence[str] | None = None) -> list[list[Completion]]:
        suffixes = suffixes if suffixes is not None else [None] * len(prompts)
        answers = await asyncio.gather(*(self.client.request(self.endpoint, self.body(p, params, s), p)
                                         for p, s in zip(prompts, suffixes)))
        out = []
        for answer in answers:
            if not answer.ok:
                raise RuntimeError(f"{self.client.base_url}: {answer.error}")
            texts = answer.texts[:1] * params.n if params.greedy else answer.texts
            if len(texts) != params.n:
                raise RuntimeError(f"{self.client.base_url}: asked for {params.n} choices, got {len(texts)}")
            reasons = (answer.finish_reasons[:1] * params.n) if params.greedy else answer.finish_reasons
            out.append([Completion(t, [], r or "stop", answer.prompt_tokens) for t, r in zip(texts, reasons)])
        return out

    def generate(self, prompts: Sequence[str], params: SamplingParams,
                 suffixes: Sequence[str] | None = None) -> list[list[Completion]]:
        """n completions per prompt; with `suffixes`, each prompt's middle (the completions API's `suffix`)."""
        return _run_sync(self.agenerate(prompts, params, suffixes))

    async def achat(self, requests: Sequence[ChatRequest],
                    on_result: OnResult | None = None) -> AsyncIterator[ChatResult]:
        """Chat requests to the chat API (at most ``concurrency`` at once), yielded as they finish;
        a failed request (after retries) is a result with ``error``, not an exception."""

        async def one(req: ChatRequest) -> ChatResult:
            body = {"model": req.model, "messages": list(req.messages), **req.params}
            answer = await self.client.request("chat", body, req.prompt_text)
            if answer.ok:
                result = ChatResult(req.key, text=answer.texts[0], finish_reason=answer.finish_reasons[0],
                                    prompt_tokens=answer.prompt_tokens, completion_tokens=answer.completion_tokens,
                                    retries=answer.retries)
            else:
                result = ChatResult(req.key, error=answer.error, retries=answer.retries)
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

    def chat(self, requests: Sequence[ChatRequest], on_result: OnResult | None = None) -> Iterator[ChatResult]:
        """The blocking form of ``achat``: an event loop on a helper thread feeds results through a queue."""
        out: queue.Queue = queue.Queue()
        done = object()

        async def produce() -> None:
            async for result in self.achat(requests, on_result):
                out.put(result)

        def run() -> None:
            try:
                asyncio.run(produce())
                out.put(done)
            except BaseException as e:  # surfaced in the consumer's thread
                out.put(e)

        threading.Thread(target=run, name="openai-chat", daemon=True).start()
        while (item := out.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item

    def stream(self, prompt: str, params: SamplingParams) -> AsyncIterator[list[Delta]]:
        body = self.body(prompt, params)
        body["n"] = params.n
        return self.client.stream(self.endpoint, body)

    def close(self) -> None:
        pass
