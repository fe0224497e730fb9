"""The interactive evaluation page and the small JSON API behind it (/api/...).

The page itself (web/index.html) is static and talks to the same OpenAI routes any client uses,
so what it shows is what the API serves. The /api routes add what OpenAI's API has no words for:
the run's checkpoints and their state, benchmark tasks, and running a task's tests.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field

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


def build_page_routers(service: ModelService, catalog: TaskCatalog, max_request_bytes: int
                       ) -> tuple[APIRouter, APIRouter]:
    """(protected /api routes, the public page)."""
    api = APIRouter(prefix="/api")
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
        verdict = await _run(catalog.check, req.benchmark, item, code, what="check")
        return {**verdict, "code": code}

    async def _template_of(model: str | None) -> str | None:
        return await asyncio.to_thread(service.template_of, model)

    async def _run(fn, *args, what: str):
        try:
            return await asyncio.to_thread(fn, *args)
        except TasksUnavailable as e:
            raise ApiError(501, str(e), type="not_implemented", code="eval_unavailable") from None
        except KeyError as e:
            raise ApiError(404, f"unknown {what}: {e.args[0]!r}", param=what, type="not_found_error") from None
        except (UnknownModel, CheckpointRefused) as e:
            raise ApiError(404, str(e), param="model", type="not_found_error") from None

    return api, public
