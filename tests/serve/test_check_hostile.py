"""Serve's /api/check runs code: a foreign web page (CSRF, DNS rebinding), an unauthenticated client
beyond loopback, a nested body and a flood of slow checks must all be turned away (issue 13); so must
they on every route that runs the model or reads its state, and so must slow headers (issue 20)."""

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
    return LocalServer(build_api(service, cfg.limits, api_key, extra_routers=[api], public_routers=[page],
                                 policy=policy))


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


# ----------------------------------------------------------------------------- issue 20: every route

PROMPT = {"prompt": "def add(a, b):", "max_tokens": 2}
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def test_blind_cross_origin_posts_never_run_the_model(service):
    with server(service, CheckPolicy()) as s:
        url = s.url
        assert requests.post(f"{url}/v1/completions", json=PROMPT).status_code == 200  # control
        assert requests.post(f"{url}/v1/completions", json=PROMPT, headers={"Origin": url}).status_code == 200
        for route, body in (("/v1/completions", PROMPT), ("/v1/chat/completions", CHAT), ("/api/check", CHECK)):
            # A form or text/plain post needs no CORS preflight: a page can send it blind.
            for content_type in ("text/plain", "application/x-www-form-urlencoded"):
                r = requests.post(f"{url}{route}", data=json.dumps(body),
                                  headers={"Content-Type": content_type, "Origin": "https://evil.example"})
                assert r.status_code in (403, 415) and "choices" not in r.text, (route, r.status_code, r.text)
            # Same body type, no Origin (e.g. a sandboxed iframe's opaque one sends "null"):
            r = requests.post(f"{url}{route}", data=json.dumps(body), headers={"Content-Type": "text/plain"})
            assert r.status_code == 415, (route, r.status_code)
            r = requests.post(f"{url}{route}", json=body, headers={"Origin": "null"})
            assert r.status_code == 403, (route, r.status_code)


def test_a_foreign_host_is_refused_on_every_route(service):
    """DNS rebinding: the attacker's name resolves to 127.0.0.1, so the page is same-origin to it."""
    with server(service, CheckPolicy()) as s:
        foreign = {"Host": f"evil.example:{s.port}"}
        for method, route, body in (("GET", "/v1/models", None), ("POST", "/v1/completions", PROMPT),
                                    ("POST", "/v1/chat/completions", CHAT), ("GET", "/api/status", None),
                                    ("GET", "/api/checkpoints", None), ("GET", "/api/benchmarks", None),
                                    ("POST", "/api/check", CHECK)):
            r = requests.request(method, f"{s.url}{route}", json=body, headers=foreign)
            assert r.status_code == 403 and "Host" in r.json()["error"]["message"], (route, r.status_code)
            assert requests.request(method, f"{s.url}{route}", json=body).status_code == 200, route  # control


def test_beyond_loopback_the_model_needs_a_token_too(service):
    with server(service, CheckPolicy(bind_host="0.0.0.0", allowed_hosts=["127.0.0.1"])) as s:
        r = requests.post(f"{s.url}/v1/completions", json=PROMPT)
        assert r.status_code == 403 and "api_key_env" in r.json()["error"]["message"]
        assert requests.get(f"{s.url}/v1/models").status_code == 200  # reading the list runs nothing
    with server(service, CheckPolicy(bind_host="0.0.0.0", has_token=True), api_key="s3cret") as s:
        assert requests.post(f"{s.url}/v1/completions", json=PROMPT).status_code == 401
        r = requests.post(f"{s.url}/v1/completions", json=PROMPT, headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200


def test_slow_headers_time_out(service, monkeypatch):
    """A client that sends its headers a byte at a time is cut off; others are served meanwhile."""
    import socket

    from raywiz.serve import http_server

    with server(service, CheckPolicy()) as s:
        for cls in http_server._INSTALLED.values():
            monkeypatch.setattr(cls, "header_timeout_s", 1.0)
        slow = socket.create_connection(("127.0.0.1", s.port))
        request = f"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1:{s.port}\r\nX-Pad: {'a' * 200}\r\n\r\n".encode()
        started, cut = time.monotonic(), False
        try:
            for byte in request:
                slow.sendall(bytes([byte]))
                if byte == ord("\n"):  # meanwhile, other clients are served
                    assert requests.get(f"{s.url}/v1/models", timeout=10).status_code == 200
                slow.settimeout(0.25)
                try:
                    if slow.recv(1024) == b"":
                        cut = True
                        break
                except socket.timeout:
                    pass
                if time.monotonic() - started > 30:
                    break
        except OSError:  # reset by the server
            cut = True
        finally:
            slow.close()
        assert cut and time.monotonic() - started < 30


def test_ray_serves_proxy_gets_the_header_deadline_through_its_callback():
    """Ray Serve's proxy builds the callback's middlewares before it starts uvicorn: building ours
    switches uvicorn's protocols in that process to the ones with the deadline."""
    import uvicorn.config
    from uvicorn.importer import import_from_string

    from raywiz.serve.http_server import PROXY_CALLBACK, HeaderTimeout, proxy_middlewares

    assert import_from_string(PROXY_CALLBACK) is proxy_middlewares
    [middleware] = proxy_middlewares()
    assert middleware.cls is HeaderTimeout
    HeaderTimeout(app=None)
    for name in ("auto", "h11"):
        assert hasattr(import_from_string(uvicorn.config.HTTP_PROTOCOLS[name]), "header_timeout_s"), name
