"""The candidate as a server: one sandboxed process that runs a candidate's code for the evaluator, which
keeps the tests and the expected outputs; only plain values come back (protocol.decode)."""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time

from . import protocol
from .process import (RESULT_BYTES_CAP, STDERR_KEEP, VALUE_BYTES_CAP, SandboxSettings, StageDeadline, make_workdir,
                      SandboxProcess, remove_workdir)

# ----------------------------------------------------------------------------- the candidate as a server


class CandidateDied(BaseException):
    """The candidate's process ended, or broke the protocol: the session is over.
    (BaseException: the benchmark's own `except Exception` in a test must not swallow it.)"""


class CandidateTimeout(BaseException):
    """The candidate used up its time; the evaluator killed it."""


class CandidateError(Exception):
    """The candidate raised an exception that is not a built-in one (its type name and message)."""


class NotPlainValue(CandidateError):
    """The candidate returned something that is not plain data (e.g. an object with its own __eq__)."""


class Unavailable:
    """A value of the candidate's that did not come back as plain data: any use of it raises."""

    __slots__ = ("name", "reason")

    def __init__(self, name: str, reason: str):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "reason", reason)

    def _refuse(self, *args, **kwargs):
        raise NotPlainValue(f"{self.name} is not a plain value ({self.reason})")

    __getattr__ = __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __bool__ = __len__ = __iter__ = _refuse
    __getitem__ = __contains__ = __array__ = __float__ = __int__ = __index__ = __call__ = __hash__ = _refuse
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __abs__ = __neg__ = _refuse

    def __repr__(self) -> str:
        return f"<not a plain value: {self.name}>"


def candidate_exception(type_name: str, message: str) -> BaseException:
    """The candidate's exception, rebuilt from plain strings: a built-in Exception type where the
    name is one (tests catch ValueError & co), else CandidateError."""
    import builtins

    cls = getattr(builtins, type_name, None) if isinstance(type_name, str) else None
    if isinstance(cls, type) and issubclass(cls, Exception) and not issubclass(cls, (CandidateError,)):
        try:
            return cls(message)
        except Exception:  # noqa: BLE001 - e.g. UnicodeDecodeError's 5-argument constructor
            pass
    return CandidateError(f"{type_name}: {message}")


def _copy_back(orig, new):
    """Make `orig` (the evaluator's argument) equal to `new` (the candidate's, after the call), in
    place where it is a mutable container, so tests that inspect their arguments see the mutation."""
    if type(orig) is list and type(new) is list:
        if len(orig) == len(new):
            for i, (a, b) in enumerate(zip(orig, new)):
                orig[i] = _copy_back(a, b)
        else:
            orig[:] = new
        return orig
    if type(orig) is dict and type(new) is dict:
        if orig.keys() == new.keys():
            for k in new:
                orig[k] = _copy_back(orig[k], new[k])
        else:
            orig.clear()
            orig.update(new)
        return orig
    if type(orig) in (set, bytearray) and type(new) is type(orig):
        if type(orig) is set:
            orig.clear()
            orig.update(new)
        else:
            orig[:] = new
        return orig
    np = sys.modules.get("numpy")
    if np is not None and isinstance(orig, np.ndarray) and isinstance(new, np.ndarray) and orig.shape == new.shape:
        if orig.flags.writeable:
            orig[...] = new
        return orig
    return new if type(orig) is not tuple else orig  # tuples and scalars cannot change


DECODE_FREE_BYTES_PER_S = 8 << 20  # free decoding per reply byte (Mbpp/255: 800 MB, 51 s of CPU under load)


class CandidateSession:
    """One sandboxed process that runs a candidate's code for the evaluator.

        with CandidateSession(settings, guard="humaneval") as s:
            names = s.exec(code, timeout_s=3)        # {name: callable?} of its globals
            value = s.call("add", [1, 2], timeout_s=3)

    Every value that comes back is decoded by protocol.decode (plain data only, bounded).
    Time is the evaluator's: `spent` adds up the own time of each request (see StageDeadline).
    """

    def __init__(self, settings: SandboxSettings, guard: str | None = None, preimport: list[str] | None = None,
                 cpu_budget_s: float = 60.0, files: dict[str, bytes] | None = None, extended: bool = False):
        self._codec = protocol
        self.settings = settings
        self.extended = extended  # accept DS-1000's values (pandas, sparse, torch: protocol.decode)
        self.spent = 0.0
        self.cpu_budget_s = cpu_budget_s  # (also the most one decode of its replies may take)
        self.runs = 0  # `run` requests so far (each one's child replaces the last's)
        self.last_reply_bytes = 0
        self.dead: str | None = None
        self.stderr = bytearray()
        self.workdir = make_workdir(settings, None, files)
        self._proc = SandboxProcess({"mode": "serve", "guard": guard, "preimport": list(preimport or [])}, settings,
                           self.workdir, None, cpu_budget_s)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._proc.popen.stdout, selectors.EVENT_READ, "out")
        self._sel.register(self._proc.popen.stderr, selectors.EVENT_READ, "err")
        self._buf = bytearray()
        self._pending = 0  # results of start_calls not read yet
        try:
            first = self._read_frame(StageDeadline(settings.startup_timeout_s, self._proc.popen.pid), RESULT_BYTES_CAP)
            record = json.loads(first)
            if not isinstance(record, dict) or record.get("event") != "isolation":
                raise ValueError(record)
            self.isolation = record
            self._proc.isolated(record)
        except BaseException as e:
            reason = "the sandbox did not start in time" if isinstance(e, CandidateTimeout) else (
                str(e) if isinstance(e, CandidateDied) else "the sandbox did not start")
            self._die(reason)
            self.close()
            raise CandidateDied(reason) from None

    # -- plumbing

    def _die(self, reason: str) -> None:
        if self.dead is None:
            self.dead = reason
        self._proc.kill()

    def _read_frame(self, deadline: StageDeadline, cap: int) -> bytes:
        """One frame from the harness, within the deadline (else CandidateTimeout). A reply that
        is already in the pipe when the deadline is checked counts as in time: this process may
        have been slow to read it (other threads, a loaded machine), the candidate was not."""
        need, last_look = None, False
        while True:
            if need is None and len(self._buf) >= 4:
                need = 4 + int.from_bytes(self._buf[:4], "big")
                if need - 4 > cap:
                    self._die(f"the sample sent a reply larger than {cap} bytes")
                    raise CandidateDied(self.dead)
            if need is not None and len(self._buf) >= need:
                frame = bytes(self._buf[4:need])
                del self._buf[:need]
                return frame
            if last_look:
                self._die("timed out")
                raise CandidateTimeout("timed out")
            if not self._sel.get_map():
                self._die(self._exit_reason())
                raise CandidateDied(self.dead)
            last_look = deadline.passed()
            # On the last look, take only what is in the pipe already (up to one whole reply).
            for _ in range(1 + (cap >> 20) if last_look else 1):
                got = self._read_available(0.0 if last_look else min(max(deadline.seconds_left(), 0.005), 0.5))
                if not got:
                    break

    def _buffered_frame(self) -> bytes | None:
        """A whole frame already read from the pipe (within the reply cap), if there is one."""
        if len(self._buf) < 4:
            return None
        need = 4 + int.from_bytes(self._buf[:4], "big")
        if need - 4 > VALUE_BYTES_CAP or len(self._buf) < need:
            return None
        frame = bytes(self._buf[4:need])
        del self._buf[:need]
        return frame

    def _read_available(self, wait_s: float) -> bool:
        """Read what the harness has written (waiting up to wait_s); whether anything came."""
        got = False
        for key, _ in self._sel.select(timeout=wait_s):
            chunk = os.read(key.fileobj.fileno(), 1 << 20)
            got = True
            if not chunk:
                self._sel.unregister(key.fileobj)
            elif key.data == "err":
                if len(self.stderr) < STDERR_KEEP:
                    self.stderr += chunk[: STDERR_KEEP - len(self.stderr)]
            else:
                self._buf += chunk
        return got

    def _exit_reason(self) -> str:
        try:
            code = self._proc.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        tail = self.stderr.decode("utf-8", "replace").strip().splitlines()[-1:]
        if self._proc.cgroup is not None and self._proc.cgroup.oom_killed():
            tail = ["out of memory (the sample's cgroup limit)"]
        how = f"killed by signal {-code}" if code is not None and code < 0 else (
            f"killed by signal {code - 128}" if code is not None and code >= 128 else f"exited (code {code})")
        return f"the sample's process {how}" + (f": {tail[0][:300]}" if tail else "")

    def _request(self, request: dict, timeout_s: float, cap: int = VALUE_BYTES_CAP) -> list:
        import msgpack

        if self.dead is not None:
            raise CandidateDied(self.dead)
        if self._pending:  # replies of start_calls still to come: this one's would be out of step
            self._die("a request while results are pending")
            raise CandidateDied(self.dead)
        data = msgpack.packb(request, use_bin_type=True)
        deadline = StageDeadline(max(0.0, timeout_s), self._proc.worker_pid)
        self._send(data)
        try:
            frame = self._read_frame(deadline, cap)
        finally:
            self.spent += deadline.used()
        self._check_disk()
        self.last_reply_bytes = len(frame)
        return self._envelope(frame)

    def _check_disk(self) -> None:
        if self._proc.over_disk_cap():
            self._die(f"the sample's files passed its disk cap ({self.settings.disk_mb} MB)")
            raise CandidateDied(self.dead)

    def _send(self, data: bytes) -> None:
        try:
            self._proc.popen.stdin.write(len(data).to_bytes(4, "big") + data)
            self._proc.popen.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            self._die(self._exit_reason())
            raise CandidateDied(self.dead) from None

    def _envelope(self, frame: bytes) -> list:
        """A reply's msgpack envelope: a list whose first item is its kind (else the session ends)."""
        import msgpack

        try:
            # strict_map_key: names are str (whose hash is salted): no crafted int keys to collide.
            reply = msgpack.unpackb(frame, raw=False, use_list=True, strict_map_key=True,
                                    ext_hook=_no_extensions, max_bin_len=VALUE_BYTES_CAP)
        except Exception:  # noqa: BLE001 - whatever msgpack raises on hostile bytes
            reply = None
        if not (isinstance(reply, list) and reply and isinstance(reply[0], str)):
            self._die("the sample broke the reply protocol")
            raise CandidateDied(self.dead)
        return reply

    def _decode(self, data, handles=None) -> object:
        """A value of the sample's, by the bounded decoder (protocol.decode). Decoding costs what the
        reply weighs: up to DECODE_FREE_BYTES_PER_S it is the evaluator's time (an honest 800 MB
        output of Mbpp/255 takes ~50 s of CPU to decode, which evalplus, in one process, never
        spends); beyond that this thread's CPU time counts in `spent`, the sample's time, and the
        decode stops past the sample's budget."""
        if not isinstance(data, bytes):
            raise NotPlainValue("malformed reply")
        allowance = len(data) / DECODE_FREE_BYTES_PER_S
        started = time.thread_time()
        try:
            return self._codec.decode(data, extended=self.extended, handles=handles,
                                      cpu_s=self.cpu_budget_s + allowance)
        except ValueError as e:
            raise NotPlainValue(str(e)) from None
        finally:
            self.spent += max(0.0, time.thread_time() - started - allowance)

    # -- the API

    def exec(self, code: str, timeout_s: float) -> dict[str, str]:
        """Run the candidate's program in fresh globals; its names: "f" (callable), "v" (other value),
        "m:NAME" (a module)."""
        reply = self._request({"op": "exec", "code": code}, timeout_s)
        if reply[0] == "exc" and len(reply) == 3:
            raise candidate_exception(reply[1], reply[2] if isinstance(reply[2], str) else "")
        if reply[0] != "ok" or len(reply) != 2 or not isinstance(reply[1], dict):
            raise CandidateDied("the sample broke the reply protocol")
        return {k: v for k, v in reply[1].items() if isinstance(k, str) and isinstance(v, str)}

    def call(self, name: str, args: list, timeout_s: float, kwargs: dict | None = None):
        """The candidate's `name(*args, **kwargs)`: its plain result; mutations of `args` are copied back."""
        request = {"op": "call", "name": name, "args": self._codec.encode(list(args))}
        if kwargs:
            request["kwargs"] = self._codec.encode(dict(kwargs))
        reply = self._request(request, timeout_s)
        if reply[0] == "exc" and len(reply) == 3:
            raise candidate_exception(reply[1], reply[2] if isinstance(reply[2], str) else "")
        if reply[0] == "bad":
            raise NotPlainValue(str(reply[1])[:300] if len(reply) > 1 else "not a plain value")
        if reply[0] != "ok" or len(reply) != 3 or not isinstance(reply[2], list) or len(reply[2]) != len(args):
            raise CandidateDied("the sample broke the reply protocol")
        value = self._decode(reply[1])
        for i, after in enumerate(reply[2]):
            if after is not None and not isinstance(args[i], self._codec.RemoteRef):
                args[i] = _copy_back(args[i], self._decode(after))
        return value

    def start_calls(self, name: str, encoded_inputs: bytes, count: int, return_args: bool = False,
                    not_none: bool = False) -> None:
        """Ask for `name(*args)` on each of `count` argument lists (protocol.encode of the list
        of lists); read each result, in order, with `next_result`. Until all are read, the session
        serves nothing else (`abandon` it to stop early). `not_none`: a result that is not a bool
        comes back as `result is not None` (MBPP+'s oracles for regex matches)."""
        import msgpack

        if self.dead is not None or self._pending:
            raise CandidateDied(self.dead or "results are pending")
        data = msgpack.packb({"op": "calls", "name": name, "inputs": encoded_inputs, "return_args": return_args,
                             "not_none": not_none},
                             use_bin_type=True)
        self._send(data)
        self._pending = count

    def next_result(self, timeout_s: float) -> tuple[object, object]:
        """The next result of `start_calls` within `timeout_s` of the candidate's own time from now
        (the evaluator's deadline, as for `call`): (value, arguments after the call or None)."""

        if self.dead is not None:
            raise CandidateDied(self.dead)
        if self._pending <= 0:
            raise RuntimeError("no results pending")
        frame = self._buffered_frame()
        if frame is None:  # (a result already read took no time of this one's: no clock to start)
            deadline = StageDeadline(max(0.0, timeout_s), self._proc.worker_pid)
            try:
                frame = self._read_frame(deadline, VALUE_BYTES_CAP)
            finally:
                self.spent += deadline.used()
        self._check_disk()
        self._pending -= 1
        reply = self._envelope(frame)
        if reply[0] == "exc" and len(reply) == 3:
            raise candidate_exception(reply[1], reply[2] if isinstance(reply[2], str) else "")
        if reply[0] == "bad":
            raise NotPlainValue(str(reply[1])[:300] if len(reply) > 1 else "not a plain value")
        if reply[0] != "ok" or len(reply) != 3:
            self._die("the sample broke the reply protocol")
            raise CandidateDied(self.dead)
        after = self._decode(reply[2]) if reply[2] is not None else None
        return self._decode(reply[1]), after

    def abandon(self) -> None:
        """Stop serving: the candidate may still be answering (its replies would be out of step)."""
        if self._pending:
            self._die("abandoned")

    def run(self, code: str, env: dict, timeout_s: float, *, names: list[str] | None = None,
            argv: list[str] | None = None, filename: str = "<sample>", alarm_s: float | None = None,
            rng: dict | None = None, objects=None, files: list[str] | None = None,
            files_cap: int = 0, fetched: dict | None = None) -> dict:
        """Exec `code` in a fresh child of the candidate's process on globals `env` (the evaluator's
        values: they are pickled, which is safe in this direction; modules go by name); return the
        globals it then holds (`names`, or all) as plain values, or an `Unavailable` that says why
        one is not plain. The candidate's exception is raised here (a TimeoutException of its
        `alarm_s` limit included); `rng`: random states to start from ({"numpy": ..., ...}).

        `objects` (raywiz.benchmarks.remote_objects.RemoteObjects): the child stays and serves its
        objects; a value that is not plain comes back as its proxy, a module as `objects.module_value`.
        `files`: names in its directory to read back after the run (at most `files_cap` bytes in
        all), into `fetched` as bytes."""
        import pickle
        import types

        self.runs += 1
        modules = {k: v.__name__ for k, v in env.items() if isinstance(v, types.ModuleType)}
        plain = {k: v for k, v in env.items() if k != "__builtins__" and k not in modules}
        try:
            data = pickle.dumps(plain, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:  # noqa: BLE001 - e.g. a function of the test code
            raise NotPlainValue(f"the test's values cannot be sent to the sandbox: {type(e).__name__}: {e}") from None
        request = {"op": "run", "code": code, "env": data, "modules": modules, "names": names, "argv": argv,
                   "filename": filename, "alarm": alarm_s, "rng": pickle.dumps(rng) if rng else None,
                   "keep": objects is not None, "files": list(files or []), "files_cap": files_cap}
        reply = self._request(request, timeout_s)
        if reply[0] == "exc" and len(reply) == 3:
            raise candidate_exception(reply[1], reply[2] if isinstance(reply[2], str) else "")
        if reply[0] != "ok" or len(reply) != 3 or not isinstance(reply[1], dict) or not isinstance(reply[2], dict):
            self._die("the sample broke the reply protocol")
            raise CandidateDied(self.dead)
        handles = objects.proxy if objects is not None else None
        out: dict = {}
        for name, item in reply[1].items():
            if not (isinstance(name, str) and isinstance(item, list) and len(item) == 2):
                continue
            kind, value = item
            if kind == "v":
                try:
                    out[name] = self._decode(value, handles)
                except NotPlainValue as e:
                    out[name] = Unavailable(name, str(e))
            elif kind == "m" and isinstance(value, str) and objects is not None:
                out[name] = objects.module_value(value)
            elif kind == "m" and isinstance(value, str):
                out[name] = Unavailable(name, f"module {value[:100]}")
            else:
                out[name] = Unavailable(name, str(value)[:300])
        wanted, total = set(files or []), 0
        for name, content in reply[2].items():
            if name in wanted and isinstance(content, bytes) and total + len(content) <= files_cap:
                total += len(content)
                if fetched is not None:
                    fetched[name] = content
        return out

    def objects(self, request: dict, timeout_s: float, cap: int, handles) -> list:
        """One request on the objects of the child kept by `run(objects=...)` (see harness.py
        _serve_objects): ["ok", value] (its handles become `handles(id, type_names)`), ["big"]
        (over `cap` bytes: nothing more was read) or ["exc", type, message]."""
        reply = self._request({"op": "obj", **request, "cap": cap}, timeout_s, cap=cap + 64)
        if reply[0] == "ok" and len(reply) == 2:
            return ["ok", self._decode(reply[1], handles)]
        if reply[0] in ("big", "exc"):
            return reply
        self._die("the sample broke the reply protocol")
        raise CandidateDied(self.dead)

    def close(self) -> None:
        self._die("closed")
        self._sel.close()
        self._proc.finish()
        remove_workdir(self.workdir)

    def __enter__(self) -> "CandidateSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _no_extensions(code, data):
    raise ValueError("unexpected extension in a reply envelope")
