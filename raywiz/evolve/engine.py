"""Runs LLM requests on the Ray cluster, through the request cache, with a progress bar.

    engine = LLMEngine(evolve_cfg.llm, cache_dir)
    answers = engine.run(requests, "round 1: evolve")    # key -> ChatResult, one per unique request

A request whose key is in the cache is never sent again. The rest go to ``num_workers`` Ray actors
(``LLMWorker``), each holding one raywiz.inference engine (an endpoint's client with its own
concurrency, or a local model) that answers chat requests (``engine.chat``). Workers write every answer to the cache the moment it
arrives and stream answers back in small groups, so the progress bar moves while they work. A worker
that dies is replaced and only its unanswered requests are sent again.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Iterable, Sequence

from raywiz.evolve.cache import RequestCache
from raywiz.inference import make_engine
from raywiz.inference.chat import ChatRequest, ChatResult
from raywiz.inference.openai_backend import Secret
from raywiz.inference.ray_pool import EnginePool
from raywiz.log import ProgressDisplay



def build_engine(llm_cfg, forwarded_key: Secret | None = None):
    """The engine ``evolve.llm`` names, on this process. An endpoint's key: this process's environment
    first, else the one the driver forwarded; a named variable set nowhere is an error here, not a
    stream of 401s. Rate limits are for the whole run: each of the workers takes its share."""
    if llm_cfg.api_key_env and not llm_cfg.local and not (os.environ.get(llm_cfg.api_key_env) or forwarded_key):
        raise RuntimeError(
            f"evolve.llm.api_key_env: the environment variable {llm_cfg.api_key_env} is set neither where "
            f"`raywiz evolve` runs nor on the Ray worker (host {os.uname().nodename}); set it, or set "
            "api_key_env: null for a server that needs no key"
        )
    spec = llm_cfg.engine_spec(workers_sharing_limits=llm_cfg.num_workers)
    return make_engine(spec, api_key=forwarded_key.value if forwarded_key else None)


class LLMWorker:
    """What one engine actor (raywiz.inference.ray_pool) holds for evolve: one engine and one cache
    part file; every answer is cached the moment it exists, before anything else is sent."""

    def __init__(self, llm_cfg, cache_dir: str, api_key: Secret | None = None):
        self.engine = build_engine(llm_cfg, forwarded_key=api_key)
        self.writer = RequestCache(cache_dir).writer()

    def run(self, requests: Sequence[ChatRequest]) -> Iterable[ChatResult]:
        yield from self.engine.chat(requests, on_result=self.writer.put)


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

    def update(self, results: Iterable[ChatResult]) -> None:
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
        # The driver's API key travels in the actors' constructor arguments (memory only) for workers
        # whose node lacks the variable; never in a runtime_env, whose contents Ray writes to its logs.
        api_key = None if llm_cfg.local else Secret.from_env(llm_cfg.api_key_env)
        self.pool = EnginePool(partial(LLMWorker, llm_cfg, self.cache.directory, api_key), llm_cfg.num_workers,
                               llm_cfg.num_cpus_per_worker, llm_cfg.num_gpus_per_worker, name="evolve: LLM")

    # ------------------------------------------------------------------ public

    def run(self, requests: Sequence[ChatRequest], label: str,
            on_results: Callable[[list[ChatResult]], None] | None = None) -> dict[str, ChatResult]:
        """Answers for every request (failed ones carry ``error``), sending only cache misses.

        ``on_results`` sees the answers as they come (cached ones first), while the rest are still out:
        the verify step starts sandbox runs on them without waiting for the whole phase."""
        unique = {r.key: r for r in requests}
        hits = [k for k in unique if k in self.answers]
        misses = [r for k, r in unique.items() if k not in self.answers]
        self.stats.requests += len(unique)
        self.stats.cache_hits += len(hits)
        for k in hits:
            self.stats.cached_prompt_tokens += self.answers[k].prompt_tokens
            self.stats.cached_completion_tokens += self.answers[k].completion_tokens
        results = {k: self.answers[k] for k in hits}
        if on_results and hits:
            on_results(list(results.values()))
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
                if on_results:
                    on_results(batch)
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
        self.pool.close()

    def __enter__(self) -> "LLMEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _account(self, r: ChatResult) -> None:
        self.stats.sent += 1
        self.stats.failed += 0 if r.ok else 1
        self.stats.retries.update(r.retries)
        self.stats.prompt_tokens += r.prompt_tokens
        self.stats.completion_tokens += r.completion_tokens

    def _send(self, requests: list[ChatRequest]) -> Iterable[list[ChatResult]]:
        """Cache misses to the engine actors; a dead worker's answers that reached the cache count."""

        def recover(unanswered: dict[str, ChatRequest]) -> list[ChatResult]:
            self.answers.update(self.cache.load())
            return [self.answers[k] for k in unanswered if k in self.answers]

        yield from self.pool.run(requests, item_key=lambda r: r.key, result_key=lambda r: r.key, recover=recover)
