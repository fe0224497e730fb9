"""`raywiz eval run` end to end: a run directory with two checkpoints, an OpenAI-compatible server on
127.0.0.1 that answers like a perfect instruction model (the references, in a ```python block), and
WizardCoder's prompts and post-processing in between; plus the evaluation core (evaluate_model) inside a Ray task."""

import json
import os

import pytest

from raywiz.artifacts import check_manifest, write_manifest
from raywiz.config import parse_job
from raywiz.benchmarks import load_tasks
from raywiz.benchmarks.prompts import build_prompt
from tests.eval.conftest import answering_server
from tests.ops.wandb_offline import find_runs

pytestmark = pytest.mark.slow


def oracle_answers(benchmarks, limit):
    answers = {}
    for b in benchmarks:
        for t in load_tasks(b)[:limit]:
            code = t.prompt + t.solution if b.startswith("humaneval") else t.solution
            answers[build_prompt(t)] = (f"Here is the script:\n```python\n{code.replace('    ', chr(9))}\n```\n"
                                        "if __name__ == \"__main__\":\n    print('demo')")
    return answers


@pytest.fixture
def oracle_server():
    answers = {}
    with answering_server(lambda body: answers.get(body["prompt"], "I don't know.")) as url:
        yield answers, url


def make_checkpoint(run_dir, step):
    hf = os.path.join(run_dir, "train", f"checkpoint_{step:08d}", "hf")
    os.makedirs(hf)
    with open(os.path.join(hf, "raywiz.json"), "w") as f:
        json.dump({"step": step, "run": "r", "base_model": "tiny-gpt-bigcode", "template": "wizardcoder"}, f)
    write_manifest(hf, "hf_export", meta={"step": step})
    return hf


def test_eval_run_scores_every_checkpoint_and_plots(tmp_path, oracle_server, have_shared_data, capsys, monkeypatch):
    from raywiz.eval import recipe

    answers, url = oracle_server
    answers.update(oracle_answers(["humaneval+", "mbpp"], 3))
    answers[build_prompt(load_tasks("mbpp")[2])] = "```python\ndef wrong():\n    return 0\n```"  # one failure
    job = parse_job({"name": "r", "storage": str(tmp_path), "wandb": {"enabled": True, "mode": "offline"}, "eval": {
        "benchmarks": ["humaneval+", "mbpp"], "checkpoints": ["all"], "limit": 3, "k": [1],
        "generation": {"backend": "openai", "base_url": url, "model": "wizard"}}})
    make_checkpoint(job.run_dir, 10)
    incomplete = make_checkpoint(job.run_dir, 20)
    os.remove(os.path.join(incomplete, "manifest.json"))  # still being written: must be skipped
    make_checkpoint(job.run_dir, 30)
    results = recipe.run_eval(job)
    assert [r["checkpoint"] for r in results] == ["checkpoint_00000010", "checkpoint_00000030"]
    for r in results:
        for b, expected in (("humaneval+", 1.0), ("mbpp", 2 / 3)):
            out = os.path.join(job.run_dir, "eval", r["checkpoint"], b)
            assert check_manifest(out, kind="eval_results").complete
            summary = json.load(open(os.path.join(out, "summary.json")))
            assert summary["n_tasks"] == 3 and summary["pass@1"] == pytest.approx(expected)
            sample = json.loads(open(os.path.join(out, "samples.jsonl")).readline())
            assert "```" not in sample["completion"] and "__main__" not in sample["completion"]
    printed = capsys.readouterr().out
    assert "checkpoint_00000030" in printed and "100.0" in printed and "66.7" in printed
    assert os.path.getsize(os.path.join(job.run_dir, "eval", "pass_at_1.png")) > 1000
    # Logged to W&B (offline), read back from the run's files: a per-task table per benchmark
    # (a row per checkpoint and task) and the pass@1-per-checkpoint plot.
    [logged] = [r for r in find_runs(job.run_dir) if r.job_type == "eval"]
    for key, n_rows in (("eval/humaneval+/tasks", 6), ("eval/mbpp/tasks", 6)):
        ref = next(h[key] for h in logged.history if key in h)
        assert ref["_type"] == "table-file" and ref["nrows"] == n_rows
    table_file = next(f for f in logged.files if f.startswith("media/table/eval/humaneval+/tasks"))
    table = json.load(open(os.path.join(os.path.dirname(logged.path), "files", table_file)))
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert {(r["checkpoint"], r["task_id"]) for r in rows} == {
        (c, f"HumanEval/{i}") for c in ("checkpoint_00000010", "checkpoint_00000030") for i in range(3)}
    assert all(r["passed"] and r["n_samples"] == 1 and r["pass@1"] == 1.0 and r["base_status"] == "pass"
               and r["plus_status"] == "pass" for r in rows)
    mbpp_file = next(f for f in logged.files if f.startswith("media/table/eval/mbpp/tasks"))
    mbpp = json.load(open(os.path.join(os.path.dirname(logged.path), "files", mbpp_file)))
    mbpp_rows = [dict(zip(mbpp["columns"], row)) for row in mbpp["data"]]
    failed = {r["task_id"] for r in mbpp_rows if not r["passed"]}
    assert failed == {load_tasks("mbpp")[2].task_id}
    assert all(r["pass@1"] == (0.0 if r["task_id"] in failed else 1.0) for r in mbpp_rows)
    plot = next(h["eval/pass_at_1_per_checkpoint"] for h in logged.history if "eval/pass_at_1_per_checkpoint" in h)
    assert plot["_type"] == "image-file"
    # A rerun finds the sealed results and neither generates nor scores again.
    from raywiz.benchmarks import evaluate

    monkeypatch.setattr(evaluate, "generate_samples", lambda *a: pytest.fail("regenerated"))
    monkeypatch.setattr(evaluate, "score_samples", lambda *a, **k: pytest.fail("rescored"))
    assert recipe.run_eval(job)[1]["pass@1"] == {"humaneval+": 1.0, "mbpp": pytest.approx(2 / 3)}


def test_cli_eval_run_with_a_plain_model_dir(tmp_path, oracle_server, have_shared_data):
    import subprocess
    import sys

    answers, url = oracle_server
    answers.update(oracle_answers(["humaneval+"], 2))
    model_dir = tmp_path / "models" / "wizard-7b"
    model_dir.mkdir(parents=True)
    job = tmp_path / "job.yaml"
    job.write_text(f"name: cli\nstorage: {tmp_path / 'runs'}\neval:\n  benchmarks: [humaneval+]\n  limit: 2\n"
                   f"  generation: {{backend: openai, base_url: '{url}'}}\n")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = subprocess.run([sys.executable, "-m", "raywiz.cli", "eval", "run", str(job), "--checkpoint", str(model_dir),
                        "--set", "eval.k=[1]"], capture_output=True, text=True, cwd=repo, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "wizard-7b" in r.stdout and "100.0" in r.stdout  # the table: pass@1 and base pass@1
    summary = json.load(open(tmp_path / "models" / "eval" / "wizard-7b" / "humaneval+" / "summary.json"))
    assert summary["pass@1"] == 1.0 and summary["base_pass@1"] == 1.0
