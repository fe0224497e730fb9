"""Benchmark: raywiz evolve's request engine vs a sequential client, against a 200 ms server; and the
verify step (tests + candidate answers from the LLM, run in the sandbox on the Ray cluster).

The public Evol-Instruct scripts send one request at a time. raywiz sends them from a Ray actor with
an async HTTP client (concurrency 64 by default), through the request cache. Both talk to the same
local OpenAI-compatible server (tests.evolve.fake_llm_server, in its own process) that answers
every request after 200 ms and counts requests per key, so the run also checks that every request
was answered exactly once.

The verify workload (`verify` in the JSON) takes `--verify-instructions` evolved instructions through
one round's answer step three ways, each with its own request cache (so each sends all its requests):
`answer` (WizardCoder's one response per instruction, no verification), `verify_llm_only` (the verify
step's requests alone: 1 tests + `answers` answers per instruction) and `verify` (the whole step:
those requests, with each instruction's sandbox runs started as soon as its answers are in). The
sandbox's cost to a round is what `verify` takes beyond `verify_llm_only` (the sandbox time that the
LLM waiting did not hide), against a round of evolve + verify requests; the round's evolve step is
timed as one request per instruction. The target (issue #22): at most 20% when the sandbox is not the
bottleneck, i.e. when the sandbox's own rate keeps up with the answers' arrival
(`sandbox_keeps_up`).

    python bench/evolve_throughput.py [--requests 3000] [--concurrency 64] [--latency 0.2]
                                      [--verify-instructions 40] [--verify-concurrency 2]

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
# This process's children and Ray workers import raywiz from here, and keep the rest (where ray may live).
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
sys.path.insert(0, REPO)

from raywiz.evolve.config import EvolveConfig, LLMConfig  # noqa: E402
from raywiz.evolve.engine import LLMEngine  # noqa: E402
from raywiz.evolve.rounds import answer  # noqa: E402
from raywiz.evolve.samples import Sample  # noqa: E402
from raywiz.evolve.verify import Verifier, candidate_of  # noqa: E402
from raywiz.inference.chat import ChatRequest  # noqa: E402

PARAMS = {"temperature": 1.0, "max_tokens": 256}


def start_server(latency: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.evolve.fake_llm_server", "--latency", str(latency)],
                            cwd=REPO, stdout=subprocess.PIPE, text=True)
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


def verify_samples(tag: str, n: int) -> list[Sample]:
    return [Sample(f"{tag}-{i}", f"[{tag} {i}] Write a Python function that sorts a list of numbers, variant {i}.",
                   "", "", 1, "add_constraints", None, "bench", None) for i in range(n)]


def verify_workload(base_url: str, n: int, concurrency: int, answers: int, tests: int) -> dict:
    """One round's answer step, unverified vs verified (see the module docstring); seconds and rates."""
    llm = LLMConfig(base_url=base_url, model="bench", api_key_env=None, concurrency=concurrency, num_workers=1,
                    timeout_s=30)
    cfg = EvolveConfig(seeds={"paths": ["unused"]}, llm=llm, verify={"answers": answers, "tests_per_task": tests})
    timings, out = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("evolve_like", "answer", "verify_llm_only", "verify"):
            with LLMEngine(llm, os.path.join(tmp, mode), show_progress=False) as engine:
                engine.run(make_requests(f"warmup-{mode}", concurrency), "warm-up")
                samples = verify_samples(mode, n)
                verifier = Verifier(cfg, os.path.join(tmp, mode, "verdicts")) if mode == "verify" else None
                start = time.perf_counter()
                if mode == "evolve_like":  # a round's evolve step: one request per instruction
                    engine.run(make_requests("evolve", n), "evolve")
                elif mode == "answer":
                    answer(samples, cfg, engine, "answer")
                elif mode == "verify_llm_only":
                    requests = [r for s in samples for c in [candidate_of(cfg, s)]
                                for r in (c.tests_request, *c.answer_requests)]
                    engine.run(requests, "verify requests")
                else:
                    kept, dropped = verifier.run(samples, engine, 1)
                    verifier.close()
                    out = {"kept": len(kept), "dropped": len(dropped), **verifier.report()["sandbox"]}
                timings[mode] = time.perf_counter() - start
    evolve_s, verify_s, llm_only_s = timings["evolve_like"], timings["verify"], timings["verify_llm_only"]
    sandbox_rate = out["executions"] / out["busy_s"] if out["busy_s"] else None
    return {
        "instructions": n, "answers_per_instruction": answers, "tests_per_instruction": tests,
        "concurrency": concurrency,
        "seconds": {k: round(v, 3) for k, v in timings.items()},
        "verified_rows": out["kept"],
        "verified_rows_per_s": round(out["kept"] / verify_s, 2),
        "sandbox_executions": out["executions"],
        "sandbox_where": out["where"],
        "sandbox_waited_after_llm_s": out["waited_after_llm_s"],
        "sandbox_executions_per_busy_s": round(sandbox_rate, 2) if sandbox_rate else None,
        # The target: the sandbox's cost to a round (evolve + verify), beyond the verify requests themselves.
        "sandbox_added_to_round_fraction": round((verify_s - llm_only_s) / (evolve_s + llm_only_s), 3),
        # For scale: the whole verify step (its extra requests and the sandbox) against an unverified round.
        "verify_added_to_round_fraction": round((verify_s - timings["answer"]) / (evolve_s + timings["answer"]), 3),
        "sandbox_keeps_up": bool(sandbox_rate and sandbox_rate >= out["executions"] / llm_only_s),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--reference-requests", type=int, default=25)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--verify-instructions", type=int, default=40)
    # Low, so that on a 2-core machine the sandbox (~5 runs/s there) keeps up with the answers' arrival.
    parser.add_argument("--verify-concurrency", type=int, default=2)
    parser.add_argument("--verify-answers", type=int, default=4)
    parser.add_argument("--verify-tests", type=int, default=5)
    parser.add_argument("--machine", default="2-core CPU dev machine")
    parser.add_argument("--out", default=os.path.join(REPO, "bench", "results", "evolve_throughput.json"))
    args = parser.parse_args()

    server, base_url = start_server(args.latency)
    try:
        reference_rps = sequential_reference(base_url, make_requests("reference", args.reference_requests))

        import ray

        # One CPU for the LLM actor besides the cores, which the verify workload's sandbox workers take.
        ray.init(num_cpus=(os.cpu_count() or 1) + 1, include_dashboard=False,
                 runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}})
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
        verify = verify_workload(base_url, args.verify_instructions, args.verify_concurrency, args.verify_answers,
                                 args.verify_tests)
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
        "verify": verify,
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
