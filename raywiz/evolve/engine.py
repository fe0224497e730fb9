"""Runs LLM requests on the Ray cluster, through the request cache, with a progress bar.

    engine = LLMEngine(evolve_cfg.llm, cache_dir)
    answers = engine.run(requests, "round 1: evolve")    # key -> LLMResult, one per unique request

A request whose key is in the cache is never sent again. The rest go to ``num_workers`` Ray actors
(``LLMWorker``), each holding one backend (an HTTP client with its own concurrency, or a model on
raywiz.inference's transformers or vLLM engine). Workers write every answer to the cache the moment it
arrives and stream answers back in small groups, so the progress bar moves while they work. A worker
that dies is replaced and only its unanswered requests are sent again.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from raywiz.evolve.cache import RequestCache
from raywiz.evolve.llm import LLMRequest, LLMResult, make_backend
from raywiz.log import ProgressDisplay
from raywiz.log import say

MAX_WORKER_RESTARTS = 3
WORKER_DEATH_GRACE_S = 2.0
YIELD_EVERY_S = 0.25  # how often a worker sends finished answers back (progress granularity)
YIELD_MAX_RESULTS = 256


class LLMWorker:
    """A Ray actor: one backend, one cache part file; answers stream back as they finish."""

    def __init__(self, llm_cfg, cache_dir: str, api_key=None):
        if llm_cfg.backend == "openai":
            from raywiz.evolve.llm.openai_http import OpenAIHTTPBackend

            # Rate limits are shared out per worker; the key is the worker's env var, else the driver's.
            self.backend = OpenAIHTTPBackend.from_config(llm_cfg, forwarded_key=api_key)
        else:
            self.backend = make_backend(llm_cfg)
        self.writer = RequestCache(cache_dir).writer()

    def ready(self) -> bool:
        return True

    def generate(self, requests: Sequence[LLMRequest]):
        batch: list[LLMResult] = []
        last = time.monotonic()
        for result in self.backend.generate(requests, on_result=self.writer.put):  # cached before anything else
            batch.append(result)
            if len(batch) >= YIELD_MAX_RESULTS or time.monotonic() - last >= YIELD_EVERY_S:
                yield batch
                batch, last = [], time.monotonic()
        if batch:
            yield batch


@dataclass
class EngineStats:
    requests: int = 0  # unique requests asked for
    cache_hits: int = 0
    sent: int = 0  # answered or failed in this process
    failed: int = 0
    retries: Counter = field(default_factory=Counter)
    prompt_tokens: int = 0  # of requests sent by this process (what this run costs)
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0  # of cached answers (what earlier runs paid)
    cached_completion_tokens: int = 0
    seconds: float = 0.0

    def cost(self, cfg, cached: bool = False) -> float:
        p, c = ((self.cached_prompt_tokens, self.cached_completion_tokens) if cached
                else (self.prompt_tokens, self.completion_tokens))
        return (p * cfg.price_per_1m_input_tokens + c * cfg.price_per_1m_output_tokens) / 1e6

    def to_dict(self, cfg) -> dict:
        return dict(requests=self.requests, cache_hits=self.cache_hits, sent=self.sent, failed=self.failed,
                    retries=dict(self.retries), prompt_tokens=self.prompt_tokens,
                    completion_tokens=self.completion_tokens, cost_usd=round(self.cost(cfg), 6),
                    cached_prompt_tokens=self.cached_prompt_tokens,
                    cached_completion_tokens=self.cached_completion_tokens,
                    cached_cost_usd=round(self.cost(cfg, cached=True), 6), seconds=round(self.seconds, 3))


class Progress:
    """raywiz's progress display (a bar, or plain lines off a terminal) with tokens and cost."""

    def __init__(self, label: str, total: int, cached: int, llm_cfg, enabled: bool = True):
        self.llm_cfg = llm_cfg
        self.prompt_tokens = self.completion_tokens = 0
        # Off a terminal: about ten lines per round, however many requests it sends.
        self.bar = ProgressDisplay(f"evolve {label}", total, unit="req", every=max(1, total // 10), enabled=enabled)
        self.cached = cached
        self.started = time.monotonic()

    def update(self, results: Iterable[LLMResult]) -> None:
        n = 0
        for r in results:
            n += 1
            self.prompt_tokens += r.prompt_tokens
            self.completion_tokens += r.completion_tokens
        cost = (self.prompt_tokens * self.llm_cfg.price_per_1m_input_tokens
                + self.completion_tokens * self.llm_cfg.price_per_1m_output_tokens) / 1e6
        done = self.bar.done + n
        rate = done / max(time.monotonic() - self.started, 1e-9)
        self.bar.update(n, f"cached {self.cached} | tokens {self.prompt_tokens}+{self.completion_tokens} | "
                           f"cost ${cost:.4f}", eta_s=(self.bar.total - done) / rate if rate else None)

    def close(self) -> None:
        self.bar.close()


class LLMEngine:
    def __init__(self, llm_cfg, cache_dir: str, show_progress: bool = True):
        self.cfg = llm_cfg
        self.cache = RequestCache(cache_dir)
        self.answers = self.cache.load()
        self.show_progress = show_progress
        self.stats = EngineStats()
        self._workers: list = []

    # ------------------------------------------------------------------ public

    def run(self, requests: Sequence[LLMRequest], label: str) -> dict[str, LLMResult]:
        """Answers for every request (failed ones carry ``error``), sending only cache misses."""
        unique = {r.key: r for r in requests}
        hits = [k for k in unique if k in self.answers]
        misses = [r for k, r in unique.items() if k not in self.answers]
        self.stats.requests += len(unique)
        self.stats.cache_hits += len(hits)
        for k in hits:
            self.stats.cached_prompt_tokens += self.answers[k].prompt_tokens
            self.stats.cached_completion_tokens += self.answers[k].completion_tokens
        results = {k: self.answers[k] for k in hits}
        progress = Progress(label, len(misses), len(hits), self.cfg, self.show_progress)
        start = time.monotonic()
        try:
            for batch in self._send(misses):
                progress.update(batch)
                for r in batch:
                    self._account(r)
                    results[r.key] = r
                    if r.ok:
                        self.answers[r.key] = r
        finally:
            progress.close()
            self.stats.seconds += time.monotonic() - start
        failed = [r for r in results.values() if not r.ok]
        if misses and len(failed) > self.cfg.max_failed_fraction * len(unique):
            example = failed[0].error
            raise RuntimeError(
                f"{label}: {len(failed)} of {len(unique)} requests failed after retries (more than "
                f"evolve.llm.max_failed_fraction={self.cfg.max_failed_fraction}); e.g. {example}. "
                "Answered requests are cached: rerun to retry only the failed ones."
            )
        return results

    def close(self) -> None:
        import ray

        for w in self._workers:
            ray.kill(w)
        self._workers = []

    def __enter__(self) -> "LLMEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _account(self, r: LLMResult) -> None:
        self.stats.sent += 1
        self.stats.failed += 0 if r.ok else 1
        self.stats.retries.update(r.retries)
        self.stats.prompt_tokens += r.prompt_tokens
        self.stats.completion_tokens += r.completion_tokens

    def _send(self, requests: list[LLMRequest]) -> Iterable[list[LLMResult]]:
        if not requests:
            return
        yield from self._send_to_workers(requests)

    def _new_worker(self):
        """Start a worker and wait until its backend is built (a bad key or model fails here, once)."""
        import ray

        api_key = None
        if self.cfg.backend == "openai":
            from raywiz.evolve.llm.openai_http import Secret

            # Forwarded in the actor's constructor arguments (memory only) for workers whose node lacks
            # the variable; never in a runtime_env, whose contents Ray writes to its logs.
            api_key = Secret.from_env(self.cfg.api_key_env)
        actor = ray.remote(LLMWorker).options(num_cpus=self.cfg.num_cpus_per_worker,
                                              num_gpus=self.cfg.num_gpus_per_worker)
        worker = actor.remote(self.cfg, self.cache.directory, api_key)
        try:
            ray.get(worker.ready.remote())
        except ray.exceptions.RayActorError as e:
            raise RuntimeError(f"evolve: the LLM worker could not start its {self.cfg.backend} backend: "
                               f"{_root_cause(e)}") from None
        return worker

    def _send_to_workers(self, requests: list[LLMRequest]) -> Iterable[list[LLMResult]]:
        import ray

        while len(self._workers) < self.cfg.num_workers:
            self._workers.append(self._new_worker())
        # worker slot -> (generator, requests not yet answered by it)
        outstanding: dict[int, dict[str, LLMRequest]] = {}
        streams: dict = {}
        for slot, worker in enumerate(self._workers):
            chunk = requests[slot :: len(self._workers)]
            if chunk:
                outstanding[slot] = {r.key: r for r in chunk}
                streams[worker.generate.options(num_returns="streaming").remote(chunk)] = slot
        restarts = 0
        while streams:
            ready, _ = ray.wait(list(streams), num_returns=1, timeout=None)
            stream = ready[0]
            slot = streams[stream]
            try:
                batch = ray.get(next(stream))
            except StopIteration:
                del streams[stream]
                continue
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as e:
                del streams[stream]
                restarts += 1
                if restarts > MAX_WORKER_RESTARTS:
                    raise RuntimeError(f"LLM worker failed {restarts} times; last error: {e}") from e
                # The dead worker may have cached answers it never sent back: take them from disk, after a
                # grace period, since Ray reports a killed actor dead before its process is surely gone.
                time.sleep(WORKER_DEATH_GRACE_S)
                self.answers.update(self.cache.load())
                recovered = [self.answers[k] for k in outstanding[slot] if k in self.answers]
                left = [r for k, r in outstanding[slot].items() if k not in self.answers]
                outstanding[slot] = {r.key: r for r in left}
                if recovered:
                    yield recovered
                say(f"evolve: LLM worker {slot} died ({type(e).__name__}); resending its "
                    f"{len(left)} unanswered requests to a new worker")
                self._workers[slot] = self._new_worker()
                if left:
                    streams[self._workers[slot].generate.options(num_returns="streaming").remote(left)] = slot
                continue
            for r in batch:
                outstanding[slot].pop(r.key, None)
            yield batch


def _root_cause(error: BaseException) -> str:
    """The innermost error message Ray wrapped (e.g. the RuntimeError of a worker's constructor)."""
    cause = getattr(error, "cause", None) or error.__cause__
    while cause is not None:
        error = cause
        cause = getattr(error, "cause", None) or error.__cause__
    text = str(error).strip().splitlines()
    return text[-1] if text else type(error).__name__
