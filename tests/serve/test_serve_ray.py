"""The Ray Serve app on a real local Ray cluster: hot swap under load, refusal, in-place reconfigure."""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests

from .conftest import latest_step, make_checkpoint

pytestmark = pytest.mark.slow

CLIENTS = 16


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def status(url: str) -> dict:
    return requests.get(f"{url}/api/status", timeout=10).json()


class Client(threading.Thread):
    """Sends completions back to back (alternating streamed and whole) and records each outcome."""

    def __init__(self, url: str, index: int, stop: threading.Event):
        super().__init__(daemon=True)
        self.url, self.index, self.stop = url, index, stop
        self.results: list[dict] = []  # {start, end, model, error}

    def run(self):
        session = requests.Session()
        n = 0
        while not self.stop.is_set():
            n += 1
            stream = (n + self.index) % 2 == 0
            body = {"prompt": f"def task_{self.index}_{n}(x):", "max_tokens": 8, "temperature": 0, "stream": stream}
            start = time.time()
            model, error = None, None
            try:
                r = session.post(f"{self.url}/v1/completions", json=body, stream=stream, timeout=60)
                if r.status_code != 200:
                    error = f"HTTP {r.status_code}: {r.text[:200]}"
                elif stream:
                    lines = [ln for ln in r.iter_lines(decode_unicode=True) if ln.startswith("data: ")]
                    if lines[-1] != "data: [DONE]" or any('"error"' in ln for ln in lines):
                        error = f"bad stream: {lines[-2:]}"
                    model = json.loads(lines[0][6:])["model"]
                else:
                    model = r.json()["model"]
            except Exception as e:  # a dropped connection is a failed request too
                error = f"{type(e).__name__}: {e}"
            self.results.append({"start": start, "end": time.time(), "model": model, "error": error})


def test_hot_swap_under_concurrent_load_fails_nothing_and_refuses_truncated(serve_app):
    url, run_dir = serve_app.url, serve_app.run_dir
    step = latest_step(run_dir)
    old, new = f"checkpoint_{step:08d}", f"checkpoint_{step + 1:08d}"
    wait_for(lambda: status(url)["current"] == old, 60, f"{old} to be served")
    stop = threading.Event()
    clients = [Client(url, i, stop) for i in range(CLIENTS)]
    for c in clients:
        c.start()
    try:
        wait_for(lambda: all(c.results for c in clients), 60, "every client to finish a request")

        make_checkpoint(run_dir, step + 1)  # lands while 16 clients keep sending
        wait_for(lambda: status(url)["current"] == new, 60, f"{new} to be served")
        swapped_at = next(e["at"] for e in status(url)["events"] if e["event"] == "loaded" and e["id"] == new)
        wait_for(lambda: all(sum(r["start"] > swapped_at + 0.5 for r in c.results) >= 2 for c in clients), 60,
                 "every client to get answers after the swap")

        make_checkpoint(run_dir, step + 2, truncated=True)
        refused = wait_for(lambda: [r for r in status(url)["refused"] if r["name"] == f"checkpoint_{step + 2:08d}"],
                           30, "the truncated checkpoint to be refused")
        assert "manifest says" in refused[0]["reason"]
        after_refusal = time.time()
        wait_for(lambda: all(any(r["start"] > after_refusal for r in c.results) for c in clients), 60,
                 "answers after the refusal")
    finally:
        stop.set()
        for c in clients:
            c.join(timeout=60)

    results = [r for c in clients for r in c.results]
    failed = [r for r in results if r["error"]]
    assert failed == [], f"{len(failed)} of {len(results)} requests failed, e.g. {failed[:3]}"
    assert len(results) >= 4 * CLIENTS
    # Requests that began after the swap are answered by the new checkpoint; the refused one never answers.
    assert {r["model"] for r in results if r["start"] > swapped_at + 0.05} == {new}
    assert {r["model"] for r in results if r["end"] < swapped_at} == {old}
    for c in clients:  # per client: old answers, then new ones, never back
        models = [r["model"] for r in sorted(c.results, key=lambda r: r["start"])]
        assert set(models[models.index(new):]) == {new}
    assert status(url)["current"] == new


def test_cli_with_another_checkpoint_reconfigures_the_running_replica(serve_app):
    from raywiz.cli import main
    from raywiz.serve.app import run_serve

    url, run_dir = serve_app.url, serve_app.run_dir
    if latest_step(run_dir) < 2:
        make_checkpoint(run_dir, latest_step(run_dir) + 1)
    newest = f"checkpoint_{latest_step(run_dir):08d}"
    before = wait_for(lambda: (s := status(url))["current"] == newest and s, 60, f"{newest} to be served")
    old_hf = str(run_dir / "train" / "checkpoint_00000001" / "hf")
    started = time.monotonic()
    assert main(["serve", str(serve_app.job_path), "--checkpoint", old_hf, "--detach"]) == 0
    reconfigure_s = time.monotonic() - started
    after = wait_for(lambda: (s := status(url))["current"] == "checkpoint_00000001" and s, 30, "the pinned checkpoint")
    assert after["pid"] == before["pid"] and after["started"] == before["started"]  # same replica, not restarted
    assert after["pinned"] == old_hf and not after["watching"]
    r = requests.post(f"{url}/v1/completions", json={"prompt": "x", "max_tokens": 2})
    assert r.json()["model"] == "checkpoint_00000001"
    assert reconfigure_s < 30

    # Unpinned again (no --checkpoint): back to following the run's newest complete checkpoint.
    run_serve(serve_app.job, blocking=False)
    wait_for(lambda: status(url)["current"] == newest, 30, "following the run again")
    assert status(url)["pid"] == before["pid"]
