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

Samples must not be able to change what they are compared with. So the reference runs where samples
cannot write: as root the evaluator gives it a uid of its own (GROUNDTRUTH_UID, never the samples'),
and its output directory belongs to that uid alone; otherwise Landlock keeps each sample in its own
directory (without either, the sandbox refuses to run unless the user opts in). Each cache entry
carries the task's content checksum (the part of the benchmark file the outputs depend on) and the
outputs' checksum, under an HMAC whose key is readable by the evaluator's uid only (0600 in a 0700
directory): an entry that was rewritten, replayed from another task or left by an older format is
not used, and is recomputed.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import pickle
import secrets
import stat
import sys
import tempfile
import threading

from raywiz.artifacts import write_bytes_atomic
from raywiz.benchmarks import Task
from raywiz.benchmarks.sources import cache_dir
from raywiz.benchmarks.sandbox import SandboxSettings, run_in_sandbox
from raywiz.log import get_logger

log = get_logger(__name__)

PHASES = ("base", "plus")
MBPP_OUTPUT_NOT_NONE_TASKS = ("check_str", "text_match_three", "text_starta_endb")
GROUNDTRUTH_TIMEOUT_S = 900.0
VERSION = "4"  # 2: times in own time (the harness's OwnClock); 3: outputs as plain values; 4: HMAC'd
GROUNDTRUTH_UID = 65533  # the references' uid when the evaluator is root (the samples' is 65534)
MAC_BYTES = 32


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


def _root() -> str:
    return os.path.join(cache_dir(), "groundtruth")


def cache_path(task: Task) -> str:
    safe = task.task_id.replace("/", "_")
    return os.path.join(_root(), task.benchmark.replace("+", "plus"), f"{safe}-{_key(task)}.pkl")


def _own_directory(path: str) -> None:
    """Make `path` (and keep it) a directory of the evaluator's uid that no one else can write."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise RuntimeError(f"{path}: the ground-truth cache is not a directory (a link?); remove it")
    if st.st_uid != os.geteuid():
        if os.geteuid() != 0:
            raise RuntimeError(f"{path}: the ground-truth cache belongs to uid {st.st_uid}, not to you; remove it")
        os.lchown(path, 0, 0)  # e.g. left writable by the samples' uid by an older raywiz
    os.chmod(path, 0o700)


_KEYS: dict[str, bytes] = {}  # per cache root: read or made once per process
_KEYS_LOCK = threading.Lock()


def _mac_key() -> bytes:
    """The cache's HMAC key: made here, readable by the evaluator's uid only."""
    root = _root()
    with _KEYS_LOCK:
        if root not in _KEYS:
            _own_directory(root)
            _KEYS[root] = _read_or_make_key(os.path.join(root, ".key"))
        return _KEYS[root]


def _read_or_make_key(path: str) -> bytes:
    """The key at `path`; one that someone else could have written is replaced (every entry it
    signed is then recomputed). Made whole under another name and linked into place, so that a
    concurrent evaluator reads either no key or all of it, and both use the first one made."""
    for _ in range(5):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as f:
                st, key = os.fstat(f.fileno()), f.read(65)
            if st.st_uid == os.geteuid() and stat.S_ISREG(st.st_mode) and not st.st_mode & 0o077 and len(key) == 64:
                return key
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError:  # e.g. a symbolic link (O_NOFOLLOW)
            os.unlink(path)
        tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}"
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            f.write(secrets.token_bytes(64))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another evaluator's came first: read it
        finally:
            os.unlink(tmp)
    raise RuntimeError(f"{path}: could not make the ground-truth cache's key")


def _outputs_digest(truth: dict) -> str:
    h = hashlib.sha256()
    for phase in PHASES:
        h.update(truth[phase]["expected_plain"])
        h.update(repr([float(t) for t in truth[phase]["times"]]).encode())
    return h.hexdigest()


def _seal(task: Task, truth: dict, key: bytes) -> bytes:
    """A cache entry: HMAC || pickle({task's checksum, outputs' checksum, truth})."""
    payload = pickle.dumps({"task": _key(task), "outputs": _outputs_digest(truth), "truth": truth},
                           protocol=pickle.HIGHEST_PROTOCOL)
    return hmac.new(key, payload, hashlib.sha256).digest() + payload


def _unseal(task: Task, data: bytes, key: bytes) -> dict | None:
    """The entry's truth if it is this task's and untouched since the evaluator wrote it, else None."""
    mac, payload = data[:MAC_BYTES], data[MAC_BYTES:]
    if not hmac.compare_digest(mac, hmac.new(key, payload, hashlib.sha256).digest()):
        return None
    try:
        entry = _PlainDataUnpickler(io.BytesIO(payload)).load()
        truth = entry["truth"]
        if entry["task"] != _key(task) or entry["outputs"] != _outputs_digest(truth):
            return None
        return truth
    except Exception:  # noqa: BLE001 - a malformed entry is recomputed
        return None


def compute(task: Task, settings: SandboxSettings | None = None) -> dict:
    """Run the reference in the sandbox: {phase: {"expected_plain": bytes, "times": [s, ...]}}
    (the outputs encoded by sandbox.encode; `expected` decodes them)."""
    settings = settings or SandboxSettings()
    # Trusted-ish code with big outputs (Mbpp/255 returns ~800 MB): lift the memory and file caps.
    # As root, a uid of its own: no sample (settings.run_as_uid) can write its output directory.
    uid = GROUNDTRUTH_UID if settings.run_as_uid != GROUNDTRUTH_UID else GROUNDTRUTH_UID - 1
    settings = SandboxSettings(memory_mb=0, file_size_mb=1 << 16, max_processes=settings.max_processes,
                               run_as_uid=uid if settings.run_as_uid not in (None, 0) else settings.run_as_uid,
                               namespaces=settings.namespaces, landlock=settings.landlock,
                               allow_unisolated=settings.allow_unisolated)
    job = {
        "mode": "groundtruth", "code": task.prompt + task.solution, "entry_point": task.entry_point,
        "output_not_none": dataset_of(task) == "mbpp" and task.entry_point in MBPP_OUTPUT_NOT_NONE_TASKS,
        "payload": pickle.dumps({"base": task.base_input, "plus": task.plus_input}, protocol=pickle.HIGHEST_PROTOCOL),
    }
    # The sandbox's own working directory is removed when it ends: the output goes to a directory
    # made here (0700), writable by the reference's uid only.
    out_dir = tempfile.mkdtemp(prefix="raywiz-gt-")
    try:
        job["output_file"] = os.path.join(out_dir, "groundtruth.pkl")
        if os.geteuid() == 0 and settings.run_as_uid not in (None, 0):
            os.chown(out_dir, settings.run_as_uid, settings.run_as_uid)  # the reference's uid, not a sample's
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
    """The task's ground truth, from the cache if its entry verifies, else computed now (and cached)."""
    path = cache_path(task)
    key = _mac_key()
    _own_directory(os.path.dirname(path))
    try:
        with open(path, "rb") as f:
            truth = _unseal(task, f.read(), key)
        if truth is not None:
            return truth
        log.warning("%s %s: the cached ground truth does not verify (damaged, rewritten or an older "
                    "format): computing it again", task.benchmark, task.task_id)
    except FileNotFoundError:
        pass
    truth = compute(task, settings)
    write_bytes_atomic(path, _seal(task, truth, key))
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
