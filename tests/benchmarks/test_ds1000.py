"""DS-1000 scoring in both official formats, on the fixture: references pass (one problem per library
in the venv: NumPy, Pandas, SciPy, scikit-learn, PyTorch, Matplotlib), broken answers fail (a wrong
value, an exception, a loop that the problem's string test forbids, a wrong plot). Matplotlib's other
right answers pass one half of its test each: the saved image alone (the image came back from the
sample's directory and matched the reference drawn by the checker) or the axes alone (inspected
through proxies of the objects of the process that drew)."""

import pytest

from raywiz.benchmarks import load_tasks
from raywiz.benchmarks.score import ScoreSettings, score_samples
from tests.benchmarks import ds1000_fixture as fx

pytestmark = pytest.mark.slow


def _problem(task):
    return next(p for p in fx.PROBLEMS if task.task_id in (str(p["id"]), fx.hkunlp_task_id(p)))


@pytest.mark.parametrize("writer", [fx.write_hkunlp_zip, fx.write_xlang])
def test_references_pass_and_broken_answers_fail(tmp_path, writer):
    name = "ds1000_data.zip" if writer is fx.write_hkunlp_zip else "ds1000.jsonl.gz"
    tasks = load_tasks("ds1000", writer(str(tmp_path / name)))
    samples, expected = [], []
    for t in tasks:
        p = _problem(t)
        samples.append({"task_id": t.task_id, "completion": t.solution})
        expected.append(True)
        if p.get("reference_only"):
            continue
        samples.append({"task_id": t.task_id, "completion": fx.BROKEN[p["id"]][0]})
        expected.append(False)
        for right in fx.PASSING.get(p["id"], []):
            samples.append({"task_id": t.task_id, "completion": right})
            expected.append(True)
    verdicts = score_samples("ds1000", tasks, samples, ScoreSettings(workers=2))
    assert [v.passed for v in verdicts] == expected, [(s["task_id"], v.result) for s, v in zip(samples, verdicts)]
    assert all("self_reported" not in v.to_dict() for v in verdicts)
    # the loop answer computes the right numbers: only the string test rejects it
    loop = next(v for s, v in zip(samples, verdicts) if "for row in a" in s["completion"])
    assert "string test" in loop.result or "AssertionError" in loop.result or loop.result == "failed: "


def test_the_checker_has_the_samples_memory_limit_and_a_cpu_deadline():
    """Before: the trusted checker had no limits (a sample's value of gigabytes took 3 GB and 35 s there)."""
    import os
    import signal
    import subprocess
    import sys

    program = """if True:
        from raywiz.benchmarks.ds1000_check import limit_resources
        limit_resources({"sandbox": {"memory_mb": 256}, "cpu_s": 2, "preimport": ["numpy"]})
        import numpy as np
        small = np.ones(1 << 22)  # 32 MB: within the sample's 256 MB
        print("small ok", flush=True)
        try:
            np.ones(1 << 28)  # 2 GB
            print("built", flush=True)
        except MemoryError:
            print("refused", flush=True)
        while True:
            pass
    """
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": root})
    assert proc.stdout.split("\n")[:2] == ["small ok", "refused"], (proc.stdout, proc.stderr[-500:])
    assert proc.returncode == -signal.SIGXCPU, proc.returncode
