"""`raywiz serve`: the Ray Serve application (the recipe of the serve stage).

One deployment, `ModelServer`; each replica holds a ModelService (which checkpoints are loaded) and
answers HTTP with the OpenAI routes and the evaluation page. Checkpoints change inside the replica,
never by replacing it: a new one is loaded next to the old one in the background and swapped in
with one assignment, so no request fails and the swap costs no replica restart (4-5 s here).

Two ways a new checkpoint arrives:
- the replica watches its run's train/ directory (the default for `raywiz serve JOB.yaml`);
- `user_config` {"checkpoint": PATH|RUN|None} through Ray Serve's `reconfigure`. run_serve gives
  the deployment a version derived from everything except the checkpoint, so running it again with
  only another checkpoint updates the running replicas in place instead of restarting them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import time

from ray import serve

from raywiz.log import get_logger, say
from raywiz.serve.checkpoints import resolve_target, verify
from raywiz.serve.config import ServeConfig
from raywiz.serve.http_server import PROXY_CALLBACK, PROXY_CALLBACK_ENV
from raywiz.serve.openai_api import build_api
from raywiz.serve.page import CheckPolicy, build_page_routers
from raywiz.serve.service import ModelService, ServiceSettings
from raywiz.serve.tasks import TaskCatalog

log = get_logger(__name__)
DEPLOYMENT = "ModelServer"


@serve.deployment(name=DEPLOYMENT)
@serve.ingress()  # the FastAPI app is built per replica, around its ModelService
class ModelServer:
    def __init__(self, settings: dict):
        self.settings = ServiceSettings.from_dict(settings)
        cfg = self.settings.serve
        self.api_key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
        if cfg.api_key_env and not self.api_key:
            raise RuntimeError(f"serve.api_key_env: environment variable {cfg.api_key_env} is empty in the replica")
        self.service = ModelService(self.settings)

    def __serve_build_asgi_app__(self):
        cfg = self.settings.serve
        catalog = TaskCatalog(cfg.benchmarks)
        policy = CheckPolicy.from_config(cfg, self.api_key)
        api_routes, page = build_page_routers(self.service, catalog, cfg.limits.max_request_bytes, policy)
        return build_api(self.service, cfg.limits, self.api_key, extra_routers=[api_routes], public_routers=[page],
                         policy=policy)

    async def reconfigure(self, user_config: dict) -> None:
        """Serve this checkpoint (a path, a run, or None: follow the job's run). Returns at once when a
        model is already being served (the new one loads in the background); waits for the first."""
        await asyncio.to_thread(self.service.set_checkpoint, (user_config or {}).get("checkpoint"))
        self.service.start_watching()

    def __del__(self):
        self.service.close()


# ---------------------------------------------------------------- the driver side


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def plan(job, checkpoint: str | None = None) -> tuple[ServiceSettings, dict]:
    """(replica settings, user_config) for a job; fails early, naming the checkpoint, if it cannot be served."""
    from raywiz.config import ConfigError

    cfg = job.serve or ServeConfig()
    spec = checkpoint if checkpoint is not None else cfg.checkpoint
    try:
        target = resolve_target(spec, job.run_dir, job.storage)
    except FileNotFoundError as e:
        raise ConfigError(f"serve.checkpoint: {e}") from None
    if target.model is not None:
        verdict = verify(target.model, cfg.verify_checksums)
        if not verdict.ok:
            raise ConfigError(f"serve.checkpoint: {spec} cannot be served: {verdict.reason}")
        user_config = {"checkpoint": target.model.path}
    else:
        user_config = {"checkpoint": None if target.run_dir == job.run_dir else target.run_dir}
    if "dtype" not in cfg.engine.model_fields_set:  # the model is served in the dtype it trains in
        cfg = cfg.model_copy(update={"engine": cfg.engine.model_copy(update={"dtype": job.model.dtype})})
    settings = ServiceSettings(cfg, job.run_dir, job.storage, job.model.trust_remote_code)
    return settings, user_config


def build_app(settings: ServiceSettings, user_config: dict, num_gpus: float):
    cfg = settings.serve
    actor_options: dict = {"num_cpus": cfg.num_cpus, "num_gpus": num_gpus}
    if cfg.api_key_env:
        # The key travels in the replica's environment, not in its (logged, checkpointed) init args.
        actor_options["runtime_env"] = {"env_vars": {cfg.api_key_env: os.environ.get(cfg.api_key_env, "")}}
    # Same settings -> same version -> a new user_config is applied with reconfigure(), in place.
    version = hashlib.sha256(json.dumps([settings.to_dict(), actor_options], sort_keys=True).encode()).hexdigest()[:16]
    deployment = ModelServer.options(
        num_replicas=cfg.num_replicas, ray_actor_options=actor_options, user_config=user_config,
        max_ongoing_requests=cfg.max_ongoing_requests, graceful_shutdown_timeout_s=30,
        version=version, _internal=True,  # Ray 2.60 keeps `version` internal; Serve config deploys set it the same way
    )
    return deployment.bind(settings.to_dict())


def app_builder(args: dict):
    """Ray Serve config entry point (`import_path: raywiz.serve.app:app_builder`, e.g. in a RayService).

    args: ``job`` (a job YAML path), optional ``overrides`` (``--set`` strings) and ``checkpoint``.
    """
    import ray

    from raywiz.config import load_job

    # Serve does not expand variables in a config file's args (the RayService passes $RAYWIZ_STORAGE).
    job = load_job(os.path.expandvars(args["job"]), [os.path.expandvars(o) for o in args.get("overrides", [])])
    settings, user_config = plan(job, args.get("checkpoint"))
    cfg = settings.serve
    num_gpus = cfg.num_gpus if cfg.num_gpus is not None else (1 if ray.cluster_resources().get("GPU", 0) else 0)
    return build_app(settings, user_config, num_gpus)


def run_serve(job, checkpoint: str | None = None, blocking: bool = True) -> str:
    """Start (or update) the serve application for a job; returns its base URL.

    blocking=True waits until Ctrl-C and then removes the application.
    """
    from ray.serve.context import _get_global_client

    from raywiz.config import ConfigError
    from raywiz.runtime import cluster_has_gpus, init_ray

    settings, user_config = plan(job, checkpoint)
    cfg = settings.serve
    if cfg.api_key_env and not os.environ.get(cfg.api_key_env):
        raise ConfigError(f"serve.api_key_env: environment variable {cfg.api_key_env} is not set")
    # The proxy's uvicorn gets a header deadline (slowloris); its process inherits this cluster's environment.
    os.environ.setdefault(PROXY_CALLBACK_ENV, PROXY_CALLBACK)
    init_ray(job)
    # Serve has one HTTP proxy per cluster: the first start decides host and port, later apps share it
    # (serve.start then keeps the running one). Private: no public API says where the proxy listens.
    running = _get_global_client(raise_if_no_controller_running=False)
    if running is None:
        serve.start(http_options={"host": cfg.host, "port": cfg.port or free_port(cfg.host)})
    http = _get_global_client().http_config
    num_gpus = cfg.num_gpus if cfg.num_gpus is not None else (1 if cluster_has_gpus() else 0)
    serve.run(build_app(settings, user_config, num_gpus), name=cfg.app_name, route_prefix=cfg.route_prefix)
    host = "127.0.0.1" if http.host in ("0.0.0.0", "::", "") else http.host
    url = f"http://{host}:{http.port}{cfg.route_prefix.rstrip('/')}"
    if blocking:
        say(f"serve: {url}/  (OpenAI API at {url}/v1; Ctrl-C stops)")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            serve.delete(cfg.app_name)
    return url
