"""What this machine grants the sandbox, and the refusal to run untrusted code where nothing protects the user."""

from __future__ import annotations

import os

from .process import ALLOW_UNISOLATED_ENV, SandboxSettings, run_program

_PROBES: dict[SandboxSettings, dict] = {}


def limits_report(record: dict, settings: SandboxSettings) -> dict:
    """Each resource a sample can take, and how it is bounded on this machine (from the harness's
    isolation record). A value that starts with "NOT" is a hole: see require_working_sandbox."""
    cgroup = "cgroup_memory_bytes" in record
    seccomp = "seccomp" in record
    namespaces = record.get("namespaces", [])
    landlock = record.get("landlock") or 0
    if seccomp:
        sockets = "refused (seccomp: socket(); socketpair only AF_UNIX stream)"
    else:
        held = [*(["TCP and abstract unix (network namespace)"] if "net" in namespaces else []),
                *(["TCP (Landlock)"] if landlock >= 4 and "net" not in namespaces else []),
                *(["abstract unix (Landlock scope)"] if landlock >= 6 and "net" not in namespaces else [])]
        sockets = "NOT refused: pathname unix sockets" + ("" if "net" in namespaces else ", UDP") + (
            f" are reachable (only {', '.join(held)} refused)" if held else " and TCP are reachable")
    return {
        "memory": (f"cgroup: {record['cgroup_memory_bytes']} bytes for all its processes, shared memory included"
                   if cgroup else f"rlimit: {settings.memory_mb} MB of address space per process"),
        "shared_memory": ("counted in the cgroup" if cgroup else "refused (seccomp: memfd_create, shmget)" if seccomp
                          else "NOT bounded (no cgroup, no seccomp)"),
        "disk": (f"private tmpfs of {settings.disk_mb} MB" if record.get("disk") == "tmpfs"
                 else f"the evaluator's watcher kills at {settings.disk_mb} MB (after the fact)"),
        "file_size": f"rlimit: {settings.file_size_mb} MB per file",
        "open_files": f"rlimit: {settings.open_files} per process",
        "processes": (f"cgroup: {settings.max_processes + 2} tasks" if record.get("cgroup_pids")
                      else f"rlimit: {settings.max_processes} per user"),
        "sockets": sockets,
        "writes": ("its own directory only (Landlock)" if landlock else
                   "its own directory only (other mounts read-only)"
                   if record.get("disk") == "tmpfs" and not record.get("read_only_mounts_failed") else
                   "NOT only its own directory: world-writable places (/tmp, /dev/shm) are open to it"),
    }


def probe_isolation(settings: SandboxSettings | None = None) -> dict:
    """Which isolation layers this machine grants (cached per settings): uid, namespaces, network,
    Landlock; "works" says whether a trivial program passes at all, "error" why not."""
    settings = settings or SandboxSettings()
    if settings not in _PROBES:
        run = run_program("pass", 10.0, settings)
        works = run.result() == "passed"
        probe = {k: v for k, v in run.isolation.items() if k != "event"}
        probe["works"] = works
        probe["limits"] = limits_report(probe, settings)
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
    holes = []
    if not probe.get("isolated"):
        why = probe.get("landlock_error") or "Landlock is off in the sandbox settings"
        holes.append(f"NO ISOLATION: untrusted code would run with your own uid and full access to your files "
                     f"(Landlock: {why}; no uid switch without root)")
    sockets = probe.get("limits", {}).get("sockets", "")
    if sockets.startswith("NOT"):
        why = probe.get("seccomp_error") or "seccomp is off in the sandbox settings"
        holes.append(f"NO SOCKET ISOLATION: sockets {sockets} (seccomp: {why})")
    writes = probe.get("limits", {}).get("writes", "")
    if writes.startswith("NOT"):
        holes.append(f"NO WRITE ISOLATION: its writes are {writes} (neither Landlock nor a mount namespace)")
    for message in holes:
        if not (settings.allow_unisolated or os.environ.get(ALLOW_UNISOLATED_ENV) == "1"):
            raise RuntimeError(f"{message}. Refusing to run it; set {ALLOW_UNISOLATED_ENV}=1 (or "
                               "eval.sandbox.allow_unisolated) to run it anyway, at your own risk")
        from raywiz.log import say

        say(f"WARNING: {message}; running it anyway ({ALLOW_UNISOLATED_ENV}=1)")
    return probe
