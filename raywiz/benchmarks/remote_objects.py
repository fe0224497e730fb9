"""Proxies of the candidate's objects, for DS-1000's Matplotlib tests in the trusted checker.

A Matplotlib problem's test inspects the figures of the process that drew them (``plt.gca()``,
``ax.get_lines()``, ``line.get_xdata()``...). The checker (raywiz.benchmarks.ds1000_check) runs that
test itself, on proxies: the candidate's drawing code runs in a child of its sandboxed process
(CandidateSession.run with ``objects``), which then stays and serves its objects. Every attribute
read, call, operator, iteration, ``len``, comparison or conversion the test does on a proxy is one
request to that child (sandbox/harness.py, _serve_objects), which does it on the real object and replies
a plain value (the bounded codec, never a pickle of the candidate's objects) or a handle, which
becomes a new proxy here. Lists and dicts of artists come back as local lists and dicts of proxies.

What a proxy does not do, and the bounds:
  - ``isinstance``: a proxy's ``__class__`` is the evaluator's own class when the object's type (or
    one of its bases) is in ALLOWED_CLASSES, by qualified name; otherwise ``RemoteObject``.
    ``type(proxy)`` is always ``RemoteObject``: a test that checks ``type(x) == Line2D`` fails.
  - Setting or deleting an attribute or an item of a proxy fails the sample (RemoteObjectError).
  - Comparing a proxy with a plain value (``ax.get_title() == "Y"`` where the sample made get_title
    return an object) is not asked of the sample: the object equals nothing plain, as a real artist
    does; ``in`` with a plain item iterates and compares here. Two proxies compare in the child.
  - At most MAX_REQUESTS requests and MAX_REPLY_BYTES bytes of replies (saved images included) per
    sample; more fails the sample (RemoteLimitExceeded), as does the candidate's time running out.
  - A reply is what the candidate's process says about its own objects: a sample can set what its
    own artists report, which is the same as drawing them. It cannot reach the test's comparisons
    (numpy, PIL and the assertions run here), the reference image, or the verdict.
"""

from __future__ import annotations

import re
import sys
from typing import Callable

from raywiz.benchmarks.sandbox import candidate_exception

MAX_REQUESTS = 20_000
MAX_REPLY_BYTES = 64 << 20

# The classes a test's isinstance may see (their module and qualified name as in this interpreter;
# the candidate's process runs the same installation). Missing ones (an older matplotlib) are skipped.
ALLOWED_CLASSES = (
    "numpy.ndarray",
    "matplotlib.artist.Artist", "matplotlib.figure.Figure", "matplotlib.figure.SubFigure", "matplotlib.axes.Axes",
    "matplotlib.axis.Axis", "matplotlib.axis.XAxis", "matplotlib.axis.YAxis", "matplotlib.axis.Tick",
    "matplotlib.lines.Line2D", "matplotlib.text.Text", "matplotlib.text.Annotation", "matplotlib.legend.Legend",
    "matplotlib.image.AxesImage", "matplotlib.spines.Spine", "matplotlib.table.Table",
    "matplotlib.collections.Collection", "matplotlib.collections.PathCollection",
    "matplotlib.collections.PolyCollection", "matplotlib.collections.LineCollection",
    "matplotlib.collections.QuadMesh", "matplotlib.collections.FillBetweenPolyCollection",
    "matplotlib.patches.Patch", "matplotlib.patches.Rectangle", "matplotlib.patches.Wedge",
    "matplotlib.patches.Polygon", "matplotlib.patches.Circle", "matplotlib.patches.Ellipse",
    "matplotlib.patches.PathPatch", "matplotlib.patches.FancyBboxPatch",
    "matplotlib.container.Container", "matplotlib.container.BarContainer",
    "matplotlib.container.ErrorbarContainer", "matplotlib.container.StemContainer",
    "matplotlib.colors.Colormap", "matplotlib.colors.ListedColormap", "matplotlib.colors.LinearSegmentedColormap",
    "matplotlib.ticker.Formatter", "matplotlib.ticker.Locator", "matplotlib.ticker.ScalarFormatter",
    "matplotlib.ticker.FixedLocator", "matplotlib.ticker.FuncFormatter",
)
# Modules whose state is the drawing's: the test gets the candidate's (a proxy). Every other module
# a program bound is the evaluator's own copy where that is one it trusts (TRUSTED_MODULES).
DRAWING_MODULES = ("matplotlib.pyplot", "seaborn")
TRUSTED_MODULES = ("numpy", "pandas", "scipy", "PIL", "matplotlib")


class RemoteLimitExceeded(BaseException):
    """The sample's objects took more requests or reply bytes than a sample may (BaseException: the
    test's own `except Exception` must not swallow it)."""


class RemoteObjectError(BaseException):
    """The test did what a proxy does not do (set an attribute...): that sample fails."""


def _allowed() -> dict[str, type]:
    import importlib

    out = {}
    for path in ALLOWED_CLASSES:
        module, _, name = path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        out[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return out


class RemoteObjects:
    """The objects of one sample's drawing child, as the trusted checker sees them: proxies, the
    request and byte bounds, and `run` (the candidate's program, kept for its objects).

    `budget()`: the candidate's time left (seconds) for the next request."""

    def __init__(self, session, budget: Callable[[], float], max_requests: int = MAX_REQUESTS,
                 max_reply_bytes: int = MAX_REPLY_BYTES):
        self.session, self.budget = session, budget
        self.max_requests, self.max_reply_bytes = max_requests, max_reply_bytes
        self.requests = self.reply_bytes = 0
        self._proxies: dict[str, RemoteObject] = {}
        self._proxies_of = -1  # the session's run they belong to
        self._classes = _allowed()
        self._class_refs = {cls: f"c:{cls.__module__}:{cls.__qualname__}" for cls in self._classes.values()}

    # -- the program

    def run(self, code: str, env: dict, timeout_s: float, files: list[str] = (), **kwargs) -> tuple[dict, dict]:
        """CandidateSession.run, its child kept: (its globals: plain values, proxies and modules;
        the `files` it saved, as bytes, within the byte bound)."""
        fetched: dict[str, bytes] = {}
        values = self.session.run(code, env, timeout_s, objects=self, files=list(files),
                                  files_cap=max(0, self.max_reply_bytes - self.reply_bytes), fetched=fetched,
                                  **kwargs)
        self.reply_bytes += sum(len(b) for b in fetched.values())
        return values, fetched

    @property
    def generation(self) -> int:
        """The session's run whose child serves objects now: proxies of an earlier one are stale
        (the same handle ids name other objects in a new child)."""
        return self.session.runs

    def module(self, name: str) -> "RemoteObject":
        """The drawing child's module `name` (its pyplot: the figures it drew)."""
        return self.request({"act": "module", "name": name})

    def module_value(self, name: str, importable: bool = False):
        """What a module the candidate's program bound stands for here: a trusted one as the
        evaluator's own copy (trusted_module), any other (pyplot, seaborn...) as a proxy."""
        return trusted_module(name, importable) or self.module(name)

    # -- requests

    def request(self, request: dict):
        if self.requests >= self.max_requests:
            raise RemoteLimitExceeded(f"the test made more than {self.max_requests} requests to the sample's objects")
        self.requests += 1
        cap = self.max_reply_bytes - self.reply_bytes
        reply = self.session.objects(request, max(0.0, self.budget()), cap, self.proxy)
        self.reply_bytes += self.session.last_reply_bytes
        if reply[0] == "big" or self.reply_bytes > self.max_reply_bytes:
            raise RemoteLimitExceeded(f"the sample's objects replied more than {self.max_reply_bytes} bytes")
        if reply[0] == "exc":
            raise candidate_exception(reply[1], reply[2] if len(reply) > 2 and isinstance(reply[2], str) else "")
        return reply[1]

    def encode(self, value) -> bytes:
        """An argument for the child: plain values, this run's proxies (as references) and allowed classes."""
        return self.session._codec.encode(value, ref=self._ref)

    def _ref(self, o) -> str | None:
        if type(o) is RemoteObject:
            return _check(o)._ro_id
        if isinstance(o, type):
            return self._class_refs.get(o)
        return None

    def proxy(self, hid: str, type_names: list[str]) -> "RemoteObject":
        """The proxy of handle `hid` (one per handle: `is` holds between two of the same object)."""
        if self._proxies_of != self.generation:
            self._proxies, self._proxies_of = {}, self.generation
        proxy = self._proxies.get(hid)
        if proxy is None:
            cls = next((self._classes[n] for n in type_names if n in self._classes), None)
            proxy = self._proxies[hid] = RemoteObject(self, hid, cls, type_names[0] if type_names else "?")
        return proxy


def trusted_module(name: str, importable: bool = False):
    """The evaluator's own copy of module `name`, or None: a module of the standard library or of
    TRUSTED_MODULES that this process has imported, a TRUSTED_MODULES package, or (`importable`: a
    name the problem's own code imports) a module of theirs. A name only the candidate chose never
    makes this process import a standard module (`antigravity` would open a browser here)."""
    import importlib

    top = name.partition(".")[0]
    if name in DRAWING_MODULES or name.startswith(tuple(m + "." for m in DRAWING_MODULES)):
        return None  # (the drawing's state is the candidate's process's)
    if name in sys.modules and (top in sys.stdlib_module_names or top in TRUSTED_MODULES):
        return sys.modules[name]
    if top not in TRUSTED_MODULES and not (importable and top in sys.stdlib_module_names):
        return None
    if (name != top and not importable) or not re.fullmatch(r"[A-Za-z_][\w.]{0,199}", name):
        return None
    try:
        return importlib.import_module(name)
    except Exception:  # noqa: BLE001 - e.g. a module this interpreter lacks
        return None


def _check(proxy: "RemoteObject") -> "RemoteObject":
    client = object.__getattribute__(proxy, "_ro_client")
    if object.__getattribute__(proxy, "_ro_gen") != client.generation:
        raise ReferenceError("an object of an earlier run of the sample (its process is gone)")
    return proxy


def _ask(proxy: "RemoteObject", act: str, **fields):
    _check(proxy)
    client = object.__getattribute__(proxy, "_ro_client")
    request = {"act": act, "id": object.__getattribute__(proxy, "_ro_id"), **fields}
    for key in ("args", "kwargs"):
        if key in request:
            request[key] = client.encode(request[key])
    return client.request(request)


def _op(name: str):
    def method(self, *args):
        return _ask(self, "op", name=name, args=list(args))

    method.__name__ = name
    return method


def _compare(name: str):
    """Comparisons between two of the sample's objects are its own (e.g. Colormap's); with a plain
    value, the object stands for itself, as an artist compared with a str does (equal to nothing):
    an always-equal object the sample made cannot meet the test's expected value."""

    def method(self, other):
        if type(other) is RemoteObject:
            return _ask(self, "op", name=name, args=[other])
        return NotImplemented

    method.__name__ = f"__{name}__"
    return method


def _refuse(what: str):
    def method(self, *args):
        raise RemoteObjectError(f"the test {what} one of the sample's objects, which a proxy does not do "
                                "(raywiz.benchmarks.remote_objects)")

    return method


class RemoteObject:
    """One of the candidate's objects, held by the child that made it: every use is a request."""

    __slots__ = ("_ro_client", "_ro_id", "_ro_class", "_ro_gen", "_ro_type")

    def __init__(self, client: RemoteObjects, hid: str, cls: type | None, type_name: str):
        for name, value in (("_ro_client", client), ("_ro_id", hid), ("_ro_class", cls),
                            ("_ro_gen", client.generation), ("_ro_type", type_name)):
            object.__setattr__(self, name, value)

    @property
    def __class__(self):  # isinstance's second look: the allowed class, else RemoteObject itself
        return object.__getattribute__(self, "_ro_class") or RemoteObject

    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)  # (numpy & co probe for protocols; the object's own are not asked)
        return _ask(self, "getattr", name=name)

    def __call__(self, *args, **kwargs):
        return _ask(self, "call", args=list(args), kwargs=kwargs)

    def __getitem__(self, key):
        if isinstance(key, slice):
            return _ask(self, "getitem", args=[key.start, key.stop, key.step], slice=True)
        return _ask(self, "getitem", args=[key])

    def __iter__(self):
        return iter(_ask(self, "iter"))

    def __contains__(self, item):
        if type(item) is RemoteObject:
            return _ask(self, "op", name="contains", args=[item])
        return any(x is item or x == item for x in self)  # a plain item: compared here (see _compare)

    def __len__(self):
        return _ask(self, "op", name="len", args=[])

    def __bool__(self):
        return _ask(self, "op", name="truth", args=[])

    def __hash__(self):
        return hash(("RemoteObject", object.__getattribute__(self, "_ro_id")))

    def __str__(self):
        return _ask(self, "op", name="str", args=[])

    def __repr__(self):
        return f"<the sample's {object.__getattribute__(self, '_ro_type')} object>"

    def __format__(self, spec):
        return _ask(self, "op", name="format", args=[spec])

    def __array__(self, dtype=None, copy=None):
        import numpy as np

        return np.asarray(_ask(self, "op", name="array", args=[]), dtype=dtype)

    def __dir__(self):
        return _ask(self, "op", name="dir", args=[])

    def __reduce_ex__(self, protocol):
        raise TypeError("the sample's objects cannot be pickled or copied")

    __setattr__ = _refuse("set an attribute of")
    __delattr__ = _refuse("deleted an attribute of")
    __setitem__ = _refuse("set an item of")
    __delitem__ = _refuse("deleted an item of")


for _name in ("eq", "ne", "lt", "le", "gt", "ge"):
    setattr(RemoteObject, f"__{_name}__", _compare(_name))
for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "neg", "pos", "abs", "invert", "index",
              "float", "int", "complex", "round", "next"):
    setattr(RemoteObject, f"__{_name}__", _op(_name))
for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow"):
    setattr(RemoteObject, f"__r{_name}__", _op(f"r{_name}"))
for _name in ("and", "or", "xor"):
    setattr(RemoteObject, f"__{_name}__", _op(f"{_name}_"))
    setattr(RemoteObject, f"__r{_name}__", _op(f"r{_name}_"))
