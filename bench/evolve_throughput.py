"""Benchmark: raywiz evolve's request engine vs a sequential client, against a 200 ms server.

The public Evol-Instruct scripts send one request at a time. raywiz sends them from a Ray actor with
an async HTTP client (concurrency 64 by default), through the request cache. Both talk to the same
local OpenAI-compatible server (tests.evolve.fake_llm_server, in its own process) that answers
every request after 200 ms and counts requests per key, so the run also checks that every request
was answered exactly once.

    python bench/evolve_throughput.py [--requests 3000] [--concurrency 64] [--latency 0.2]

Writes bench/results/evolve_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from raywiz.evolve.config import LLMConfig  # noqa: E402
from raywiz.evolve.engine import LLMEngine  # noqa: E402
from raywiz.inference.chat import ChatRequest  # noqa: E402

PARAMS = {"temperature": 1.0, "max_tokens": 256}


def start_server(latency: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.evolve.fake_llm_server", "--latency", str(latency)],
                            cwd=REPO, stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=REPO))
    line = proc.stdout.readline().strip()
    if not line.startswith("READY "):
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    return proc, line.split(" ", 1)[1]


def server_stats(base_url: str) -> dict:
    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/_stats") as resp:
        return json.load(resp)


def make_requests(tag: str, n: int) -> list[ChatRequest]:
    return [ChatRequest.of("bench", f"[{tag} {i}] Write a Python function that adds {i} to its argument.", PARAMS)
            for i in range(n)]


def sequential_reference(base_url: str, requests: list[ChatRequest]) -> float:
    """One request at a time, as the public evol scripts do. Returns requests/s."""
    start = time.perf_counter()
    for req in requests:
        body = json.dumps({"model": req.model, "messages": list(req.messages), **req.params}).encode()
        http = urllib.request.Request(base_url + "/chat/completions", data=body,
                                      headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(http, timeout=30) as resp:
            json.load(resp)["choices"][0]["message"]["content"]
    return len(requests) / (time.perf_counter() - start)


def lost_or_repeated(stats: dict, requests: list[ChatRequest], answers: dict) -> int:
    counts = stats["requests_by_key"]
    completed = stats["completed_by_key"]
    lost = sum(1 for r in requests if not (r.key in answers and answers[r.key].ok) or completed.get(r.key, 0) == 0)
    repeated = sum(max(0, counts.get(r.key, 0) - 1) for r in requests)
    return lost + repeated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--reference-requests", type=int, default=25)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--machine", default="2-core CPU dev machine")
    parser.add_argument("--out", default=os.path.join(REPO, "bench", "results", "evolve_throughput.json"))
    args = parser.parse_args()

    server, base_url = start_server(args.latency)
    try:
        reference_rps = sequential_reference(base_url, make_requests("reference", args.reference_requests))

        import ray

        ray.init(include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": REPO}})
        cfg = LLMConfig(base_url=base_url, model="bench", api_key_env=None, concurrency=args.concurrency,
                        num_workers=1, timeout_s=30)
        with tempfile.TemporaryDirectory() as cache_dir, LLMEngine(cfg, cache_dir, show_progress=False) as engine:
            engine.run(make_requests("warmup", args.concurrency), "warm-up")  # start the worker, open connections
            requests = make_requests("raywiz", args.requests)
            start = time.perf_counter()
            answers = engine.run(requests, "raywiz")
            seconds = time.perf_counter() - start
        raywiz_rps = len(requests) / seconds
        stats = server_stats(base_url)
        bad = lost_or_repeated(stats, requests, answers)
    finally:
        server.terminate()
        server.wait(10)

    result = {
        "raywiz_requests_per_s": round(raywiz_rps, 2),
        "reference_requests_per_s": round(reference_rps, 3),
        "speedup": round(raywiz_rps / reference_rps, 2),
        "requests_lost_or_repeated": bad,
        "requests": args.requests,
        "reference_requests": args.reference_requests,
        "concurrency": args.concurrency,
        "server_latency_s": args.latency,
        "ideal_requests_per_s": round(args.concurrency / args.latency, 2),
        "raywiz_seconds": round(seconds, 3),
        "machine": args.machine,
        "cpu_count": os.cpu_count(),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),  # other work on the machine slows both clients
        "python": platform.python_version(),
        "notes": "raywiz: 1 Ray actor (async aiohttp client) through the request cache, worker warm-up excluded; "
                 "reference: urllib, one request at a time; server: tests.evolve.fake_llm_server in its own process",
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
