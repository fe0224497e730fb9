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

Streaming (RL rewards: samples arrive one by one while the policy still generates):

    future = scorer.submit("mbpp", task, solution=code)   # a concurrent.futures.Future of its Verdict
    for future in concurrent.futures.as_completed(futures): ...

Submitted samples go out on a dispatcher thread under the same rules (each worker holds at most
`in_flight_per_worker`, a lost worker's samples run elsewhere), the task travelling with the sample.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
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
        return self.check(benchmark, self.tasks[benchmark][task_id], completion, solution)

    def check(self, benchmark: str, task: Task, completion: str | None, solution: str | None) -> dict:
        """One sample of a task sent along with it (the streaming API: tasks not loaded beforehand)."""
        try:
            verdict = check_completion(benchmark, task, completion, solution=solution,
                                       settings=self.settings, payloads=self.payloads)
        except Exception as e:  # noqa: BLE001 - one sample's trouble is its own verdict (as in score_samples)
            log.exception("scoring %s failed in the evaluator", task.task_id)
            verdict = Verdict(task.task_id, False, f"failed: evaluator error: {type(e).__name__}: {e}"[:500])
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
        self._stream: _StreamDispatcher | None = None
        self._stream_lock = threading.Lock()

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
                attempts[index] = attempts.get(index, 0) + 1
                verdict = self._verdict(ref, worker, samples[index]["task_id"], load, attempts[index])
                if verdict is None:
                    queue.appendleft(index)
                    continue
                self._count(worker)
                record(index, verdict)
        return verdicts  # type: ignore[return-value]

    def _verdict(self, ref, worker, task_id: str, load: dict, attempt: int) -> Verdict | None:
        """The verdict `ref` brought back; None when its worker (or node) died and the sample should run
        again elsewhere (its `attempt` was not the last allowed)."""
        import ray

        try:
            return Verdict(**ray.get(ref))
        except ray.exceptions.RayTaskError as e:  # the worker raised: that sample's verdict
            return Verdict(task_id, False, f"failed: evaluator error: {e}"[:500])
        except ray.exceptions.RayError as e:  # the worker or its node died
            self._lose(worker, load, e)
            if attempt < self.max_attempts:
                self.stats.reruns += 1
                return None
            return Verdict(task_id, False, f"failed: evaluator error: its sandbox worker died {attempt} times")

    def _count(self, worker) -> None:
        node = self.node_of.get(worker, "?")
        self.stats.per_node[node] = self.stats.per_node.get(node, 0) + 1

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
        load.pop(worker, None)  # score() and the stream each keep a load map: the worker leaves both
        if worker in self.actors:
            self.actors.remove(worker)
            self.stats.workers_lost += 1
            log.warning("sandbox worker on node %s lost (%s); its samples run elsewhere",
                        self.node_of.get(worker, "?")[:12], type(error).__name__)


    # ------------------------------------------------------------ streaming

    def submit(self, benchmark: str, task: Task, completion: str | None = None,
               solution: str | None = None) -> Future:
        """Score one sample of `task` as soon as a worker has room; returns a Future of its Verdict
        (wait on many with concurrent.futures.as_completed / wait)."""
        with self._stream_lock:
            if self._stream is None:
                self._stream = _StreamDispatcher(self)
        return self._stream.submit(canonical_name(benchmark), task, completion, solution)

    def close(self) -> None:
        with self._stream_lock:
            if self._stream is not None:
                self._stream.close()
                self._stream = None
        super().close()


@dataclass
class _Submitted:
    future: Future
    benchmark: str
    task: Task
    completion: str | None
    solution: str | None
    attempts: int = 0


class _StreamDispatcher:
    """The driver side of ClusterScorer.submit: a thread that hands submitted samples to the least
    loaded workers (at most `in_flight_per_worker` each) and resolves each Future when its verdict
    is back; samples of a lost worker go to the front of the queue."""

    POLL_S = 0.02  # how long a wait for verdicts lasts before new submissions are taken in

    def __init__(self, scorer: ClusterScorer):
        self.scorer = scorer
        self.inbox: queue.Queue = queue.Queue()
        self.waiting: deque[_Submitted] = deque()
        self.in_flight: dict = {}  # ObjectRef -> (item, worker)
        self.load = {w: 0 for w in scorer.actors}
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._run, name="raywiz-scoring", daemon=True)
        self.thread.start()

    def submit(self, benchmark: str, task: Task, completion: str | None, solution: str | None) -> Future:
        if self.closed.is_set():
            raise RuntimeError("the scorer is closed")
        future: Future = Future()
        self.inbox.put(_Submitted(future, benchmark, task, completion, solution))
        return future

    def _run(self) -> None:
        import ray

        while not self.closed.is_set():
            try:
                self._take(block=not self.in_flight and not self.waiting)
                self._dispatch()
                if self.in_flight:
                    ready, _ = ray.wait(list(self.in_flight), num_returns=1, timeout=self.POLL_S)
                    for ref in ready:
                        self._finish(ref)
                elif self.waiting:  # no live worker to send them to
                    self._fail_all(RuntimeError(f"every sandbox worker was lost ({self.scorer.stats.workers_lost})"))
            except Exception as e:  # noqa: BLE001 - the thread must not die with futures pending
                log.exception("the scoring dispatcher failed")
                self._fail_all(e)

    def _take(self, block: bool) -> None:
        try:
            while True:
                self.waiting.append(self.inbox.get(timeout=0.1) if block else self.inbox.get_nowait())
                block = False
        except queue.Empty:
            pass

    def _dispatch(self) -> None:
        while self.waiting and self.load:
            worker = min(self.load, key=self.load.get)
            if self.load[worker] >= self.scorer.in_flight_per_worker:
                return
            item = self.waiting.popleft()
            ref = worker.check.remote(item.benchmark, item.task, item.completion, item.solution)
            self.in_flight[ref] = (item, worker)
            self.load[worker] += 1

    def _finish(self, ref) -> None:
        item, worker = self.in_flight.pop(ref)
        if worker in self.load:
            self.load[worker] -= 1
        item.attempts += 1
        verdict = self.scorer._verdict(ref, worker, item.task.task_id, self.load, item.attempts)
        if verdict is None:
            self.waiting.appendleft(item)
            return
        self.scorer._count(worker)
        if not item.future.done():
            item.future.set_result(verdict)

    def _fail_all(self, error: Exception) -> None:
        items = list(self.waiting) + [item for item, _ in self.in_flight.values()]
        while not self.inbox.empty():
            items.append(self.inbox.get_nowait())
        self.waiting.clear()
        self.in_flight.clear()
        for item in items:
            if not item.future.done():
                item.future.set_exception(error)

    def close(self) -> None:
        self.closed.set()
        self.thread.join(timeout=10)
        self._fail_all(RuntimeError("the scorer was closed"))


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
