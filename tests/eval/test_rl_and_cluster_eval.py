"""`raywiz eval run` on a run whose rl stage wrote checkpoints (rl's final is the one evaluated, under its
own name), and scoring on the Ray cluster's sandbox workers: the same verdicts as the single-process
scorer, and an interrupted scoring resumes from results.partial.jsonl either way."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest

from raywiz.artifacts import RunLayout, model_results_dir, write_manifest
from raywiz.benchmarks import load_tasks
from raywiz.benchmarks.prompts import build_prompt
from raywiz.config import parse_job
from tests.eval.conftest import answering_server
from tests.eval.test_recipe import oracle_answers


def _checkpoint(run_dir: str, step: int, stage: str = "train", sealed: bool = True) -> str:
    hf = RunLayout(run_dir).training(stage).checkpoint(step).hf
    os.makedirs(hf)
    with open(os.path.join(hf, "raywiz.json"), "w") as f:
        json.dump({"step": step, "run": "r", "base_model": "tiny-gpt-bigcode", "template": "wizardcoder"}, f)
    if sealed:
        write_manifest(hf, "hf_export", meta={"step": step})
    return hf


def test_eval_takes_rl_s_final_checkpoint_when_rl_ran(tmp_path):
    from raywiz.eval.recipe import resolve_checkpoints

    run_dir = str(tmp_path / "runs" / "r")
    job = SimpleNamespace(layout=RunLayout(run_dir), model=SimpleNamespace(name_or_path="base/model"))
    assert resolve_checkpoints(job, []) == ["base/model"]
    train_10, train_30 = _checkpoint(run_dir, 10), _checkpoint(run_dir, 30)
    assert resolve_checkpoints(job, []) == [train_30]

    rl_5 = _checkpoint(run_dir, 5, "rl")
    _checkpoint(run_dir, 8, "rl", sealed=False)  # still being written: never evaluated
    assert resolve_checkpoints(job, []) == resolve_checkpoints(job, ["latest"]) == [rl_5]
    assert resolve_checkpoints(job, ["all"]) == [train_10, train_30, rl_5]
    # rl's results have their own directory: train's checkpoint of the same step keeps its own
    assert model_results_dir(rl_5) == os.path.join(run_dir, "eval", "rl-checkpoint_00000005")
    assert model_results_dir(_checkpoint(run_dir, 5)) == os.path.join(run_dir, "eval", "checkpoint_00000005")


@pytest.fixture
def scripted_server():
    """An instruction model that answers HumanEval's first tasks right and MBPP's task 1 wrong."""
    answers = oracle_answers(["humaneval", "mbpp"], 3)
    answers[build_prompt(load_tasks("mbpp")[1])] = "```python\ndef wrong():\n    return 0\n```"
    with answering_server(lambda body: answers.get(body["prompt"], "I don't know.")) as url:
        yield url


def _results(out_dir: str, benchmark: str) -> list[tuple]:
    with open(os.path.join(out_dir, benchmark, "results.jsonl")) as f:
        return [(r["task_id"], r["passed"], r["result"]) for r in map(json.loads, f)]


def test_eval_run_scores_on_the_cluster_with_the_same_verdicts_and_resumes(tmp_path, ray_local, scripted_server,
                                                                           have_shared_data, capsys):
    from raywiz.eval.recipe import run_eval

    def job(name: str, **sandbox):
        return parse_job({"name": name, "storage": str(tmp_path / "runs"), "eval": {
            "benchmarks": ["humaneval", "mbpp"], "limit": 3, "k": [1], "checkpoints": [str(model)],
            "output_dir": str(tmp_path / name), "sandbox": sandbox,
            "generation": {"backend": "openai", "base_url": scripted_server, "model": "wizard"}}})

    from raywiz.eval.recipe import scores_on_cluster

    model = tmp_path / "wizard"  # a plain model directory (the server answers for it)
    model.mkdir()
    for sandbox, expected in (({}, False), ({"workers_per_node": 1}, True), ({"cluster": True}, True),
                              ({"cluster": False, "workers_per_node": 1}, False)):
        asked = job("decide", **sandbox)  # Ray is up (one node): only asking moves scoring onto it
        assert scores_on_cluster(asked, asked.require("eval")) is expected, sandbox
    [local] = run_eval(job("local"))  # one machine, nothing asked: this process scores
    capsys.readouterr()
    [cluster] = run_eval(job("cluster", cluster=True, workers=2))
    assert "by 2 sandbox workers" in capsys.readouterr().err  # the cluster scorer's workers did score
    for benchmark in ("humaneval", "mbpp"):
        assert _results(cluster["out_dir"], benchmark) == _results(local["out_dir"], benchmark)
    assert cluster["pass@1"] == local["pass@1"] == {"humaneval": 1.0, "mbpp": pytest.approx(2 / 3)}

    # A scoring interrupted after one verdict: the rerun (on the cluster) keeps it and scores the rest.
    mbpp = os.path.join(cluster["out_dir"], "mbpp")
    for name in ("manifest.json", "results.jsonl", "summary.json"):
        os.remove(os.path.join(mbpp, name))
    from raywiz.benchmarks.evaluate import sample_key

    first = json.loads(open(os.path.join(mbpp, "samples.jsonl")).readline())
    with open(os.path.join(mbpp, "results.partial.jsonl"), "w") as f:
        f.write(json.dumps({"_index": 0, "_key": sample_key(first), "task_id": first["task_id"], "passed": False,
                            "result": "failed: kept from the earlier run"}) + "\n" + '{"_index": 1, "_ke')
    [resumed] = run_eval(job("cluster", cluster=True, workers=2))
    results = _results(resumed["out_dir"], "mbpp")
    assert results[0][2] == "failed: kept from the earlier run"
    assert results[1:] == _results(local["out_dir"], "mbpp")[1:]
    assert not os.path.exists(os.path.join(mbpp, "results.partial.jsonl"))
