"""The wire between the evaluator and the sandboxed process: length-prefixed frames and the plain-value codec.

Both sides import this file: the evaluator as ``raywiz.benchmarks.sandbox.protocol``, the harness (inside
the sandbox) by path. So it uses the standard library (plus msgpack, numpy and DS-1000's libraries where a
value needs them) and never imports raywiz.
"""

from __future__ import annotations

import os
import sys
import time

FRAME_HEADER = 4  # bytes: big-endian length of each frame on both channels


def write_frame(data: bytes, fd: int) -> None:
    """One length-prefixed frame on `fd`."""
    for part in (len(data).to_bytes(FRAME_HEADER, "big"), data):  # no joined copy of a large reply
        view = memoryview(part)
        while view:
            view = view[os.write(fd, view):]

def read_exact(fd: int, n: int) -> bytes | None:
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
    header = read_exact(fd, FRAME_HEADER)
    return None if header is None else read_exact(fd, int.from_bytes(header, "big"))


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


# What one decode may cost, so that a reply costs what it weighs: containers (lists, dicts, tuples,
# sets...) at most one per DECODE_BYTES_PER_CONTAINER bytes of the reply above a floor (an empty list
# is one byte on the wire and 56 in memory; a list of one-item lists is two bytes each), CPU time
# under the caller's limit, and no hashing that can go quadratic (hashable_safely).
DECODE_BYTES_PER_CONTAINER = 2
DECODE_MIN_CONTAINERS = 1 << 16
MAX_HASHED = 1 << 22  # elements of one set, keys of one dict
MAX_EQUAL_HASHES = 8  # distinct values of one hash in one set or dict: more is a collision attack
_CLOCK_EVERY = 1024  # hooks between looks at the CPU clock


def _hashable_plain(x, depth: int = 0) -> bool:
    """A value whose hash and equality run no code of the sample's: a primitive, or a tuple or
    frozenset of them (numpy scalars of the codec's dtypes and pandas' time scalars included: a
    DataFrame's to_dict() may be keyed by Timestamps)."""
    t = type(x)
    if t in (str, bytes, int, float, bool, complex) or x is None:
        return True
    if t in (tuple, frozenset) and depth < MAX_EXT_DEPTH:
        return all(_hashable_plain(i, depth + 1) for i in x)
    np, pd = sys.modules.get("numpy"), sys.modules.get("pandas")
    if np is not None and isinstance(x, np.generic):
        return x.dtype.kind in _NP_KINDS
    return pd is not None and (t in (pd.Timestamp, pd.Timedelta) or x is pd.NaT)


def hashable_safely(items: list) -> bool:
    """Whether a set (or a dict's keys) can be built from `items` in linear time: at most MAX_HASHED
    plain values, and at most MAX_EQUAL_HASHES distinct ones per hash value (ints, floats and tuples
    of them hash predictably: 100k distinct ints of one hash made a 1 MB reply cost 44 s of CPU with
    the GIL held). Hash values are ints that do not collide with each other, so the grouping is linear."""
    if len(items) > MAX_HASHED:
        return False
    groups: dict[int, list] = {}
    for x in items:
        if not _hashable_plain(x):
            return False
        same = groups.setdefault(hash(x), [])
        if not any(x is y or x == y for y in same):
            if len(same) >= MAX_EQUAL_HASHES:
                return False
            same.append(x)
    return True


def decode(data: bytes, refs: dict | None = None, extended: bool = False, handles=None, *,
           cpu_s: float | None = None, max_containers: int | None = None):
    """The inverse of `encode`, safe on hostile bytes: raises ValueError (or TypeError) for anything else.
    `refs` (the candidate's side only) resolves RemoteRef names; the evaluator passes None.
    `extended`: also DS-1000's values (pandas, scipy sparse, torch, numpy object arrays).
    `handles(id, type_names)` (the evaluator's side, DS-1000's Matplotlib problems): the proxy for a
    handle, which is checked first (an id, at most 16 names of at most 200 characters).

    Bounded: bytes (the caller's cap on the frame), depth (msgpack's stack, MAX_EXT_DEPTH extensions),
    containers (`max_containers`, by default one per DECODE_BYTES_PER_CONTAINER bytes), CPU time of
    this thread (`cpu_s`); sets and dict keys arrive as lists, are checked with hashable_safely, and
    only then are hashed. All in linear time: decoding cannot hold the GIL for long per byte."""
    import msgpack

    depth = [0]
    left = [max_containers if max_containers is not None else
            max(DECODE_MIN_CONTAINERS, len(data) // DECODE_BYTES_PER_CONTAINER)]
    hooks = [0]
    cpu_deadline = time.thread_time() + cpu_s if cpu_s is not None else None

    def spend() -> None:  # one container more
        left[0] -= 1
        if left[0] < 0:
            raise ValueError("more containers than its size allows")
        hooks[0] += 1
        if cpu_deadline is not None and hooks[0] % _CLOCK_EVERY == 0 and time.thread_time() > cpu_deadline:
            raise ValueError("decoding it took longer than the sample's time")

    def on_list(lst):
        spend()
        return lst

    def on_map(pairs):
        spend()
        if not hashable_safely([k for k, _ in pairs]):
            raise ValueError("dict keys that are not plain, or too many of one hash")
        return dict(pairs)

    def hook(code, payload):
        spend()
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
            if code == EXT_TUPLE and type(inner) is list:
                return tuple(inner)
            if code in (EXT_SET, EXT_FROZENSET) and type(inner) is list:
                if refs is None and not hashable_safely(inner):  # (the candidate's side may hold its refs)
                    raise ValueError("a set whose elements are not plain, or too many of one hash")
                return set(inner) if code == EXT_SET else frozenset(inner)
            if code == EXT_COMPLEX and type(inner) is list and len(inner) == 2 and all(type(x) is float for x in inner):
                return complex(*inner)
            if code in (EXT_NDARRAY, EXT_NPSCALAR):
                return _decode_numpy(code, inner)
            raise ValueError(f"malformed value (extension {code})")
        finally:
            depth[0] -= 1

    def unpack(b):
        # Maps come as pairs (on_map), so msgpack itself hashes no key.
        return msgpack.unpackb(b, ext_hook=hook, list_hook=on_list, object_pairs_hook=on_map, strict_map_key=False,
                               raw=False, use_list=True, unicode_errors="surrogatepass")

    try:
        return unpack(data)
    except (ValueError, TypeError, KeyError, OverflowError, UnicodeDecodeError, RecursionError, MemoryError) as e:
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
    if count * dtype.itemsize != len(inner[2]) or (dtype.itemsize == 0 and count > 0):
        raise ValueError("numpy data does not match its shape")  # (zero-size items: any shape, no bytes)
    return np.frombuffer(inner[2], dtype=dtype).reshape(shape).copy()


# DS-1000's values. Encoding (the candidate's side) reads only public attributes; decoding (the
# evaluator's) rebuilds each value with the library's own constructors from plain parts: arrays,
# strings checked against a pattern, ints. Anything else is a ValueError, i.e. "not a plain value".
MAX_SPARSE_DIMS = 1 << 20  # rows + columns of a sparse matrix with few entries
MAX_RANGE_INDEX = 1 << 24
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
        if not all(type(n) is int and n >= 0 for n in shape) or sum(shape) > max(MAX_SPARSE_DIMS, 16 * (len(data) + 1)):
            # CSR/CSC conversion allocates one int per row or column: a 60-byte description of a
            # huge empty matrix became 3 GB in the checker. The dims may exceed its entries 16-fold.
            raise ValueError("a sparse matrix whose shape is out of proportion to its entries")
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
        if part[3] == 0 or len(range(part[1], part[2], part[3])) > MAX_RANGE_INDEX:
            raise ValueError("a RangeIndex longer than any DS-1000 value")  # three ints, any length
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
