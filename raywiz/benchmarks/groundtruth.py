"""evalplus's ground truth: the reference solution's outputs and run times on every input.

HumanEval+ and MBPP+ compare a sample's outputs with the reference's (not with assertions), and give
each input a time limit of max(1 s, 4 x the reference's time on this machine), as evalplus does.
Times are own time (wall-clock time less waiting for a CPU held by other processes, see
sandbox/harness.py, OwnClock), and the limits are enforced in the same time: on a loaded machine neither
the reference's measured time nor a sample's depends on what else runs.
Computing them runs every reference on every input once (~30 s for HumanEval+, ~80 s for MBPP+ on
one core), so they are cached per task under ``{cache}/groundtruth/``, keyed by the task's content.
The references run in the sandbox too (no guard, larger limits): data files are input, not code we
vouch for.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
import tempfile

from raywiz.artifacts import write_bytes_atomic
from raywiz.benchmarks import Task
from raywiz.benchmarks.sources import cache_dir
from raywiz.benchmarks.sandbox import SandboxSettings, run_in_sandbox

PHASES = ("base", "plus")
MBPP_OUTPUT_NOT_NONE_TASKS = ("check_str", "text_match_three", "text_starta_endb")
GROUNDTRUTH_TIMEOUT_S = 900.0
VERSION = "3"  # 2: times in own time (the harness's OwnClock); 3: outputs as plain values, not pickles


def dataset_of(task: Task) -> str:
    """evalplus's dataset name: 'humaneval' or 'mbpp'."""
    return "mbpp" if task.benchmark == "mbpp+" else "humaneval"


def _key(task: Task) -> str:
    h = hashlib.sha256()
    for part in (VERSION, sys.version.split()[0], task.benchmark, task.task_id, task.prompt, task.solution,
                 task.entry_point or ""):
        h.update(part.encode("utf-8", "surrogatepass") + b"\x00")
    h.update(pickle.dumps((task.base_input, task.plus_input), protocol=4))
    return h.hexdigest()[:32]


def cache_path(task: Task) -> str:
    safe = task.task_id.replace("/", "_")
    return os.path.join(cache_dir(), "groundtruth", task.benchmark.replace("+", "plus"), f"{safe}-{_key(task)}.pkl")


def compute(task: Task, settings: SandboxSettings | None = None) -> dict:
    """Run the reference in the sandbox: {phase: {"expected_plain": bytes, "times": [s, ...]}}
    (the outputs encoded by sandbox.encode; `expected` decodes them)."""
    settings = settings or SandboxSettings()
    # Trusted-ish code with big outputs (Mbpp/255 returns ~800 MB): lift the memory and file caps.
    settings = SandboxSettings(memory_mb=0, file_size_mb=1 << 16, max_processes=settings.max_processes,
                               run_as_uid=settings.run_as_uid, namespaces=settings.namespaces)
    job = {
        "mode": "groundtruth", "code": task.prompt + task.solution, "entry_point": task.entry_point,
        "output_not_none": dataset_of(task) == "mbpp" and task.entry_point in MBPP_OUTPUT_NOT_NONE_TASKS,
        "payload": pickle.dumps({"base": task.base_input, "plus": task.plus_input}, protocol=pickle.HIGHEST_PROTOCOL),
    }
    # The sandbox's own working directory is removed when it ends: the output goes to a directory
    # made here, writable by the sandbox's uid.
    out_dir = tempfile.mkdtemp(prefix="raywiz-gt-")
    try:
        job["output_file"] = os.path.join(out_dir, "groundtruth.pkl")
        if os.geteuid() == 0 and settings.run_as_uid not in (None, 0):
            os.chown(out_dir, settings.run_as_uid, settings.run_as_uid)
        run = run_in_sandbox(job, settings, [GROUNDTRUTH_TIMEOUT_S], writable=[out_dir])
        result = run.result()
        if result != "passed" or not os.path.exists(job["output_file"]):
            raise RuntimeError(
                f"{task.benchmark} {task.task_id}: the reference solution failed to run "
                f"({result or run.failure_reason()}); stderr: {run.stderr[-500:]}"
            )
        with open(job["output_file"], "rb") as f:
            return _PlainDataUnpickler(f).load()
    finally:
        import shutil

        shutil.rmtree(out_dir, ignore_errors=True)


class _PlainDataUnpickler(pickle.Unpickler):
    """The file came out of the sandbox: accept dicts, lists, floats, bytes; no classes, no code.
    (The outputs themselves are plain-value bytes, opened by `expected` with the bounded decoder.)"""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in ground-truth output")


def load(task: Task, settings: SandboxSettings | None = None) -> dict:
    """The task's ground truth, from the cache or computed now (and cached)."""
    path = cache_path(task)
    if os.path.exists(path):
        try:
            with open(path, "rb") as f:
                return _PlainDataUnpickler(f).load()
        except (OSError, pickle.UnpicklingError, EOFError):
            pass  # a damaged cache entry is recomputed
    truth = compute(task, settings)
    write_bytes_atomic(path, pickle.dumps(truth, protocol=pickle.HIGHEST_PROTOCOL))
    seconds = sum(sum(phase["times"]) for phase in truth.values())
    write_bytes_atomic(path + ".seconds", f"{seconds:.6f}\n".encode())
    return truth


def expected(truth: dict, phase: str) -> list:
    """A phase's expected outputs, decoded (plain values only)."""
    from raywiz.benchmarks.sandbox import decode

    outputs = decode(truth[phase]["expected_plain"])
    if not isinstance(outputs, list):
        raise ValueError("ground truth: expected a list of outputs")
    return outputs


def cached_seconds(task: Task) -> float | None:
    """The reference's total run time on this task, if its ground truth is cached (for scheduling)."""
    try:
        with open(cache_path(task) + ".seconds") as f:
            return float(f.read())
    except (OSError, ValueError):
        return None
