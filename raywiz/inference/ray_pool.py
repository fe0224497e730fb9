"""Engines on Ray: the one fan-out evolve and eval share.

    pool = EnginePool(partial(PromptWorker, spec, params), num_workers=4, num_gpus=1)
    for results in pool.run(items, item_key=..., result_key=...):   # lists, as workers finish them
        ...

Each worker is a Ray actor (one engine, a GPU each when there are GPUs) built from a picklable
factory, so the engine loads where it runs. Work is split into one share per actor (an engine
refills its lanes as rows end, so one large call keeps them full to the end, where many small calls
would each drain them and pay a prefill apiece). Results stream back in small groups as they finish,
so progress moves while the actors work. An actor that dies is replaced and only its unanswered items
go again (`recover` may first say which of them were answered after all, e.g. from a cache on disk).
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any, Callable, Iterable, Iterator, Sequence

from raywiz.inference import EngineSpec, SamplingParams, make_engine
from raywiz.log import say
from raywiz.runtime import ActorGroup

MAX_RESTARTS = 3
DEATH_GRACE_S = 2.0  # Ray reports a killed actor dead before its process is surely gone
YIELD_EVERY_S = 0.25  # how often an actor sends finished results back (progress granularity)
YIELD_MAX_RESULTS = 256


class EngineActor:
    """A Ray actor around one worker: ``factory()`` builds it; ``run(items)`` yields its results one by
    one, and they go back in groups."""

    def __init__(self, factory: Callable[[], Any]):
        self.worker = factory()

    def ready(self) -> bool:
        return True

    def call(self, method: str, *args):
        """Any other method of the worker (e.g. RL's load_weights), run between its runs."""
        return getattr(self.worker, method)(*args)

    def run(self, items: Sequence):
        batch: list = []
        last = time.monotonic()
        for result in self.worker.run(items):
            batch.append(result)
            if len(batch) >= YIELD_MAX_RESULTS or time.monotonic() - last >= YIELD_EVERY_S:
                yield batch
                batch, last = [], time.monotonic()
        if batch:
            yield batch


class PromptWorker:
    """Text prompts in, (index, completions) out: the engine `spec` names, sampling with `params`."""

    def __init__(self, spec: EngineSpec, params: SamplingParams):
        self.engine, self.params = make_engine(spec), params

    def run(self, items: Sequence[tuple[int, str]]) -> Iterator[tuple[int, list]]:
        completions = self.engine.generate([prompt for _, prompt in items], self.params)
        yield from zip((index for index, _ in items), completions)


class EnginePool(ActorGroup):
    """`num_workers` EngineActors, started on first use, replaced when they die, killed by close()."""

    def __init__(self, factory: Callable[[], Any], num_workers: int, num_cpus: float = 1, num_gpus: float = 0,
                 name: str = "engine"):
        self.factory, self.num_workers, self.name = factory, max(1, num_workers), name
        self.options = {"num_cpus": num_cpus, "num_gpus": num_gpus}
        self.actors: list = []

    def run(self, items: Sequence, item_key: Callable[[Any], Any], result_key: Callable[[Any], Any],
            recover: Callable[[dict], list] | None = None) -> Iterable[list]:
        """Results for `items` in groups, in the order workers finish them. After a worker died,
        ``recover(unanswered: {key: item})`` returns results to count as answered (default: none)."""
        import ray

        if not items:
            return
        self.start()
        share = -(-len(items) // len(self.actors))
        outstanding: dict[int, dict] = {}  # actor slot -> {key: item} not answered yet
        streams: dict = {}
        for slot, actor in enumerate(self.actors):
            chunk = items[slot * share:(slot + 1) * share]
            if chunk:
                outstanding[slot] = {item_key(i): i for i in chunk}
                streams[actor.run.options(num_returns="streaming").remote(list(chunk))] = slot
        restarts = 0
        while streams:
            [stream], _ = ray.wait(list(streams), num_returns=1, timeout=None)
            slot = streams[stream]
            try:
                batch = ray.get(next(stream))
            except StopIteration:
                del streams[stream]
                continue
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as e:
                del streams[stream]
                restarts += 1
                if restarts > MAX_RESTARTS:
                    raise RuntimeError(f"{self.name} worker failed {restarts} times; last error: {e}") from e
                time.sleep(DEATH_GRACE_S)
                recovered = recover(dict(outstanding[slot])) if recover else []
                for r in recovered:
                    outstanding[slot].pop(result_key(r), None)
                if recovered:
                    yield recovered
                left = list(outstanding[slot].values())
                say(f"{self.name}: worker {slot} died ({type(e).__name__}); resending its {len(left)} unanswered "
                    "items to a new worker")
                self.actors[slot] = self._start()
                if left:
                    streams[self.actors[slot].run.options(num_returns="streaming").remote(left)] = slot
                continue
            for r in batch:
                outstanding[slot].pop(result_key(r), None)
            yield batch

    def start(self) -> list:
        """Start the actors not started yet (run() does it on first use); returns them all."""
        while len(self.actors) < self.num_workers:
            self.actors.append(self._start())
        return self.actors

    def _start(self):
        """Start an actor and wait until its worker is built (a bad key or model fails here, once)."""
        import ray

        actor = ray.remote(EngineActor).options(**self.options).remote(self.factory)
        try:
            ray.get(actor.ready.remote())
        except ray.exceptions.RayActorError as e:
            raise RuntimeError(f"{self.name}: a worker could not start: {root_cause(e)}") from None
        return actor



def generate_on_ray(prompts: Sequence[str], spec: EngineSpec, params: SamplingParams, num_workers: int,
                    num_gpus: float = 0, num_cpus: float = 1) -> list[list]:
    """Completions for `prompts` (n per prompt, in prompt order) from `num_workers` engine actors."""
    results: dict[int, list] = {}
    with EnginePool(partial(PromptWorker, spec, params), num_workers, num_cpus, num_gpus, name="generation") as pool:
        for batch in pool.run(list(enumerate(prompts)), item_key=lambda item: item[0],
                              result_key=lambda result: result[0]):
            results.update(batch)
    return [results[i] for i in range(len(prompts))]


def root_cause(error: BaseException) -> str:
    """The innermost error message Ray wrapped (e.g. the RuntimeError of a worker's constructor)."""
    cause = getattr(error, "cause", None) or error.__cause__
    while cause is not None:
        error = cause
        cause = getattr(error, "cause", None) or error.__cause__
    text = str(error).strip().splitlines()
    return text[-1] if text else type(error).__name__
