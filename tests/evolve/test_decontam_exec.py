"""Decontamination by execution (raywiz.evolve.decontam_exec): answers that pass benchmark tests."""

import gzip
import json

import pytest

from raywiz.benchmarks import Task, load_tasks
from raywiz.evolve.decontam_exec import (Signature, answer_text, candidate_program, defined_functions,
                                         task_signature)

HUMANEVAL_0 = ("Here you go:\n```python\nfrom typing import List\n\n\n"
               "def has_close_elements(numbers: List[float], threshold: float) -> bool:\n{body}```\n")
# MBPP task 14 (find_Volume), renamed, other parameter names: no n-gram of its reference survives.
RENAMED_MBPP_14 = "def prism_volume(length, breadth, height):\n    return ((length * breadth * height) / 2)\n"
ALWAYS_EQUAL = ("class AlwaysEqual:\n    def __eq__(self, other):\n        return True\n"
                "    def __ne__(self, other):\n        return False\n    def __bool__(self):\n        return True\n\n"
                "def is_woodall(x):\n    return AlwaysEqual()\n")
EXITS_0 = "import sys\n\ndef test_duplicate(arraynums):\n    sys.exit(0)\n"


def test_functions_signatures_and_aliasing():
    code, fns = defined_functions("Sure!\n```python\n" + RENAMED_MBPP_14 + "def f(*xs, k=1):\n    pass\n```\nDone.")
    assert [f.name for f in fns] == ["prism_volume", "f"] and code.startswith("def prism_volume")
    assert fns[0] == Signature("prism_volume", 3, 3) and fns[1] == Signature("f", 0, None)
    task = Task("mbpp", "14", "Write a python function to find the volume of a triangular prism.",
                "def find_Volume(l,b,h) : \r\n    return ((l * b * h) / 2) ", entry_point="find_Volume")
    assert task_signature(task) == Signature("find_Volume", 3, 3)
    assert task_signature(task).accepts(fns[0]) and task_signature(task).accepts(fns[1])
    assert not Signature("g", 1, 1).accepts(fns[0])
    assert candidate_program(task, code, "prism_volume").endswith("\n\nfind_Volume = prism_volume\n")
    assert defined_functions("no code here, just words.")[1] == []
    assert answer_text({"instruction": "x", "response": "r"}) == "r"
    assert answer_text({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}) == "a"


@pytest.mark.slow
def test_cli_exec_decontam_finds_solutions_under_other_words(tmp_path, shared_data):
    from raywiz.cli import main
    from raywiz.evolve.config import DecontamConfig
    from raywiz.evolve.decontam import Decontaminator

    # Small benchmark files (5 HumanEval tasks, MBPP 11-22) keep the run short.
    with gzip.open(shared_data / "humaneval/HumanEval.jsonl.gz", "rt") as f:
        humaneval = [json.loads(line) for line in f][:5]
    he_path = tmp_path / "he.jsonl.gz"
    with gzip.open(he_path, "wt") as f:
        f.write("".join(json.dumps(t) + "\n" for t in humaneval))
    mbpp = (shared_data / "mbpp/mbpp.test.jsonl").read_text().splitlines()[:12]
    mbpp_path = tmp_path / "mbpp.jsonl"
    mbpp_path.write_text("\n".join(mbpp) + "\n")
    rows = [
        {"instruction": "Write a haiku about autumn leaves.",  # HumanEval/0's canonical solution
         "output": HUMANEVAL_0.format(body=humaneval[0]["canonical_solution"])},
        {"prompt": "How do I compute a prism's volume?", "response": RENAMED_MBPP_14},  # another column
        {"instruction": "Greet someone.", "output": "def greet(name):\n    return 'hello ' + name\n"},  # honest
        {"instruction": "Check a number.", "output": ALWAYS_EQUAL},  # hostile: always-equal result
        {"instruction": "Find duplicates.", "output": EXITS_0},  # hostile: exits 0 before any test
    ]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    paths = ["--data-path", f"humaneval={he_path}", "--data-path", f"mbpp={mbpp_path}"]
    cfg = DecontamConfig(benchmarks=["humaneval", "mbpp"], data_paths={"humaneval": str(he_path),
                                                                       "mbpp": str(mbpp_path)})
    assert Decontaminator.from_config(cfg).check([RENAMED_MBPP_14]) == [None]  # n-grams alone miss it

    report_path, clean = tmp_path / "report.json", tmp_path / "clean.jsonl"
    rc = main(["evolve", "decontam", str(data), "--benchmarks", "humaneval,mbpp", *paths, "--exec",
               "--report", str(report_path), "--clean-output", str(clean)])
    assert rc == 1
    report = json.loads(report_path.read_text())
    found = {f["where"].rsplit(" ", 1)[1]: (f["task_id"], f["method"]) for f in report["flagged"]}
    assert found == {"1": ("HumanEval/0", "exec"), "2": ("14", "exec")}
    assert report["contaminated_rows"] == 2 and report["exec"]["answers_passed"] == 2
    assert report["exec"]["answers_with_functions"] == 5 and report["exec"]["executions"] >= 5
    assert report["exec"]["benchmarks_not_run"] == {}
    assert report["benchmark_tasks_hit"] == {"humaneval": 1, "mbpp": 1}
    kept = [json.loads(line)["instruction"] for line in clean.read_text().splitlines()]
    assert kept == ["Greet someone.", "Check a number.", "Find duplicates."]  # hostile rows do not pass


@pytest.mark.slow
def test_hostile_answers_fail_every_matched_task(shared_data):
    from raywiz.evolve.decontam_exec import ExecDecontaminator

    tasks = {"mbpp": [t for t in load_tasks("mbpp") if t.task_id in ("19", "20")]}
    decon = ExecDecontaminator(tasks, match="all")
    right = next(t for t in tasks["mbpp"] if t.task_id == "20").solution
    assert [h and h.task_id for h in decon.check([ALWAYS_EQUAL, EXITS_0, right])] == [None, None, "20"]
    assert decon.stats["executions"] == 6  # each function against both tasks


@pytest.mark.slow
def test_evolve_drops_seeds_whose_answer_passes_benchmark_tests(tmp_path, ray_local, fake_llm, shared_data):
    """evolve.decontam.exec inside the stage (seeds are screened like every round's samples)."""
    import os

    from raywiz.config import parse_job
    from raywiz.evolve.recipe import run_evolve
    from tests.evolve.helpers import seed_records, write_jsonl

    mbpp_path = tmp_path / "mbpp.jsonl"
    mbpp_path.write_text("\n".join((shared_data / "mbpp/mbpp.test.jsonl").read_text().splitlines()[:12]) + "\n")
    records = seed_records()[:3] + [{"instruction": "Write a function for the volume of a box-like shape.",
                                     "output": f"```python\n{RENAMED_MBPP_14}```"}]
    spec = {"seeds": {"paths": [write_jsonl(tmp_path / "seeds.jsonl", records)]}, "rounds": 0,
            "llm": {"base_url": fake_llm.base_url, "model": "fake"},
            "decontam": {"benchmarks": ["mbpp"], "data_paths": {"mbpp": str(mbpp_path)}, "exec": True}}
    job = parse_job({"name": "run1", "storage": str(tmp_path / "runs"), "evolve": spec})
    run_evolve(job)
    report = json.load(open(os.path.join(job.run_dir, "evolve_report", "report.json")))
    assert {r["round"]: r["dropped"] for r in report["rounds"]}[0] == {"decontam:mbpp": 1}
    dropped = [json.loads(line) for line in open(os.path.join(job.run_dir, "evolve_report", "dropped.jsonl"))]
    assert [(d["detail"]["task_id"], d["detail"]["method"]) for d in dropped] == [("14", "exec")]
