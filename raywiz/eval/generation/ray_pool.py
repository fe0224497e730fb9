"""Spread generation over Ray actors: each actor loads the model once (one GPU each when there are
GPUs) and takes chunks of prompts from a shared queue (ray.util.ActorPool), so fast and slow
workers stay busy; results come back in prompt order."""

from __future__ import annotations

from raywiz.eval.generation import BackendSpec, SamplingParams


def _actor_class():
    import ray

    @ray.remote
    class GenerationWorker:
        def __init__(self, spec: BackendSpec):
            from raywiz.eval.generation import make_generator

            self.generator = make_generator(spec)

        def generate(self, prompts: list[str], params: SamplingParams) -> list[list[str]]:
            return self.generator.generate(prompts, params)

    return GenerationWorker


def generate_with_ray(prompts: list[str], spec: BackendSpec, params: SamplingParams, num_workers: int,
                      gpus_per_worker: float = 0, cpus_per_worker: float = 1, chunk_size: int | None = None,
                      ) -> list[list[str]]:
    import ray
    from ray.util import ActorPool

    if not prompts:
        return []
    worker_cls = _actor_class().options(num_gpus=gpus_per_worker, num_cpus=cpus_per_worker)
    actors = [worker_cls.remote(spec) for _ in range(max(1, num_workers))]
    try:
        # Several chunks per actor, each a few batches long: balance without tiny requests.
        chunk = chunk_size or max(spec.batch_size, len(prompts) // (4 * len(actors)) or 1)
        chunks = [prompts[i:i + chunk] for i in range(0, len(prompts), chunk)]
        pool = ActorPool(actors)
        results = list(pool.map(lambda actor, c: actor.generate.remote(c, params), chunks))
    finally:
        for actor in actors:
            ray.kill(actor)
    return [texts for chunk_result in results for texts in chunk_result]
