"""Proxies of a sandboxed drawing's objects (raywiz.benchmarks.remote_objects), which DS-1000's
Matplotlib tests inspect in the trusted checker: plain values come back as values, other objects as
proxies (one per object), isinstance sees allowed classes only, the request and byte bounds and an
attribute set fail cleanly, and the drawing child holds no descriptor of the evaluator's channel."""

import pytest

from raywiz.benchmarks.sandbox import CandidateError, CandidateSession, CandidateTimeout, SandboxSettings

pytest.importorskip("matplotlib")
pytestmark = pytest.mark.slow  # one sandboxed session for the module, and one that times out

import matplotlib.artist  # noqa: E402
import matplotlib.axes  # noqa: E402
import matplotlib.lines  # noqa: E402
import numpy as np  # noqa: E402

from raywiz.benchmarks.remote_objects import (RemoteLimitExceeded, RemoteObject, RemoteObjectError,  # noqa: E402
                                              RemoteObjects)

DRAWING = """
import numpy as np
import matplotlib.pyplot as plt
x = np.arange(10)
fig, ax = plt.subplots()
lines = ax.plot(x, 2 * x, color="red")
ax.set_title("Y")
ax.set_xticks([0, 5])

class Mine:
    def spin(self):
        while True:
            pass

mine = Mine()
plt.savefig("out.png")
"""


@pytest.fixture(scope="module")
def session():
    s = CandidateSession(SandboxSettings(), guard=None, preimport=["numpy", "matplotlib"], cpu_budget_s=120,
                         extended=True)
    yield s
    s.close()


def drawn(session, code=DRAWING, **limits):
    objects = RemoteObjects(session, lambda: 30.0, **limits)
    values, files = objects.run(code, {}, 30.0, files=["out.png", "missing.png"])
    return objects, values, files


def test_plain_values_handles_and_calls(session):
    objects, values, files = drawn(session)
    assert isinstance(values["x"], np.ndarray) and values["x"].tolist() == list(range(10))
    assert list(files) == ["out.png"] and files["out.png"].startswith(b"\x89PNG")  # saved images come back as bytes
    ax = values["ax"]
    assert type(ax) is RemoteObject and ax.get_title() == "Y" and ax.name == "rectilinear"
    lines = ax.get_lines()  # a list of artists: a local list of proxies
    assert type(lines) is list and len(lines) == 1 and lines[0] is values["lines"][0]  # one proxy per object
    assert np.array_equal(lines[0].get_ydata(), 2 * np.arange(10)) and lines[0].get_color() == "red"
    assert objects.module("matplotlib.pyplot").gca() is ax
    assert ax.xaxis.label._text == "" and [t.get_text() for t in ax.get_xticklabels()] == ["0", "5"]
    # proxies as arguments, keyword arguments, allowed classes as arguments, items, iteration, operators
    assert lines[0] in ax.findobj(matplotlib.lines.Line2D) and lines[0] in ax.lines and len(ax.lines) == 1
    assert ax.lines[0] is lines[0] and list(ax.lines)[:1] == lines and ax.lines[0:1] == lines
    assert ax.get_xlim(**{}) == values["fig"].axes[0].get_xlim() and bool(ax.lines)
    assert np.asarray(values["fig"].get_size_inches()).shape == (2,) and str(ax.title) == "Text(0.5, 1.0, 'Y')"
    with pytest.raises(AttributeError, match="no_such"):
        ax.no_such
    assert not hasattr(ax, "no_such") and ax != "Y"


def test_isinstance_sees_allowed_classes_only(session):
    objects, values, _ = drawn(session)
    line, ax, mine = values["lines"][0], values["ax"], values["mine"]
    assert isinstance(line, matplotlib.lines.Line2D) and isinstance(line, matplotlib.artist.Artist)
    assert isinstance(ax, matplotlib.axes.Axes) and not isinstance(ax, matplotlib.lines.Line2D)
    assert not isinstance(mine, matplotlib.artist.Artist) and mine.__class__ is RemoteObject
    assert type(line) is RemoteObject  # the documented limit: type() sees the proxy


def test_comparisons_with_plain_values_are_not_the_samples(session):
    code = DRAWING + """
class AlwaysEqual:
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    def __contains__(self, item): return True
    __hash__ = object.__hash__
    def __iter__(self): return iter(["Z"])
import matplotlib.axes
matplotlib.axes.Axes.get_title = lambda self, *a, **k: AlwaysEqual()
"""
    _, values, _ = drawn(session, code)
    title = values["ax"].get_title()
    assert type(title) is RemoteObject and not title == "Y" and title != "Y" and "Y" not in title
    assert title == title  # between two of its own objects, the sample's own comparison


def test_setting_an_attribute_fails_the_sample(session):
    _, values, _ = drawn(session)
    ax = values["ax"]
    for attempt in (lambda: setattr(ax, "title", "Y"), lambda: delattr(ax, "title"),
                    lambda: ax.lines.__setitem__(0, None)):
        with pytest.raises(RemoteObjectError, match="does not do"):
            attempt()
    with pytest.raises(TypeError, match="pickled"):
        __import__("pickle").dumps(ax)


def test_request_and_byte_bounds_fail_cleanly(session):
    _, values, _ = drawn(session, max_requests=3)
    values["ax"].get_title()  # 2 requests: the method, its call
    with pytest.raises(RemoteLimitExceeded, match="more than 3 requests"):
        values["ax"].get_title()
    _, _, files = drawn(session, max_reply_bytes=1000)
    assert not files  # the saved image is over the bound: it does not come back
    _, values, files = drawn(session, DRAWING + "big = lambda: np.zeros(1 << 20)\n", max_reply_bytes=1 << 20)
    assert files and values["ax"].get_title() == "Y"  # (the image's bytes count too)
    with pytest.raises(RemoteLimitExceeded, match="more than 1048576 bytes"):
        values["big"]()  # 8 MB: the serving parent reads its size, kills the child, and replies why
    with pytest.raises(CandidateError, match="ProgramDied"):  # that child is gone; the session is not
        values["ax"].get_title()
    _, again, _ = drawn(session)
    assert again["ax"].get_title() == "Y"
    with pytest.raises(ReferenceError, match="earlier run"):
        values["ax"].get_title()


def test_the_drawing_child_has_no_descriptor_of_the_evaluators_channel(session):
    code = """
import os, sys
harness = sys.modules["__main__"]
def is_open(fd):
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False
channel = [is_open(fd) for fd in (harness._REQUESTS, harness._RESULTS.fileno())]
"""
    _, values, _ = drawn(session, code)
    assert values["channel"] == [False, False]


def test_an_object_that_never_answers_times_out():
    with CandidateSession(SandboxSettings(), guard=None, preimport=["numpy", "matplotlib"], cpu_budget_s=30,
                          extended=True) as s:
        objects = RemoteObjects(s, lambda: 1.0)
        values, _ = objects.run(DRAWING, {}, 30.0)
        with pytest.raises(CandidateTimeout):
            values["mine"].spin()
