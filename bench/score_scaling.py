"""Scoring scaling: sandbox executions per second of the distributed scorer, 1 to 16 workers.

HumanEval+ samples, canonical and wrong mixed (every other sample is a wrong variant: wrong outputs
on some inputs, or an exception at import), are scored on one Ray cluster (a local one with one
logical CPU per core, or --address) by raywiz.benchmarks.cluster_scoring with 1, 2, 4, 8, 16 sandbox
workers, the same samples each time; the workers start before the clock starts. The baseline is the
single-process scorer that `raywiz eval score` runs without a cluster (score_samples, one worker),
timed in this process; `eval_score_cli_executions_per_s` is the command itself (`--workers 1`),
process start and loading included.
Ground truth is computed once first (cached), so every timed run has warm caches.
Before the cluster runs, `sandbox_starts_per_s`: bare sandbox starts (`x = 1`) per second with 1..16
processes starting them at once, with every isolation layer, without the per-sample cgroup, and
without namespaces: what a sample's isolation costs and whether the kernel serializes it.

Two sample sets per task by default (--repeat): with one, 16 workers finish in about 6 s and the
last of HumanEval/15's ~4 s samples ends the run. Per worker count, `schedule_bound` says what the
dispatch order alone allows (each sample's 1-worker time replayed through it, no contention), and
`single_process_cpus_per_worker` what one worker keeps busy (evaluator and sandbox together), and
`pure_python_efficiency` the machine's own ceiling: a plain Python loop in 1..16 processes at once.

Writes bench/results/score_scaling.json: machine, cpus, load averages, single_process_executions_per_s,
workers: {"1": {"executions_per_s", "seconds", "efficiency", "schedule_bound"}, ...} (efficiency =
rate / (n x rate of 1 worker)), single_worker_vs_single_process (1-worker rate / single-process rate),
and whether every run gave the same verdicts. Needs the data (`raywiz data fetch`); no GPU.

    python bench/score_scaling.py                                   # 1,2,4,8,16 workers, all 164 tasks
    python bench/score_scaling.py --workers 1,2 --tasks 20 --machine "2-core dev machine" \
        --out bench/results/score_scaling_2core.json                # a quick check on a small machine
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# This process's children and Ray workers import raywiz from here, and keep the rest (where ray may live).
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
sys.path.insert(0, str(REPO))

from raywiz.benchmarks import load_tasks  # noqa: E402
from raywiz.benchmarks.cluster_scoring import ClusterScorer  # noqa: E402
from raywiz.benchmarks.score import expected_seconds, score_samples  # noqa: E402
from raywiz.eval.config import EvalConfig  # noqa: E402


def mixed_samples(tasks, repeat: int) -> list[dict]:
    """Per task and repeat: the canonical solution and one wrong variant (alternating kinds)."""
    rows = []
    for r in range(repeat):
        for i, t in enumerate(tasks):
            ref = t.prompt + t.solution
            wrong = (ref + f"\n_ref = {t.entry_point}\ndef {t.entry_point}(*args):\n    out = _ref(*args)\n"
                     "    return None if len(repr(args)) % 3 == 0 else out\n") if (i + r) % 2 == 0 else \
                "raise RuntimeError('broken at import')\n" + ref
            rows += [{"task_id": t.task_id, "solution": ref}, {"task_id": t.task_id, "solution": wrong}]
    return rows


def time_eval_score_cli(samples: list[dict], partial: bool) -> float:
    """Wall time of `raywiz eval score --workers 1` on the samples, as a user runs it (process start,
    loading the tasks and the ground truth included)."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "samples.jsonl")
        with open(path, "w") as f:
            f.writelines(json.dumps(s) + "\n" for s in samples)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "raywiz.cli", "eval", "score", "--benchmark", "humaneval+", path,
                        "--workers", "1", "--json", "--out", tmp, *(["--partial"] if partial else [])],
                       check=True, capture_output=True, cwd=REPO, env={**os.environ, "RAY_ADDRESS": ""})
        return time.perf_counter() - started


STARTUP_VARIANTS = {  # which isolation layers a bare sandbox start pays for (SandboxSettings' switches)
    "full": {},
    "no_cgroup": {"cgroup": False},
    "no_namespaces": {"namespaces": False},
}


def _sandbox_starts(settings_fields: dict, sessions: int) -> float:
    """In a fresh process: start and close `sessions` sandboxes (each runs `x = 1`); their rate per second."""
    from raywiz.benchmarks.sandbox import SandboxSettings
    from raywiz.benchmarks.sandbox.session import CandidateSession

    settings = SandboxSettings(**settings_fields)
    with CandidateSession(settings) as session:  # warm-up: imports, the working-directory root
        session.exec("x = 1", timeout_s=10)
    started = time.perf_counter()
    for _ in range(sessions):
        with CandidateSession(settings) as session:
            session.exec("x = 1", timeout_s=10)
    return sessions / (time.perf_counter() - started)


def at_once(n: int, fn, *args) -> list:
    """fn(*args) in n fresh processes at the same time; their results."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    with ProcessPoolExecutor(n, mp_context=get_context("spawn")) as pool:
        return list(pool.map(fn, *([arg] * n for arg in args)))


def startup_scaling(base: dict, counts: list[int], sessions: int) -> dict:
    """Bare sandbox starts per second with n processes starting them at once, per isolation variant:
    what one sample's isolation costs, and whether the kernel serializes it (the rate stops growing
    with n while the CPUs are not all busy)."""
    out = {}
    for name, change in STARTUP_VARIANTS.items():
        fields = {**base, **change}
        rates = {}
        for n in counts:
            try:
                rates[str(n)] = round(sum(at_once(n, _sandbox_starts, fields, sessions)), 2)
            except Exception as e:  # a layer this machine refuses to run without: say so, go on
                rates[str(n)] = f"{type(e).__name__}: {e}"[:200]
                break
        out[name] = rates
        print(f"sandbox starts/s, {name}: {rates}", flush=True)
    return out


def schedule_bound(seconds: list[float], expected: list[float], workers: int, in_flight: int = 2) -> float:
    """The efficiency `workers` could reach on these samples with no contention at all: the scorer's
    dispatch (longest expected first, each worker holding up to `in_flight`, the least loaded served
    first) replayed on each sample's own 1-worker time. A short run ends with its longest samples, so
    this is below 1 when a few samples are a large part of the work."""
    import heapq

    order = sorted(range(len(seconds)), key=lambda i: -expected[i])
    free_at = [0.0] * workers  # when each worker's queue drains
    queued = [0] * workers
    ends: list[tuple[float, int]] = []  # (finish time, worker) of samples in flight
    now, last = 0.0, 0.0
    for i in order:
        while min(queued) >= in_flight:  # every worker full: wait for the next sample to finish
            now, w = heapq.heappop(ends)
            queued[w] -= 1
        w = min(range(workers), key=lambda k: queued[k])
        start = max(now, free_at[w])
        free_at[w] = start + seconds[i]
        queued[w] += 1
        heapq.heappush(ends, (start + seconds[i], w))
        last = max(last, start + seconds[i])
    return round(sum(seconds) / (workers * last), 3) if last else 1.0


def busy_cpu_seconds() -> float:
    """CPU seconds this machine has spent busy (/proc/stat): evaluator, sandboxes and whatever the
    sandboxes' PID namespaces reap, which a parent's rusage misses."""
    try:
        fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _spin(seconds: float) -> float:
    """Pure-Python work for about `seconds` (after a warm-up); loop iterations per second."""
    def work(n: int) -> int:
        total = 0
        for i in range(n):
            total += i * i % 7
        return total

    work(200_000)
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        work(100_000)
        n += 100_000
    return n / (time.perf_counter() - started)


def cpu_scaling(counts: list[int], seconds: float = 2.0) -> dict:
    """The machine's own ceiling: the same pure-Python loop in n processes at once, its efficiency
    against one (no sandbox, no Ray). Shared cores (hyper-threads), one core's turbo and the
    hypervisor show here; a scorer cannot scale better than this."""
    rates = {n: sum(at_once(n, _spin, seconds)) for n in counts}
    out = {str(n): round(rate / (n * rates[counts[0]] / counts[0]), 3) for n, rate in rates.items()}
    print(f"pure-Python loop, efficiency by processes: {out}", flush=True)
    return out


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="1,2,4,8,16", help="worker counts, comma-separated")
    ap.add_argument("--tasks", type=int, default=None, help="only the first N HumanEval+ tasks")
    ap.add_argument("--repeat", type=int, default=2,
                    help="sample sets per task (default 2: with one, 16 workers finish in ~6 s, bounded by "
                         "HumanEval/15's ~4 s samples; schedule_bound in the JSON)")
    ap.add_argument("--address", default=None, help="a running Ray cluster (default: start a local one)")
    ap.add_argument("--machine", default=None, help="how to name this machine in the results")
    ap.add_argument("--startup-sessions", type=int, default=24,
                    help="sandbox starts per process in the startup phase (0: skip that phase)")
    ap.add_argument("--out", default=str(REPO / "bench/results/score_scaling.json"))
    args = ap.parse_args()
    counts = [int(n) for n in args.workers.split(",")]

    import ray

    tasks = load_tasks("humaneval+")[: args.tasks]
    samples = mixed_samples(tasks, args.repeat)
    by_id = {t.task_id: t for t in tasks}
    settings = EvalConfig().score_settings()
    settings.workers = 1
    load_before = os.getloadavg()

    # Ground truth into the cache (untimed), then the single-process baseline: `raywiz eval score`'s path.
    started = time.perf_counter()
    warm = score_samples("humaneval+", tasks, samples[:2 * len(tasks)], EvalConfig().score_settings())
    warm_s = time.perf_counter() - started
    started, cpu_before = time.perf_counter(), busy_cpu_seconds()
    single = score_samples("humaneval+", tasks, samples, settings)
    single_s = time.perf_counter() - started
    cpu_per_execution = (busy_cpu_seconds() - cpu_before) / len(samples)
    single_rate = len(samples) / single_s
    print(f"single process: {single_rate:.2f} executions/s ({single_s:.1f} s)", flush=True)
    cli_s = time_eval_score_cli(samples, args.tasks is not None)
    print(f"raywiz eval score --workers 1: {len(samples) / cli_s:.2f} executions/s ({cli_s:.1f} s, "
          "process start included)", flush=True)

    sandbox_fields = {f: getattr(settings.sandbox, f) for f in ("memory_mb", "file_size_mb", "max_processes",
                                                                "run_as_uid", "namespaces", "landlock")}
    startup = startup_scaling(sandbox_fields, counts, args.startup_sessions) if args.startup_sessions else None
    machine_ceiling = cpu_scaling(counts)

    cpus = os.cpu_count() or 1
    if args.address:
        ray.init(address=args.address, log_to_driver=False)
    else:
        ray.init(num_cpus=max(cpus, max(counts)), include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}})
    results, identical = {}, True

    def write_report() -> dict:
        """The JSON so far (after every worker count: a run cut short keeps what it measured)."""
        base = results[str(counts[0])]["executions_per_s"] / counts[0]
        for n, r in results.items():
            r["efficiency"] = round(r["executions_per_s"] / (int(n) * base), 3)
        out = {
            "machine": args.machine or f"{platform.node()} ({cpu_model()})",
            "cpus": cpus,
            "cpu_model": cpu_model(),
            "benchmark": "humaneval+",
            "tasks": len(tasks),
            "executions": len(samples),
            "samples": "canonical and wrong mixed (wrong outputs on some inputs, or an exception at import)",
            "passed": sum(v.passed for v in single),
            "ground_truth_and_warmup_s": round(warm_s, 1),
            "single_process_executions_per_s": round(single_rate, 3),
            # evaluator and sandbox together (the machine's busy time): the CPUs one worker keeps busy
            "single_process_cpus_per_worker": round(cpu_per_execution * single_rate, 3),
            "eval_score_cli_executions_per_s": round(len(samples) / cli_s, 3),
            "single_worker_vs_single_process": (round(results["1"]["executions_per_s"] / single_rate, 3)
                                                if "1" in results else None),
            "efficiency_base_workers": counts[0],
            "workers": results,
            "sandbox_starts_per_s": startup,
            "pure_python_efficiency": machine_ceiling,
            "worker_counts_planned": counts,
            "verdicts_identical_across_runs": identical and [v.passed for v in warm] == [v.passed for v in
                                                                                          single[:len(warm)]],
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
        return out

    for n in counts:
        t0 = time.perf_counter()
        with ClusterScorer(settings, workers=n) as scorer:
            start_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            verdicts = scorer.score("humaneval+", tasks, samples)
            seconds = time.perf_counter() - t0
        identical &= [v.passed for v in verdicts] == [v.passed for v in single]
        results[str(n)] = {"executions_per_s": round(len(samples) / seconds, 3), "seconds": round(seconds, 2),
                           "workers_start_s": round(start_s, 2),
                           # no contention: what the dispatch order alone allows (1-worker sample times)
                           "schedule_bound": schedule_bound([v.seconds for v in single],
                                                            [expected_seconds(by_id[s["task_id"]]) for s in samples],
                                                            n)}
        print(f"{n} workers: {len(samples) / seconds:.2f} executions/s ({seconds:.1f} s)", flush=True)
        out = write_report()
    ray.shutdown()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
