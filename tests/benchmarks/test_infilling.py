"""HumanEval infilling: the three shipped files load into Task, and scoring (prompt + middle + suffix, then
HumanEval's check, in the sandbox) passes the canonical middles and fails wrong ones."""

import json
import os
import subprocess
import sys

import pytest

from raywiz.benchmarks import INFILL_BENCHMARKS, canonical_name, load_tasks
from raywiz.benchmarks.score import ScoreSettings, check_completion, score_samples
from tests.datafiles import require_data

pytestmark = pytest.mark.slow
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COUNTS = {"humaneval-infill-single": 1033, "humaneval-infill-multi": 5815, "humaneval-infill-span": 164}


@pytest.fixture(scope="module")
def infill_data():
    return require_data(*INFILL_BENCHMARKS)


@pytest.mark.parametrize("name", INFILL_BENCHMARKS)
def test_files_load_as_tasks(infill_data, name):
    tasks = load_tasks(name)
    assert len(tasks) == COUNTS[name]
    assert canonical_name(name.replace("-", "_")) == name
    t = tasks[0]
    assert t.benchmark == name and t.suffix and t.solution and t.test and t.entry_point
    assert t.task_id.split("/")[1:3] == ["HumanEval", "0"]


@pytest.mark.parametrize("name,stride", [("humaneval-infill-single", 97), ("humaneval-infill-multi", 571),
                                         ("humaneval-infill-span", 17)])
def test_canonical_middles_pass_and_wrong_ones_fail(infill_data, name, stride):
    tasks = load_tasks(name)[::stride]
    # Wrong middles: none at all (the program lacks its span), and another task's middle.
    samples = [{"task_id": t.task_id, "completion": t.solution} for t in tasks]
    samples += [{"task_id": t.task_id, "completion": ""} for t in tasks if t.solution.strip()]
    samples += [{"task_id": t.task_id, "completion": other.solution}
                for t, other in zip(tasks, tasks[1:]) if other.solution.strip() != t.solution.strip()]
    verdicts = score_samples(name, tasks, samples, ScoreSettings(workers=2), allow_partial=True)
    n = len(tasks)
    assert all(v.passed for v in verdicts[:n]), [(v.task_id, v.result) for v in verdicts[:n] if not v.passed]
    assert not any(v.passed for v in verdicts[n:]), [v.task_id for v in verdicts[n:] if v.passed]


def test_a_subtly_wrong_middle_fails_and_the_suffix_is_part_of_the_program(infill_data):
    task = {t.task_id: t for t in load_tasks("humaneval-infill-span")}["RandomSpanInfillingLight/HumanEval/32/1"]
    assert task.solution == " poly(xs, center) * poly(xs, begin) > 0"
    assert check_completion("humaneval-infill-span", task, task.solution).passed
    flipped = check_completion("humaneval-infill-span", task, task.solution.replace(">", "<"))
    assert not flipped.passed and flipped.result.startswith(("failed", "timed out"))
    # The middle with the suffix already written out again is no longer a program (the suffix is appended)
    assert not check_completion("humaneval-infill-span", task, task.solution + task.suffix + "\n    pass").passed


def test_eval_score_cli_reports_pass_at_k(tmp_path, infill_data):
    tasks = load_tasks("humaneval-infill-single")[:2]
    rows = [{"task_id": t.task_id, "completion": c} for t in tasks for c in (t.solution, "    return None\n")]
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = subprocess.run([sys.executable, "-m", "raywiz.cli", "eval", "score", "--benchmark", "humaneval-infill-single",
                        str(path), "--partial", "--json", "--k", "1,2"], capture_output=True, text=True, cwd=REPO,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["benchmark"] == "humaneval-infill-single" and summary["n_samples"] == 4
    assert summary["pass@1"] == pytest.approx(0.5) and summary["pass@2"] == pytest.approx(1.0)


def test_eval_run_takes_infilling_benchmarks_by_either_spelling():
    """eval run generates the middles (tests/eval/test_infill_eval.py); unknown names are still refused."""
    from pydantic import ValidationError

    from raywiz.eval.config import EvalConfig

    assert EvalConfig(benchmarks=["humaneval_infill_multi", "humaneval-infill-span"]).benchmarks == [
        "humaneval-infill-multi", "humaneval-infill-span"]
    with pytest.raises(ValidationError, match="humaneval-infill-double"):
        EvalConfig(benchmarks=["humaneval-infill-double"])
