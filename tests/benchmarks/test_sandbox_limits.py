"""Issue 20, items 3 and 4: what a sample can take and whom it can talk to, in three configurations:
the evaluator as root with every layer, a normal user's set-up (no uid switch), and namespaces refused.

Each attack runs as a candidate's function (CandidateSession, no guard: the guard is no defence) and
says what it got; an honest control beside it must still work in the same configuration.
"""

from __future__ import annotations

import os
import socket
import tempfile
import textwrap
import threading

import pytest

from raywiz.benchmarks.sandbox import (ALLOW_UNISOLATED_ENV, CandidateDied, CandidateSession, CandidateTimeout,
                                       SandboxSettings, probe_isolation, require_working_sandbox)

pytestmark = pytest.mark.slow
BASE = dict(memory_mb=512, disk_mb=64, file_size_mb=32, open_files=256, max_processes=8)
CONFIGS = {
    "root, every layer": SandboxSettings(**BASE),
    "normal user (no uid switch)": SandboxSettings(**BASE, run_as_uid=None),
    "namespaces refused": SandboxSettings(**BASE, namespaces=False),
}


@pytest.fixture(params=list(CONFIGS))
def settings(request) -> SandboxSettings:
    if request.param.startswith("root") and os.geteuid() != 0:
        pytest.skip("the evaluator is not root here")
    s = CONFIGS[request.param]
    assert probe_isolation(s)["works"], probe_isolation(s)
    return s


def attack(settings: SandboxSettings, code: str, *args, timeout_s: float = 20.0):
    """The candidate's `attack(*args)`: its plain result, or the exception that ended it."""
    with CandidateSession(settings, cpu_budget_s=60) as s:
        s.exec(textwrap.dedent(code), timeout_s=timeout_s)
        try:
            return s.call("attack", list(args), timeout_s=timeout_s)
        except (CandidateDied, CandidateTimeout) as e:
            return e


# ----------------------------------------------------------------------------- memory, disk, descriptors

MEMFD = """
def attack(count, size):
    import os
    held, fds = 0, []
    chunk = b"x" * (1 << 20)
    for i in range(count):
        try:
            fd = os.memfd_create(f"m{i}")
        except OSError:
            try:  # the other way to shared memory
                fd = os.open(f"/dev/shm/raywiz-{os.getpid()}-{i}", os.O_CREAT | os.O_RDWR, 0o600)
            except OSError:
                return held
        fds.append(fd)
        try:
            for _ in range(size >> 20):
                os.write(fd, chunk)
                held += len(chunk)
        except OSError:
            return held
    return held
"""


def test_shared_memory_counts_against_the_memory_cap(settings):
    """40 x 32 MB of memfd (or /dev/shm) from a sample capped at 512 MB: refused, or killed at the cap."""
    got = attack(settings, MEMFD, 40, 32 << 20)
    assert isinstance(got, CandidateDied) or got <= settings.memory_mb << 20, got
    # Control: plain memory well under the cap works.
    assert attack(settings, "def attack(n):\n    return len(bytearray(n))\n", 64 << 20) == 64 << 20


FALLOCATE = """
def attack(count, size):
    import os
    done = 0
    for i in range(count):
        fd = os.open(f"f{i}", os.O_CREAT | os.O_WRONLY, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)
            done += size
        except OSError:
            return done
        finally:
            os.close(fd)
    return done
"""


def test_disk_is_capped_across_files(settings):
    """40 files of 16 MB by posix_fallocate (RLIMIT_FSIZE is per file) against a 64 MB disk cap."""
    got = attack(settings, FALLOCATE, 40, 16 << 20)
    assert isinstance(got, CandidateDied) or got <= settings.disk_mb << 20, got
    if isinstance(got, CandidateDied):
        assert "disk cap" in str(got), got
    assert attack(settings, FALLOCATE, 2, 4 << 20) == 8 << 20  # control: small files are fine


DESCRIPTORS = """
def attack(n):
    import os, resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass
    fds = []
    try:
        for _ in range(n):
            fds.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        pass
    return len(fds)
"""


def test_open_descriptors_are_capped(settings):
    assert attack(settings, DESCRIPTORS, 5000) < settings.open_files
    assert attack(settings, DESCRIPTORS, 50) == 50  # control


PROCESSES = """
def attack(n):
    import os, signal, time
    pids = []
    for _ in range(n):
        try:
            pid = os.fork()
        except OSError:
            break
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    return len(pids)
"""


def test_processes_are_capped(settings):
    """RLIMIT_NPROC does not hold a sample whose real uid is root (no uid switch); the cgroup does."""
    assert attack(settings, PROCESSES, 64) <= settings.max_processes + 2
    assert attack(settings, PROCESSES, 2) == 2  # control


# ----------------------------------------------------------------------------- sockets

# The original socket class, as a sample gets it past any in-process guard (through the MRO).
CONNECT = """
def attack(kind, address):
    import _socket
    Socket = _socket.socket.__mro__[-2]
    family, type_ = {"unix": (1, 1), "tcp": (2, 1), "udp": (2, 2)}[kind]
    try:
        s = Socket(family, type_)
        s.settimeout(2)
        if kind == "udp":
            s.sendto(b"hello", tuple(address))
        else:
            s.connect(address if kind == "unix" else tuple(address))
            s.send(b"hello")
        return "reached"
    except OSError as e:
        return type(e).__name__
"""


class Listener:
    """A socket of the test's that records whether anything reached it."""

    def __init__(self, family: int, type_: int, address, mode: int | None = None):
        self.sock = socket.socket(family, type_)
        self.sock.bind(address)
        if mode is not None:
            os.chmod(address, mode)
        if type_ == socket.SOCK_STREAM:
            self.sock.listen(4)
        self.sock.settimeout(0.2)
        self.reached = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                if self.sock.type == socket.SOCK_STREAM:
                    conn, _ = self.sock.accept()
                    conn.close()
                else:
                    self.sock.recv(64)
                self.reached = True
            except OSError:
                continue

    def close(self) -> bool:
        self._stop.set()
        self._thread.join()
        self.sock.close()
        return self.reached


@pytest.fixture
def socket_dir():
    d = tempfile.mkdtemp(prefix="raywiz-sock-")
    os.chmod(d, 0o755)  # reachable by any uid, as /run/user sockets' parents are to their owner
    yield d
    for name in os.listdir(d):
        os.unlink(os.path.join(d, name))
    os.rmdir(d)


@pytest.mark.parametrize("mode", [0o777, 0o600], ids=["world-writable", "the evaluator user's own"])
def test_pathname_unix_sockets_are_unreachable(settings, socket_dir, mode):
    path = os.path.join(socket_dir, "agent.sock")
    listener = Listener(socket.AF_UNIX, socket.SOCK_STREAM, path, mode)
    got = attack(settings, CONNECT, "unix", path)
    assert not listener.close() and got != "reached", got


def test_abstract_unix_sockets_are_unreachable(settings):
    name = f"\0raywiz-test-{os.getpid()}"
    listener = Listener(socket.AF_UNIX, socket.SOCK_STREAM, name)
    got = attack(settings, CONNECT, "unix", name)
    assert not listener.close() and got != "reached", got


@pytest.mark.parametrize("kind", ["tcp", "udp"])
def test_no_tcp_or_udp_to_localhost(settings, kind):
    listener = Listener(socket.AF_INET, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM, ("127.0.0.1", 0))
    got = attack(settings, CONNECT, kind, list(listener.sock.getsockname()))
    assert not listener.close() and got != "reached", got


def test_its_own_socketpair_and_asyncio_still_work(settings):
    """Control: what honest code uses (asyncio's self-pipe is a socketpair) is not refused."""
    code = """
    def attack():
        import asyncio, socket
        a, b = socket.socketpair()
        a.sendall(b"ping")
        got = b.recv(4)
        async def main():
            await asyncio.sleep(0)
            return "ran"
        return [got.decode(), asyncio.run(main())]
    """
    assert attack(settings, code) == ["ping", "ran"]


def test_the_probe_reports_each_limit(settings):
    limits = probe_isolation(settings)["limits"]
    assert set(limits) >= {"memory", "shared_memory", "disk", "open_files", "processes", "sockets", "writes"}
    assert not any(v.startswith("NOT") for v in limits.values()), limits  # (this machine has every layer)


WRITES = """
def attack(paths):
    import os
    wrote = []
    for path in paths:
        try:
            with open(path, "w") as f:
                f.write("poison")
            wrote.append(path)
        except OSError:
            pass
    with open("mine.txt", "w") as f:  # its own directory stays writable
        f.write("ok")
    return wrote
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="the uid switch needs a root evaluator")
def test_without_landlock_a_root_evaluators_sample_writes_only_its_own_directory():
    """Kernels before 5.13: no Landlock. The sample's uid must still not reach world-writable places
    or a directory it owns (the ground-truth cache was one), where the evaluator would trust it later."""
    import shutil

    settings = SandboxSettings(**BASE, landlock=False)
    owned = tempfile.mkdtemp(prefix="raywiz-owned-")  # (under /tmp: every uid can reach it)
    os.chmod(owned, 0o755)
    os.chown(owned, settings.run_as_uid, settings.run_as_uid)
    targets = [os.path.join(owned, "expected.pkl"), f"/tmp/raywiz-poison-{os.getpid()}",
               f"/dev/shm/raywiz-poison-{os.getpid()}"]
    try:
        assert attack(settings, WRITES, targets) == []
    finally:
        shutil.rmtree(owned)
        for t in targets[1:]:
            if os.path.exists(t):
                os.unlink(t)
    assert probe_isolation(settings)["limits"]["writes"] == "its own directory only (other mounts read-only)"


def test_where_nothing_refuses_sockets_it_says_so_and_refuses_to_run_unless_told(monkeypatch):
    """No seccomp and no network namespace (an old kernel, a locked-down container): the probe names
    the hole, and untrusted code runs only with the opt-in."""
    settings = SandboxSettings(**BASE, namespaces=False, seccomp=False)
    assert probe_isolation(settings)["limits"]["sockets"].startswith("NOT refused: pathname unix sockets, UDP")
    monkeypatch.delenv(ALLOW_UNISOLATED_ENV, raising=False)
    with pytest.raises(RuntimeError, match="NO SOCKET ISOLATION"):
        require_working_sandbox(settings)
    assert require_working_sandbox(CONFIGS["namespaces refused"])["works"]  # control: seccomp holds them
    monkeypatch.setenv(ALLOW_UNISOLATED_ENV, "1")
    assert require_working_sandbox(settings)["works"]
