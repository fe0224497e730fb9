"""The HTTP API and the model service over real HTTP (uvicorn on 127.0.0.1), without Ray.

The same FastAPI app runs inside the Ray Serve replica (see test_serve_ray.py for that path).
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import requests

from raywiz.artifacts import EvalDir, RunLayout, write_json_atomic, write_manifest
from raywiz.data.template import format_prompt
from raywiz.serve.config import ServeConfig
from raywiz.serve.openai_api import build_api
from raywiz.serve.page import build_page_routers
from raywiz.serve.service import ModelService, ServiceSettings
from raywiz.serve.tasks import TaskCatalog

from .conftest import LocalServer, make_checkpoint, truncate_weights


def start_service(run_dir, **serve_fields) -> ModelService:
    cfg = ServeConfig(**{"watch": False, **serve_fields})
    service = ModelService(ServiceSettings(cfg, str(run_dir), str(run_dir.parent)))
    service.set_checkpoint(cfg.checkpoint)
    return service


def http_app(service: ModelService, api_key: str | None = None):
    cfg = service.cfg
    api, page = build_page_routers(service, TaskCatalog(cfg.benchmarks), cfg.limits.max_request_bytes)
    return build_api(service, cfg.limits, api_key, extra_routers=[api], public_routers=[page])


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Three checkpoints of one run; the newest is served, at most two stay loaded."""
    run_dir = tmp_path_factory.mktemp("api") / "runs" / "demo"
    for step in (1, 2, 3):
        make_checkpoint(run_dir, step)
    scored = EvalDir(RunLayout(str(run_dir)).eval_dir("checkpoint_00000003", "humaneval"))
    write_json_atomic(scored.summary, {"benchmark": "humaneval", "n_tasks": 164, "pass@1": 0.125})
    scored.seal("f" * 16, "humaneval")  # complete results only: serve checks the manifest
    service = start_service(run_dir, max_models=2)
    with LocalServer(http_app(service)) as server:
        yield server.url, service, run_dir
    service.close()


def sse_events(response) -> list:
    events = []
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith("data: "):
            events.append(line[6:] if line[6:] == "[DONE]" else json.loads(line[6:]))
    return events


def test_completion_streamed_and_whole_agree(served):
    url, _, _ = served
    body = {"prompt": "def add(a, b):", "max_tokens": 12, "temperature": 0}
    whole = requests.post(f"{url}/v1/completions", json=body).json()
    assert whole["model"] == "checkpoint_00000003" and whole["object"] == "text_completion"
    assert whole["usage"]["completion_tokens"] == 12 and whole["choices"][0]["finish_reason"] == "length"

    with requests.post(f"{url}/v1/completions", json={**body, "stream": True}, stream=True) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == whole["choices"][0]["text"]
    assert events[-2]["choices"][0]["finish_reason"] == "length"


def test_chat_applies_the_wizardcoder_template(served):
    url, _, _ = served
    instruction = "Write a function that reverses a string."
    chat = requests.post(f"{url}/v1/chat/completions", json={
        "messages": [{"role": "user", "content": instruction}], "max_tokens": 10, "temperature": 0}).json()
    plain = requests.post(f"{url}/v1/completions", json={
        "prompt": format_prompt(instruction), "max_tokens": 10, "temperature": 0}).json()
    assert chat["object"] == "chat.completion" and chat["choices"][0]["message"]["role"] == "assistant"
    assert chat["choices"][0]["message"]["content"] == plain["choices"][0]["text"]
    assert chat["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"]

    with requests.post(f"{url}/v1/chat/completions", stream=True, json={
            "messages": [{"role": "user", "content": instruction}], "max_tokens": 10, "temperature": 0,
            "stream": True, "n": 2, "stream_options": {"include_usage": True}}) as r:
        events = sse_events(r)
    for index in (0, 1):
        chunks = [e["choices"][0] for e in events[:-2] if e["choices"][0]["index"] == index]
        assert chunks[0]["delta"]["role"] == "assistant"
        assert "".join(c["delta"].get("content", "") for c in chunks) == plain["choices"][0]["text"]
    assert events[-2]["usage"]["completion_tokens"] == 20


@pytest.mark.parametrize("body, status, param", [
    ({"prompt": "x", "max_tokens": 100000}, 400, "max_tokens"),
    ({"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ({"prompt": "x", "n": 50}, 400, "n"),
    ({"prompt": "x", "temperature": -1}, 400, "temperature"),
    ({"prompt": "x", "top_p": 0}, 400, "top_p"),
    ({"prompt": "x", "stop": [f"s{i}" for i in range(17)]}, 400, "stop"),  # serve.limits.max_stop is 16
    ({"prompt": "x", "stop": [""]}, 400, "stop"),
    ({"prompt": ""}, 400, "prompt"),
    ({"prompt": 42}, 400, "prompt"),
    ({"prompt": []}, 400, "prompt"),
    ({"prompt": ["x"] * 65}, 400, "prompt"),  # serve.limits.max_prompts is 64
    ({"prompt": [[5, 99999]]}, 400, "prompt"),  # a token id outside the vocabulary
    ({"prompt": ["a", "b"], "stream": True}, 400, "stream"),
    ({"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),  # 0 only with echo
    ({"prompt": "x", "logprobs": 6}, 400, "logprobs"),
    ({"max_tokens": 3}, 400, "prompt"),
    ({"prompt": "x", "unknown_field": 1}, 400, "unknown_field"),
    ({"prompt": "x", "suffix": "y"}, 400, "suffix"),
    ({"prompt": "x", "model": "checkpoint_99999999"}, 404, "model"),
    ({"prompt": "word " * 5000}, 400, "prompt"),
    ({"prompt": "def f(x): return x", "max_tokens": 1024}, 400, "max_tokens"),  # 1024-token context
])
def test_bad_completion_requests_get_a_4xx_saying_what_is_wrong(served, body, status, param):
    url, _, _ = served
    r = requests.post(f"{url}/v1/completions", json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"].startswith(param) and error["message"]


@pytest.mark.parametrize("raw, status", [
    (b"{not json", 400), (b"[1, 2]", 400), (b"\xff\xfe", 400), (b"", 400),
    (b'{"messages": []}', 400), (b'{"messages": [{"role": "robot", "content": "x"}]}', 400),
    (b'{"messages": [{"role": "assistant", "content": "x"}]}', 400),
    (b'{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}', 400),
    (b'{"messages": "hello"}', 400),
])
def test_bad_chat_bodies_never_get_a_500(served, raw, status):
    url, _, _ = served
    r = requests.post(f"{url}/v1/chat/completions", data=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_oversized_body_and_unknown_route(served):
    url, service, _ = served
    big = json.dumps({"prompt": "x" * (service.cfg.limits.max_request_bytes + 10)})
    r = requests.post(f"{url}/v1/completions", data=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]
    r = requests.get(f"{url}/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


def test_models_list_step_eval_and_lru_bound(served):
    url, service, _ = served
    cards = requests.get(f"{url}/v1/models").json()["data"]
    current = next(c for c in cards if c["current"])
    assert current["id"] == "checkpoint_00000003" and current["step"] == 3
    assert current["eval"] == {"humaneval": 0.125}

    # Older checkpoints load on demand, side by side; the LRU keeps two (never dropping the current one).
    for name in ("checkpoint_00000001", "checkpoint_00000002"):
        r = requests.post(f"{url}/v1/completions", json={"model": name, "prompt": "x", "max_tokens": 2})
        assert r.status_code == 200 and r.json()["model"] == name
    loaded = {c["id"] for c in requests.get(f"{url}/v1/models").json()["data"]}
    assert loaded == {"checkpoint_00000003", "checkpoint_00000002"}
    states = {c["id"]: c["state"] for c in requests.get(f"{url}/api/checkpoints").json()["checkpoints"]}
    assert states == {"checkpoint_00000001": "available", "checkpoint_00000002": "loaded",
                      "checkpoint_00000003": "loaded"}


def test_refuses_truncated_corrupt_and_incompatible_checkpoints(tmp_path):
    run_dir = tmp_path / "runs" / "demo"
    make_checkpoint(run_dir, 1)
    service = start_service(run_dir)
    try:
        truncate_weights(make_checkpoint(run_dir, 2))
        corrupt = make_checkpoint(run_dir, 3)
        size = os.path.getsize(os.path.join(corrupt, "model.safetensors"))
        with open(os.path.join(corrupt, "model.safetensors"), "wb") as f:
            f.write(b"\x00garbage" * (size // 8) + b"\x00" * (size % 8))  # same size: the manifest cannot tell
        incompatible = make_checkpoint(run_dir, 4)
        config = json.loads(open(os.path.join(incompatible, "config.json")).read())
        config["n_embd"] = 128  # the weights were saved for 64
        write_json_atomic(os.path.join(incompatible, "config.json"), config)
        write_manifest(incompatible, kind="hf_export", meta={"step": 4})

        assert service.follow_once() is None
        refused = {r["name"]: r["reason"] for r in service.status()["refused"]}
        assert set(refused) == {"checkpoint_00000002", "checkpoint_00000003", "checkpoint_00000004"}
        assert "manifest says" in refused["checkpoint_00000002"]
        assert "does not load" in refused["checkpoint_00000003"]
        assert "checkpoint_00000004" in refused and ("does not load" in refused["checkpoint_00000004"]
                                                     or "do not match" in refused["checkpoint_00000004"])
        assert service.pool.current.name == "checkpoint_00000001"  # the old model keeps serving

        # Refusals are remembered (not retried every poll) until the checkpoint is rewritten.
        events = len(service.events)
        service.follow_once()
        assert len(service.events) == events
        shutil.rmtree(os.path.dirname(corrupt))
        make_checkpoint(run_dir, 3)
        assert service.follow_once().name == "checkpoint_00000003"
    finally:
        service.close()


def test_bearer_auth_protects_the_api_not_the_page(tmp_path):
    run_dir = tmp_path / "runs" / "demo"
    make_checkpoint(run_dir, 1)
    service = start_service(run_dir)
    try:
        with LocalServer(http_app(service, api_key="s3cret")) as server:
            assert requests.get(f"{server.url}/v1/models").status_code == 401
            r = requests.get(f"{server.url}/api/checkpoints", headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
            ok = requests.get(f"{server.url}/v1/models", headers={"Authorization": "Bearer s3cret"})
            assert ok.status_code == 200 and ok.json()["data"][0]["id"] == "checkpoint_00000001"
            assert requests.get(f"{server.url}/").status_code == 200
            assert requests.get(f"{server.url}/health").json()["model"] == "checkpoint_00000001"
    finally:
        service.close()


def test_any_causal_lm_dir_and_no_model_yet(tmp_path):
    hf = make_checkpoint(tmp_path / "runs" / "other", 5, template=None)
    plain = tmp_path / "my-model"
    shutil.copytree(hf, plain, ignore=shutil.ignore_patterns("manifest.json", "raywiz.json"))
    empty_run = tmp_path / "runs" / "empty"
    empty_run.mkdir(parents=True)

    service = start_service(empty_run, checkpoint=str(plain))
    waiting = start_service(empty_run)
    try:
        with LocalServer(http_app(service)) as server:
            r = requests.post(f"{server.url}/v1/completions", json={"prompt": "def f():", "max_tokens": 3})
            assert r.status_code == 200 and r.json()["model"] == "my-model"
            r = requests.post(f"{server.url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 400 and "chat template" in r.json()["error"]["message"]
        with LocalServer(http_app(waiting)) as server:
            r = requests.post(f"{server.url}/v1/completions", json={"prompt": "x"})
            assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_ready"
    finally:
        service.close()
        waiting.close()


def test_task_routes_prompt_and_check_in_the_sandbox(tmp_path, shared_data):
    run_dir = tmp_path / "runs" / "demo"
    make_checkpoint(run_dir, 1)
    service = start_service(run_dir, benchmarks={"humaneval": str(shared_data / "humaneval" / "HumanEval.jsonl.gz"),
                                                 "mbpp": str(shared_data / "mbpp" / "mbpp.test.jsonl")})
    try:
        with LocalServer(http_app(service)) as server:
            url = server.url
            assert requests.get(f"{url}/api/benchmarks").json()["benchmarks"] == ["humaneval", "mbpp"]
            ids = [t["task_id"] for t in requests.get(f"{url}/api/tasks", params={"benchmark": "humaneval"}).json()["tasks"]]
            assert len(ids) == 164 and ids[0] == "HumanEval/0"
            task = requests.get(f"{url}/api/task", params={"benchmark": "humaneval", "task_id": "HumanEval/0",
                                                            "model": "checkpoint_00000001"}).json()
            # The served model was trained with the WizardCoder template: the prompt is an instruction.
            assert task["template"] == "wizardcoder" and "### Instruction:\nCreate a Python script" in task["model_prompt"]
            # eval's WizardCoder prompting: 4-space indents become tabs (raywiz.benchmarks.prompts)
            assert task["prompt"].replace("    ", "\t") in task["model_prompt"] and task["stop"] == []

            from raywiz.benchmarks import load_tasks

            solution = load_tasks("humaneval", str(shared_data / "humaneval" / "HumanEval.jsonl.gz"))[0].solution
            answer = f"Here is the code:\n```python\n{task['prompt']}{solution}```\nIt works."
            ok = requests.post(f"{url}/api/check", json={"benchmark": "humaneval", "task_id": "HumanEval/0",
                                                          "completion": answer, "model": "checkpoint_00000001"}).json()
            assert ok["passed"] is True and ok["result"] == "passed" and "```" not in ok["code"]
            bad = requests.post(f"{url}/api/check", json={"benchmark": "humaneval", "task_id": "HumanEval/0",
                                                           "completion": "    return 1 / 0\n"}).json()
            assert bad["passed"] is False and "division by zero" in bad["result"]

            r = requests.get(f"{url}/api/task", params={"benchmark": "humaneval", "task_id": "HumanEval/999"})
            assert r.status_code == 404 and "HumanEval/999" in r.json()["error"]["message"]
            r = requests.get(f"{url}/api/tasks", params={"benchmark": "nope"})
            assert r.status_code == 404
            r = requests.get(f"{url}/api/tasks")
            assert r.status_code == 400 and r.json()["error"]["param"] == "benchmark"
            r = requests.post(f"{url}/api/check", json={"benchmark": "mbpp"})
            assert r.status_code == 400 and "task_id" in r.json()["error"]["message"]
    finally:
        service.close()
