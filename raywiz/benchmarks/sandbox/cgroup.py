"""One cgroup per sample, where the evaluator may make them: memory (every process of the sample, its
shared memory, memfd and tmpfs pages included) and process count, counted by the kernel.

cgroup v1 (a `memory` and a `pids` hierarchy) and v2 (one unified hierarchy, controllers enabled for
children) are both handled. The evaluator creates the group below its own and puts the harness in it
before the harness reads its job; the harness, still privileged, then sets the memory limit to what it
uses with the job's data loaded plus the sample's cap (confine.limit_cgroup_memory), and the sample,
which runs as another uid or under Landlock, cannot write the group's files. Where no group can be
made (an unprivileged evaluator without a delegated v2 subtree), `SampleCgroup.create` returns None
and the sandbox falls back to refusing shared memory (syscalls.py) and per-process rlimits.
"""

from __future__ import annotations

import itertools
import os

from raywiz.log import get_logger

log = get_logger(__name__)
ROOT = "/sys/fs/cgroup"
_COUNTER = itertools.count()


def _own_group(controller: str | None) -> str | None:
    """This process's group path in a v1 `controller` hierarchy (None: the v2 one)."""
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, names, path = line.rstrip("\n").split(":", 2)
                if (controller is None and names == "") or (controller and controller in names.split(",")):
                    return path
    except OSError:
        pass
    return None


def _writable_dir(path: str) -> bool:
    return os.path.isdir(path) and os.access(path, os.W_OK)


_SWEPT: set[str] = set()


def _remove_stale(parent: str) -> None:
    """Remove the (empty) groups that evaluators which no longer run left in `parent`, once per parent."""
    if parent in _SWEPT:
        return
    _SWEPT.add(parent)
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        pid = name.split("-")[2] if name.startswith("raywiz-sbx-") and name.count("-") >= 3 else ""
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            try:
                os.rmdir(os.path.join(parent, name))
            except OSError:
                pass


class SampleCgroup:
    """A sample's group(s): `memory_dir` (and `pids_dir`, the same directory on v2); `procs` files to
    attach a pid; `limits` for the harness (which files to write)."""

    def __init__(self, version: int, memory_dir: str, pids_dir: str | None):
        self.version, self.memory_dir, self.pids_dir = version, memory_dir, pids_dir

    @classmethod
    def create(cls, max_processes: int | None) -> "SampleCgroup | None":
        name = f"raywiz-sbx-{os.getpid()}-{next(_COUNTER)}"
        v1_memory = _own_group("memory")
        if v1_memory is not None and os.path.isdir(f"{ROOT}/memory"):
            parent = f"{ROOT}/memory{v1_memory}".rstrip("/")
            if not _writable_dir(parent):
                return None
            memory_dir = os.path.join(parent, name)
            _remove_stale(parent)
            pids_dir = None
            v1_pids = _own_group("pids")
            try:
                os.mkdir(memory_dir, 0o755)
                if v1_pids is not None and _writable_dir(f"{ROOT}/pids{v1_pids}".rstrip("/")):
                    _remove_stale(f"{ROOT}/pids{v1_pids}".rstrip("/"))
                    pids_dir = os.path.join(f"{ROOT}/pids{v1_pids}".rstrip("/"), name)
                    os.mkdir(pids_dir, 0o755)
            except OSError as e:
                log.debug("no cgroup for the sample: %s", e)
                cls(1, memory_dir, pids_dir).remove()
                return None
            group = cls(1, memory_dir, pids_dir)
        else:
            v2 = _own_group(None)
            parent = f"{ROOT}{v2}".rstrip("/") if v2 is not None else ""
            try:
                with open(os.path.join(parent, "cgroup.subtree_control")) as f:
                    enabled = f.read().split()
            except OSError:
                return None
            if "memory" not in enabled or not _writable_dir(parent):
                return None
            path = os.path.join(parent, name)
            _remove_stale(parent)
            try:
                os.mkdir(path, 0o755)
            except OSError:
                return None
            group = cls(2, path, path if "pids" in enabled else None)
        if max_processes is not None and group.pids_dir:
            try:
                group._write(group.pids_dir, "pids.max", str(max_processes))
            except OSError:
                group.pids_dir = None
        return group

    @staticmethod
    def _write(directory: str, name: str, value: str) -> None:
        with open(os.path.join(directory, name), "w") as f:
            f.write(value)

    def attach(self, pid: int) -> None:
        for d in dict.fromkeys(filter(None, (self.memory_dir, self.pids_dir))):
            self._write(d, "cgroup.procs", str(pid))

    def for_harness(self) -> dict:
        """What the harness writes: the memory limit file(s), the swap limit (0) and the usage it starts from."""
        if self.version == 1:
            files = ["memory.limit_in_bytes"]
            if os.path.exists(os.path.join(self.memory_dir, "memory.memsw.limit_in_bytes")):
                files.append("memory.memsw.limit_in_bytes")  # (after the first: memsw >= limit always)
            return {"dir": self.memory_dir, "usage": "memory.usage_in_bytes", "limits": files, "no_swap": [],
                    "pids": bool(self.pids_dir)}
        return {"dir": self.memory_dir, "usage": "memory.current", "limits": ["memory.max"],
                "no_swap": ["memory.swap.max"], "pids": bool(self.pids_dir)}

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process of the sample for the memory limit."""
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        try:
            with open(os.path.join(self.memory_dir, name)) as f:
                return any(line.startswith("oom_kill ") and int(line.split()[1]) > 0 for line in f)
        except (OSError, ValueError, IndexError):
            return False

    def kill_members(self) -> None:
        """SIGKILL every process still in the group (the group outlives a sample's session and PID
        namespace, so this reaches what escaped both)."""
        import signal

        for d in dict.fromkeys(filter(None, (self.memory_dir, self.pids_dir))):
            try:
                with open(os.path.join(d, "cgroup.procs")) as f:
                    pids = [int(p) for p in f.read().split()]
            except (OSError, ValueError):
                continue
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass

    def remove(self) -> None:
        """Remove the group(s), once the sample's processes have ended (a group with members stays)."""
        for d in dict.fromkeys(filter(None, (self.memory_dir, self.pids_dir))):
            try:
                os.rmdir(d)
            except FileNotFoundError:
                pass
            except OSError as e:
                log.debug("cgroup %s not removed: %s", d, e)


def cgroup_available() -> bool:
    """Whether this evaluator can make sample cgroups (tries once, removes what it made)."""
    group = SampleCgroup.create(None)
    if group is None:
        return False
    group.remove()
    return True

