"""Reward scoring as a service the GRPO loop feeds while rollouts are still generating.

The contract (the loop sees only this): ``submit(key, task, response, finish_reason)`` returns at once;
``results()`` blocks until every response submitted since the last call has its ``Reward`` and returns
them by key; ``close()`` frees the workers. Every reward comes from raywiz.rl.rewards.compute_reward
(the sandbox's trusted checker), whatever runs it.

``ThreadRewardScorer`` runs the checks on this process's threads (each thread waits on its sample's
sandboxed process). ``ClusterRewardScorer`` keeps the same contract on the sandbox workers of the
whole Ray cluster (raywiz.benchmarks.cluster_scoring): every unit of a reward (each test of a
``fraction`` reward) is one sandboxed check, sent to whichever worker has room as soon as the
response is submitted, so checks run while the policy still generates.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Hashable, Protocol

from raywiz.benchmarks import Task
from raywiz.benchmarks.score import ScoreSettings
from raywiz.rl.config import RLConfig
from raywiz.rl.rewards import CodeOf, Reward, code_of_response, compute_reward, reward_of, reward_units


class RewardScorer(Protocol):
    def submit(self, key: Hashable, task: Task, response: str, finish_reason: str | None) -> None: ...

    def results(self) -> dict[Hashable, Reward]: ...

    def close(self) -> None: ...


class ThreadRewardScorer:
    def __init__(self, cfg: RLConfig, settings: ScoreSettings | None = None, workers: int | None = None,
                 code_of: CodeOf = code_of_response):
        self.cfg, self.settings, self.code_of = cfg, settings or ScoreSettings(), code_of
        workers = workers or self.settings.workers
        # Two pools: a response's per-test checks (inner) must not wait behind other responses (outer).
        self._outer, self._inner = ThreadPoolExecutor(workers), ThreadPoolExecutor(workers)
        self._pending: dict[Hashable, Future] = {}

    def submit(self, key: Hashable, task: Task, response: str, finish_reason: str | None) -> None:
        self._pending[key] = self._outer.submit(compute_reward, task, response, self.cfg, finish_reason,
                                                self.settings, self._inner, self.code_of)

    def results(self) -> dict[Hashable, Reward]:
        pending, self._pending = self._pending, {}
        return {key: future.result() for key, future in pending.items()}

    def close(self) -> None:
        self._outer.shutdown(cancel_futures=True)
        self._inner.shutdown(cancel_futures=True)


class ClusterRewardScorer:
    """Rewards from the cluster's sandbox workers (a ClusterScorer: call ray.init first). `scorer`: one
    already started (left open by close()); else `workers` are started here (default: one per free CPU)."""

    def __init__(self, cfg: RLConfig, settings: ScoreSettings | None = None, workers: int | None = None,
                 code_of: CodeOf = code_of_response, scorer=None):
        from raywiz.benchmarks.cluster_scoring import ClusterScorer

        self.cfg, self.code_of = cfg, code_of
        self._owned = scorer is None
        self.cluster = scorer or ClusterScorer(settings or ScoreSettings(), workers)
        self._pending: dict[Hashable, tuple[list[Future], str, str | None]] = {}

    def submit(self, key: Hashable, task: Task, response: str, finish_reason: str | None) -> None:
        code = self.code_of(task, response)
        futures = [self.cluster.submit(unit.benchmark, unit, solution=code) for unit in reward_units(task, self.cfg)]
        self._pending[key] = (futures, response, finish_reason)

    def results(self) -> dict[Hashable, Reward]:
        pending, self._pending = self._pending, {}
        return {key: reward_of([f.result().passed for f in futures], response, self.cfg, finish_reason)
                for key, (futures, response, finish_reason) in pending.items()}

    def close(self) -> None:
        if self._owned:
            self.cluster.close()
