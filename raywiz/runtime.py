"""Connecting to Ray: an existing cluster (job.cluster.address / RAY_ADDRESS) or a local one.

A local cluster advertises at least enough logical CPUs for the train workers plus two for Ray
Data: on a 2-core laptop, 2 workers x 1 CPU would otherwise leave none for the data pipeline and
the run would wait forever. Logical CPUs are a scheduling budget, not a claim on cores.
"""

from __future__ import annotations

import os

from raywiz.log import WORKER_ENV_VARS, get_logger, ray_log_settings

log = get_logger(__name__)
FORWARDED_ENV_VARS = ("PYTHONPATH", "WANDB_MODE", "HF_HOME", "HF_HUB_OFFLINE", *WORKER_ENV_VARS)


def init_ray(job, extra_cpus_needed: float = 0) -> None:
    """Connect to the job's Ray cluster (``job.cluster``), or start a local one (see connect_ray)."""
    c = job.cluster
    connect_ray(c.address, c.num_cpus, c.num_gpus, extra_cpus_needed)


def connect_ray(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None,
                extra_cpus_needed: float = 0) -> None:
    """Connect to the Ray cluster at `address` (else RAY_ADDRESS), or start a local one; workers keep
    raywiz's console mode.

    Unless verbose, workers' output stays in Ray's log files (``/tmp/ray/session_latest/logs``):
    raywiz's own progress comes from the driver.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    env_vars = {k: os.environ[k] for k in FORWARDED_ENV_VARS if k in os.environ}
    runtime_env = {"env_vars": env_vars} if env_vars else None
    if address:
        ray.init(address=address, runtime_env=runtime_env, **ray_log_settings())
        return
    # A busy laptop can take longer than Ray's default to register the local raylet.
    os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")
    num_cpus = num_cpus or max(os.cpu_count() or 1, int(extra_cpus_needed + 0.999) + 2)
    ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
             runtime_env=runtime_env, **ray_log_settings())
    log.debug("started a local Ray cluster with %s logical CPUs", num_cpus)


def cluster_has_gpus() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


class ActorGroup:
    """Ray actors an object started (``self.actors``), killed by ``close()`` or at the end of its ``with``
    block: the inference engine pool and the cluster scorer both hold one."""

    actors: list

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
