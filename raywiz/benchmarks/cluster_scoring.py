"""Scoring on a Ray cluster: sandbox workers on every node, a bounded queue, verdicts as they finish.

Each verdict is `score.check_completion`'s, computed in a `ScoringWorker` (plain code: the same
sandbox and trusted checker as the single-process scorer), so honest samples get the same verdicts.
This module only places the work:

  - workers: Ray actors placed on nodes, `workers_per_node` on each alive node with CPUs (default:
    one per CPU not held by other actors), each reserving one CPU; `workers` caps the total (spread
    round-robin over nodes; a worker whose node is full goes to another);
  - a bounded queue: each worker holds at most `in_flight_per_worker` samples (one running, the next
    ready), the rest wait on the driver, so a slow node never hoards work;
  - verdicts come back in order of completion and go to `on_verdict(index, verdict)` at once (the
    eval CLI appends them to results.partial.jsonl), each index exactly once;
  - a dead worker or node: its samples go back to the front of the queue and run on another worker
    (up to `max_attempts` times per sample; after that the sample fails with the reason).

    scorer = ClusterScorer(settings, workers=8)
    verdicts = scorer.score("humaneval+", tasks, samples, on_verdict=save)
    scorer.close()

`score()` takes the same arguments as `score.score_samples`, so callers switch between the two.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from raywiz.benchmarks import Task, canonical_name
from raywiz.benchmarks.score import ScoreSettings, Verdict, check_completion, expected_seconds, match_samples
from raywiz.runtime import ActorGroup

log = logging.getLogger(__name__)


class ScoringWorker:
    """One sandbox worker: scores one sample at a time with the benchmark's rules (no Ray inside)."""

    def __init__(self, settings: ScoreSettings):
        from raywiz.benchmarks.sandbox import require_working_sandbox
        from raywiz.benchmarks.score import EvalplusPayloads

        require_working_sandbox(settings.sandbox)  # fail at start, naming the node, not on every sample
        self.settings = settings
        self.tasks: dict[str, dict[str, Task]] = {}
        # Decoded evalplus expected outputs of the last few tasks (the single-process scorer keeps them too).
        self.payloads = EvalplusPayloads(settings, keep=4)

    def load(self, benchmark: str, tasks: list[Task]) -> None:
        """The tasks of a benchmark, sent once per worker (not with every sample)."""
        self.tasks[benchmark] = {t.task_id: t for t in tasks}

    def score(self, benchmark: str, task_id: str, completion: str | None, solution: str | None) -> dict:
        try:
            verdict = check_completion(benchmark, self.tasks[benchmark][task_id], completion, solution=solution,
                                       settings=self.settings, payloads=self.payloads)
        except Exception as e:  # noqa: BLE001 - one sample's trouble is its own verdict (as in score_samples)
            log.exception("scoring %s failed in the evaluator", task_id)
            verdict = Verdict(task_id, False, f"failed: evaluator error: {type(e).__name__}: {e}"[:500])
        return verdict.to_dict()

    def ready(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()


@dataclass
class ScoringStats:
    workers_started: int = 0
    workers_lost: int = 0
    reruns: int = 0  # samples sent again because their worker died
    per_node: dict[str, int] = field(default_factory=dict)  # node id -> verdicts


def _alive_cpu_nodes() -> list[tuple[str, int]]:
    import ray

    return [(n["NodeID"], int(n["Resources"].get("CPU", 0))) for n in ray.nodes()
            if n.get("Alive") and n["Resources"].get("CPU", 0) >= 1]


def plan_workers(nodes: list[tuple[str, int]], workers: int | None, workers_per_node: int | None) -> list[str]:
    """The node of each worker: up to `workers_per_node` (default: its CPUs) per node, round-robin over
    nodes so that a cap of `workers` spreads over the cluster."""
    slots = [[node] * (workers_per_node or cpus) for node, cpus in nodes]
    plan: list[str] = []
    for depth in range(max((len(s) for s in slots), default=0)):
        plan += [s[depth] for s in slots if depth < len(s)]
    return plan[:workers] if workers else plan


class ClusterScorer(ActorGroup):
    """Sandbox workers on the connected Ray cluster (call ray.init first); reusable across score() calls."""

    def __init__(self, settings: ScoreSettings, workers: int | None = None, workers_per_node: int | None = None,
                 in_flight_per_worker: int = 2, max_attempts: int = 3, start_timeout_s: float = 300.0):
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.settings, self.in_flight_per_worker, self.max_attempts = settings, in_flight_per_worker, max_attempts
        self.stats = ScoringStats()
        if workers is None and workers_per_node is None:  # one per CPU, of those not held by other actors
            workers = max(1, int(ray.available_resources().get("CPU", 0)))
        plan = plan_workers(_alive_cpu_nodes(), workers, workers_per_node)
        if not plan:
            raise RuntimeError("the Ray cluster has no node with a CPU for sandbox workers")
        remote = ray.remote(num_cpus=1, max_restarts=0, max_concurrency=1)(ScoringWorker)
        # Soft: a worker whose node is full goes where a CPU is free rather than waiting.
        self.actors = [remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=True))
                        .remote(settings) for node in plan]
        try:  # every worker is placed and has a working sandbox before any sample goes out
            self.node_of = dict(zip(self.actors, ray.get([w.ready.remote() for w in self.actors],
                                                          timeout=start_timeout_s)))
        except ray.exceptions.GetTimeoutError:
            self.close()
            raise RuntimeError(f"{len(plan)} sandbox workers did not start within {start_timeout_s:.0f} s: the "
                               f"cluster has {ray.available_resources().get('CPU', 0):g} free CPUs "
                               "(each worker takes one; lower --workers)") from None
        except ray.exceptions.RayActorError as e:
            self.close()
            raise RuntimeError(f"a sandbox worker failed to start: {e}") from None
        self.stats.workers_started = len(self.actors)
        self._loaded: set[tuple[int, str, int]] = set()


    def score(self, benchmark: str, tasks: list[Task], samples: list[dict],
              progress: Callable[[int, int], None] | None = None, allow_partial: bool = False,
              done: dict[int, Verdict] | None = None,
              on_verdict: Callable[[int, Verdict], None] | None = None) -> list[Verdict]:
        """Verdicts for all samples (same order); see score.score_samples for the arguments."""
        import ray

        benchmark = canonical_name(benchmark)
        by_id = match_samples(tasks, samples, allow_partial=allow_partial)
        tasks_ref = ray.put(list(by_id.values()))
        for w in self.actors:
            w.load.remote(benchmark, tasks_ref)  # an actor runs its calls in order: loaded before any score()
        verdicts: list[Verdict | None] = [None] * len(samples)
        for i, v in (done or {}).items():
            if 0 <= i < len(samples):
                verdicts[i] = v
        queue = deque(sorted((i for i in range(len(samples)) if verdicts[i] is None),
                             key=lambda i: -expected_seconds(by_id[samples[i]["task_id"]])))
        attempts: dict[int, int] = {}
        in_flight: dict = {}  # ObjectRef -> (sample index, worker)
        load: dict = {w: 0 for w in self.actors}
        finished = sum(v is not None for v in verdicts)

        def record(index: int, verdict: Verdict) -> None:
            nonlocal finished
            if verdicts[index] is not None:
                return  # never written twice
            verdicts[index] = verdict
            finished += 1
            if on_verdict:
                on_verdict(index, verdict)
            if progress:
                progress(finished, len(samples))

        while queue or in_flight:
            self._dispatch(benchmark, samples, queue, in_flight, load)
            if not in_flight:
                raise RuntimeError(f"every sandbox worker was lost ({self.stats.workers_lost}); "
                                   f"{len(queue)} samples not scored")
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                index, worker = in_flight.pop(ref)
                if worker in load:
                    load[worker] -= 1
                try:
                    verdict = Verdict(**ray.get(ref))
                except ray.exceptions.RayTaskError as e:  # the worker raised: that sample's verdict
                    verdict = Verdict(samples[index]["task_id"], False, f"failed: evaluator error: {e}"[:500])
                except ray.exceptions.RayError as e:  # the worker or its node died: run it elsewhere
                    self._lose(worker, load, e)
                    attempts[index] = attempts.get(index, 0) + 1
                    if attempts[index] < self.max_attempts:
                        self.stats.reruns += 1
                        queue.appendleft(index)
                        continue
                    verdict = Verdict(samples[index]["task_id"], False,
                                      f"failed: evaluator error: its sandbox worker died {attempts[index]} times")
                node = self.node_of.get(worker, "?")
                self.stats.per_node[node] = self.stats.per_node.get(node, 0) + 1
                record(index, verdict)
        return verdicts  # type: ignore[return-value]

    def _dispatch(self, benchmark: str, samples: list[dict], queue: deque, in_flight: dict, load: dict) -> None:
        """Fill every live worker up to `in_flight_per_worker`, least loaded first."""
        while queue:
            worker = min(load, key=load.get, default=None)
            if worker is None or load[worker] >= self.in_flight_per_worker:
                return
            index = queue.popleft()
            s = samples[index]
            in_flight[worker.score.remote(benchmark, s["task_id"], s.get("completion"), s.get("solution"))] = \
                (index, worker)
            load[worker] += 1

    def _lose(self, worker, load: dict, error: Exception) -> None:
        if worker in load:
            del load[worker]
            self.actors.remove(worker)
            self.stats.workers_lost += 1
            log.warning("sandbox worker on node %s lost (%s); its samples run elsewhere",
                        self.node_of.get(worker, "?")[:12], type(error).__name__)


def connect(address: str | None) -> None:
    """Ray for scoring: the cluster at `address` ('auto', 'ray://...'), or None: a local one (raywiz.runtime)."""
    from raywiz.runtime import connect_ray

    connect_ray(address)


def score_on_cluster(benchmark: str, tasks: list[Task], samples: list[dict], settings: ScoreSettings,
                     workers: int | None = None, workers_per_node: int | None = None,
                     **kwargs) -> tuple[list[Verdict], ScoringStats]:
    """One scoring run with workers started for it and stopped after."""
    started = time.monotonic()
    with ClusterScorer(settings, workers, workers_per_node) as scorer:
        log.info("%d sandbox workers ready in %.1f s", len(scorer.actors), time.monotonic() - started)
        return scorer.score(benchmark, tasks, samples, **kwargs), scorer.stats
