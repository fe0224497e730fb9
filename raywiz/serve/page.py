"""The interactive evaluation page and the small JSON API behind it (/api/...).

The page itself (web/index.html) is static and talks to the same OpenAI routes any client uses,
so what it shows is what the API serves. The /api routes add what OpenAI's API has no words for:
the run's checkpoints and their state, benchmark tasks, and running a task's tests.

Every /api route is behind serve's request guard (raywiz.serve.guard: Host, Origin, JSON bodies, the
token beyond loopback), as /v1 is. /api/check runs code, so besides (CheckPolicy): each client has at
most a few checks running, and checks run in a pool of their own so that slow ones never hold up /v1
or the other /api routes.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field

from raywiz.serve.guard import RequestPolicy, request_guard
from raywiz.serve.openai_api import ApiError, read_body
from raywiz.serve.pool import CheckpointRefused, UnknownModel
from raywiz.serve.service import ModelService
from raywiz.serve.tasks import TaskCatalog, TasksUnavailable

PAGE = Path(__file__).parent / "web" / "index.html"


class CheckRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    benchmark: str
    task_id: str
    completion: str = Field(max_length=200_000)
    model: str | None = None  # whose prompt produced the completion (decides how it is read)


@dataclass
class CheckPolicy(RequestPolicy):
    """serve's RequestPolicy, and how many /api/check runs at once (from ServeConfig)."""

    per_client: int = 2
    workers: int = 2
    queue: int = 8  # checks waiting for a worker, all clients together

    @classmethod
    def from_config(cls, cfg, api_key: str | None) -> "CheckPolicy":
        return cls(bind_host=cfg.host, has_token=bool(api_key), allowed_origins=list(cfg.check_allowed_origins),
                   allowed_hosts=list(cfg.allowed_hosts), per_client=cfg.checks_per_client,
                   workers=cfg.check_workers)


class CheckGate:
    """Bounds the /api/check runs of each client and in all, and runs them in its own pool."""

    def __init__(self, policy: CheckPolicy):
        self.policy = policy
        self.pool = ThreadPoolExecutor(max_workers=max(1, policy.workers), thread_name_prefix="raywiz-check")
        self._lock = threading.Lock()
        self._per_client: dict[str, int] = {}
        self._in_flight = 0

    def acquire(self, client: str) -> None:
        p = self.policy
        with self._lock:
            if self._per_client.get(client, 0) >= p.per_client:
                raise ApiError(429, f"at most {p.per_client} checks at once per client", type="rate_limit_error",
                               code="too_many_checks")
            if self._in_flight >= p.workers + p.queue:
                raise ApiError(429, "the server is busy with other checks; retry shortly", type="rate_limit_error",
                               code="checks_busy")
            self._per_client[client] = self._per_client.get(client, 0) + 1
            self._in_flight += 1

    def release(self, client: str) -> None:
        with self._lock:
            self._in_flight -= 1
            left = self._per_client.get(client, 1) - 1
            if left:
                self._per_client[client] = left
            else:
                self._per_client.pop(client, None)


def build_page_routers(service: ModelService, catalog: TaskCatalog, max_request_bytes: int,
                       check_policy: CheckPolicy | None = None) -> tuple[APIRouter, APIRouter]:
    """(protected /api routes, the public page)."""
    gate = CheckGate(check_policy or CheckPolicy())
    api = APIRouter(prefix="/api", dependencies=[Depends(request_guard(gate.policy))])
    public = APIRouter()

    @public.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @api.get("/status")
    async def status():
        return await asyncio.to_thread(service.status)

    @api.get("/checkpoints")
    async def checkpoints():
        rows = await asyncio.to_thread(service.checkpoints)
        current = service.pool.current
        return {"current": current.name if current else None, "checkpoints": rows}

    @api.get("/benchmarks")
    async def benchmarks():
        return {"benchmarks": catalog.names()}

    @api.get("/tasks")
    async def tasks(benchmark: str = Query(..., min_length=1)):
        items = await _run(catalog.tasks, benchmark, what="benchmark")
        return {"benchmark": benchmark, "tasks": [{"task_id": str(t.task_id)} for t in items]}

    @api.get("/task")
    async def task(benchmark: str = Query(..., min_length=1), task_id: str = Query(..., min_length=1),
                   model: str | None = None):
        item = await _run(catalog.get, benchmark, task_id, what="task")
        template = await _template_of(model)
        prompt, stop = catalog.model_prompt(item, template)
        return {"benchmark": benchmark, "task_id": task_id, "prompt": item.prompt, "model_prompt": prompt,
                "stop": stop, "template": template}

    @api.post("/check")
    async def check(request: Request):
        req = await read_body(request, CheckRequest, max_request_bytes)
        item = await _run(catalog.get, req.benchmark, req.task_id, what="task")
        code = catalog.completion_for(req.completion, await _template_of(req.model))
        client = request.client.host if request.client else "?"
        gate.acquire(client)
        try:
            verdict = await _run(catalog.check, req.benchmark, item, code, what="check", pool=gate.pool)
        finally:
            gate.release(client)
        return {**verdict, "code": code}

    async def _template_of(model: str | None) -> str | None:
        return await asyncio.to_thread(service.template_of, model)

    async def _run(fn, *args, what: str, pool: ThreadPoolExecutor | None = None):
        try:
            if pool is not None:
                return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
            return await asyncio.to_thread(fn, *args)
        except TasksUnavailable as e:
            raise ApiError(501, str(e), type="not_implemented", code="eval_unavailable") from None
        except KeyError as e:
            raise ApiError(404, f"unknown {what}: {e.args[0]!r}", param=what, type="not_found_error") from None
        except (UnknownModel, CheckpointRefused) as e:
            raise ApiError(404, str(e), param="model", type="not_found_error") from None

    return api, public
