"""Serve's /api/check runs code: a foreign web page (CSRF, DNS rebinding), an unauthenticated client
beyond loopback, a nested body and a flood of slow checks must all be turned away (issue 13)."""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests

from raywiz.serve.openai_api import build_api
from raywiz.serve.page import CheckPolicy, build_page_routers
from raywiz.serve.tasks import TaskCatalog

from .conftest import LocalServer, make_checkpoint
from .test_api import start_service


@pytest.fixture(scope="module")
def service(tmp_path_factory, shared_data):
    run_dir = tmp_path_factory.mktemp("check") / "runs" / "demo"
    make_checkpoint(run_dir, 1)
    svc = start_service(run_dir, benchmarks={"humaneval": str(shared_data / "humaneval" / "HumanEval.jsonl.gz")})
    yield svc
    svc.close()


def server(service, policy: CheckPolicy, api_key: str | None = None) -> LocalServer:
    cfg = service.cfg
    api, page = build_page_routers(service, TaskCatalog(cfg.benchmarks), cfg.limits.max_request_bytes, policy)
    return LocalServer(build_api(service, cfg.limits, api_key, extra_routers=[api], public_routers=[page]))


CHECK = {"benchmark": "humaneval", "task_id": "HumanEval/0", "completion": "    return False\n"}
SLOW = {**CHECK, "completion": "    import time\n    time.sleep(30)\n"}


def test_foreign_pages_cannot_post_checks(service):
    with server(service, CheckPolicy(allowed_origins=["https://lab.example"])) as s:
        url = s.url
        ok = requests.post(f"{url}/api/check", json=CHECK)
        assert ok.status_code == 200 and ok.json()["passed"] is False
        # CSRF: a form or text/plain post needs no CORS preflight, so it must not be accepted at all.
        r = requests.post(f"{url}/api/check", data=json.dumps(CHECK),
                          headers={"Content-Type": "text/plain", "Origin": "https://evil.example"})
        assert r.status_code in (403, 415)
        r = requests.post(f"{url}/api/check", json=CHECK, headers={"Origin": "https://evil.example"})
        assert r.status_code == 403 and "Origin" in r.json()["error"]["message"]
        assert requests.post(f"{url}/api/check", json=CHECK, headers={"Origin": url}).status_code == 200
        assert requests.post(f"{url}/api/check", json=CHECK,
                             headers={"Origin": "https://lab.example"}).status_code == 200
        # DNS rebinding: the page's origin is the attacker's name, which reaches this port.
        r = requests.post(f"{url}/api/check", json=CHECK,
                          headers={"Host": f"evil.example:{s.port}", "Origin": f"http://evil.example:{s.port}"})
        assert r.status_code == 403 and "Host" in r.json()["error"]["message"]
        # A nested body is a client error, not a 500.
        r = requests.post(f"{url}/api/check", data="[" * 100_000 + "]" * 100_000,
                          headers={"Content-Type": "application/json"})
        assert r.status_code == 400


def test_beyond_loopback_a_token_is_required(service):
    with server(service, CheckPolicy(bind_host="0.0.0.0", allowed_hosts=["127.0.0.1"])) as s:
        r = requests.post(f"{s.url}/api/check", json=CHECK)
        assert r.status_code == 403 and "api_key_env" in r.json()["error"]["message"]
    policy = CheckPolicy(bind_host="0.0.0.0", has_token=True)
    with server(service, policy, api_key="s3cret") as s:
        assert requests.post(f"{s.url}/api/check", json=CHECK).status_code == 401
        r = requests.post(f"{s.url}/api/check", json=CHECK, headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200


def test_slow_checks_are_bounded_and_never_block_the_api(service):
    with server(service, CheckPolicy(per_client=2, workers=2)) as s:
        results: list = []
        threads = [threading.Thread(target=lambda: results.append(requests.post(f"{s.url}/api/check", json=SLOW)))
                   for _ in range(8)]
        for t in threads:
            t.start()
        # Wait until the over-limit ones were refused (the bounded ones are still running).
        deadline = time.monotonic() + 60
        while sum(r.status_code == 429 for r in results) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sum(r.status_code == 429 for r in results) == 6
        assert requests.get(f"{s.url}/api/status").status_code == 200
        assert requests.get(f"{s.url}/v1/models").status_code == 200
        running = sum(t.is_alive() for t in threads)
        for t in threads:
            t.join()
        assert running == 2  # the two admitted checks were still running while the API answered
        done = [r.json() for r in results if r.status_code == 200]
        assert len(done) == 2 and all(d["result"] == "timed out" for d in done)
