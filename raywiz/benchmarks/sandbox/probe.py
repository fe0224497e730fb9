"""What this machine grants the sandbox, and the refusal to run untrusted code where nothing protects the user."""

from __future__ import annotations

import os

from .process import ALLOW_UNISOLATED_ENV, SandboxSettings, run_program

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
