"""Spread generation over Ray actors: each actor builds one raywiz.inference engine (one GPU each when
there are GPUs) and takes chunks of prompts from a shared queue (ray.util.ActorPool), so fast and
slow workers stay busy; results come back in prompt order."""

from __future__ import annotations

from raywiz.inference import EngineSpec, SamplingParams


def _actor_class():
    import ray

    @ray.remote
    class GenerationWorker:
        def __init__(self, spec: EngineSpec):
            from raywiz.inference import make_engine

            self.engine = make_engine(spec)

        def generate(self, prompts: list[str], params: SamplingParams) -> list[list[str]]:
            from raywiz.eval.generation import generate_texts

            return generate_texts(self.engine, prompts, params)

    return GenerationWorker


def generate_with_ray(prompts: list[str], spec: EngineSpec, params: SamplingParams, num_workers: int,
                      gpus_per_worker: float = 0, cpus_per_worker: float = 1, chunk_size: int | None = None,
                      ) -> list[list[str]]:
    import ray
    from ray.util import ActorPool

    if not prompts:
        return []
    worker_cls = _actor_class().options(num_gpus=gpus_per_worker, num_cpus=cpus_per_worker)
    actors = [worker_cls.remote(spec) for _ in range(max(1, num_workers))]
    try:
        # One chunk per actor: an engine refills its lanes as rows end, so one large call keeps them
        # full to the end, where many small calls would each drain them (and pay a prefill apiece).
        chunk = chunk_size or max(1, -(-len(prompts) // len(actors)))
        chunks = [prompts[i:i + chunk] for i in range(0, len(prompts), chunk)]
        pool = ActorPool(actors)
        results = list(pool.map(lambda actor, c: actor.generate.remote(c, params), chunks))
    finally:
        for actor in actors:
            ray.kill(actor)
    return [texts for chunk_result in results for texts in chunk_result]
