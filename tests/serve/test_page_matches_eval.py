"""The page's verdict is `raywiz eval`'s: same model, same task, same prompt, text, code and verdict.

Serve (continuous batching, over HTTP) and eval (static-cache batches, in process) both run on
raywiz.inference; the page builds prompts and post-processes with raywiz.eval's own functions."""

from __future__ import annotations

import json

import pytest
import requests

from raywiz.serve.config import ServeConfig
from raywiz.serve.openai_api import build_api
from raywiz.serve.page import build_page_routers
from raywiz.serve.service import ModelService, ServiceSettings
from raywiz.serve.tasks import TaskCatalog

from .conftest import LocalServer, make_checkpoint

MAX_TOKENS = 24


@pytest.mark.parametrize("template", ["wizardcoder", None])  # an instruction model and a completion model
def test_page_verdict_equals_raywiz_eval(tmp_path, shared_data, template):
    from raywiz.eval.config import EvalConfig
    from raywiz.benchmarks.evaluate import evaluate_model

    data = str(shared_data / "humaneval" / "HumanEval.jsonl.gz")
    run_dir = tmp_path / "runs" / "demo"
    hf_dir = make_checkpoint(run_dir, 1, template=template)
    style = "wizardcoder" if template else "completion"
    eval_cfg = EvalConfig(benchmarks=["humaneval"], limit=2, data={"humaneval": data}, prompt={"style": style},
                          generation={"max_tokens": MAX_TOKENS}, output_dir=str(tmp_path / "eval"))
    result = evaluate_model(hf_dir, eval_cfg, in_process=True)
    out = f"{result['out_dir']}/humaneval"
    with open(f"{out}/results.jsonl") as f:
        rows = {r["task_id"]: r for r in map(json.loads, f)}

    cfg = ServeConfig(watch=False, benchmarks={"humaneval": data})
    service = ModelService(ServiceSettings(cfg, str(run_dir), str(run_dir.parent)))
    service.set_checkpoint(cfg.checkpoint)
    api, page = build_page_routers(service, TaskCatalog(cfg.benchmarks), cfg.limits.max_request_bytes)
    try:
        with LocalServer(build_api(service, cfg.limits, extra_routers=[api], public_routers=[page])) as server:
            for task_id, row in rows.items():
                task = requests.get(f"{server.url}/api/task", params={"benchmark": "humaneval", "task_id": task_id}).json()
                assert task["model_prompt"] == row["prompt"]
                body = {"prompt": task["model_prompt"], "max_tokens": MAX_TOKENS, "temperature": 0}
                if task["stop"]:
                    body["stop"] = task["stop"][:4]
                text = requests.post(f"{server.url}/v1/completions", json=body).json()["choices"][0]["text"]
                verdict = requests.post(f"{server.url}/api/check", json={
                    "benchmark": "humaneval", "task_id": task_id, "completion": text}).json()
                assert verdict["code"] == row["completion"], task_id
                assert (verdict["passed"], verdict["result"]) == (row["passed"], row["result"]), task_id
    finally:
        service.close()
