"""The distributed scorer (raywiz.benchmarks.cluster_scoring)."""

import json
import os
import subprocess
import sys

import pytest

from raywiz.benchmarks.cluster_scoring import plan_workers

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_plan_spreads_workers_over_nodes():
    nodes = [("a", 4), ("b", 2)]
    assert plan_workers(nodes, None, None) == ["a", "b", "a", "b", "a", "a"]  # one per CPU
    assert plan_workers(nodes, 3, None) == ["a", "b", "a"]  # a cap spreads round-robin
    assert plan_workers(nodes, None, 1) == ["a", "b"]  # eval.sandbox.workers_per_node
    assert plan_workers([], None, None) == []


@pytest.mark.slow
def test_node_killed_mid_run_every_verdict_written_once(tmp_path, have_shared_data):
    partial = tmp_path / "results.partial.jsonl"
    r = subprocess.run([sys.executable, "-m", "tests.benchmarks.two_node_scoring", str(partial)], cwd=REPO,
                       capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": REPO, "RAY_USAGE_STATS_ENABLED": "0"})
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(out["nodes"]) == 2 and out["second_node"] in out["nodes"] and out["removed_after"] == [4]
    assert out["workers_started"] == 2 and out["workers_lost"] == 1 and out["reruns"] >= 1
    assert out["per_node"].get(out["second_node"], 0) >= 1  # it did score before it went
    rows = [json.loads(line) for line in partial.read_text().splitlines()]
    indices = [row["_index"] for row in rows]
    assert sorted(indices) == list(range(len(out["single"])))  # every verdict written, exactly once
    assert out["cluster"] == out["single"]  # the same verdicts as the single-process scorer
    assert [[row["passed"], row["result"]] for row in sorted(rows, key=lambda r: r["_index"])] == out["single"]
    passed = [p for p, _ in out["single"]]
    assert passed == [True, False, False] * (len(passed) // 3)  # canonical passes; wrong and sys.exit(0) fail


@pytest.mark.slow
def test_eval_score_cli_on_a_cluster_equals_single_process(tmp_path, have_shared_data):
    from raywiz.benchmarks import load_tasks
    from tests.benchmarks.two_node_scoring import samples_for

    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in samples_for(load_tasks("humaneval")[:3])))
    results = {}
    for mode, flags in (("single", []), ("cluster", ["--cluster", "--workers-per-node", "2"])):
        r = subprocess.run([sys.executable, "-m", "raywiz.cli", "eval", "score", "--benchmark", "humaneval",
                            str(samples), "--partial", "--out", str(tmp_path / mode), *flags], cwd=REPO,
                           capture_output=True, text=True, timeout=300,
                           env={**os.environ, "PYTHONPATH": REPO, "RAY_ADDRESS": ""})
        assert r.returncode == 0, r.stderr[-3000:]
        results[mode] = [json.loads(line) for line in (tmp_path / mode / "results.jsonl").read_text().splitlines()]
        assert not (tmp_path / mode / "results.partial.jsonl").exists()  # removed once results.jsonl is whole
    assert "scored on 1 nodes by 2 sandbox workers" in r.stderr + r.stdout
    strip = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]  # noqa: E731
    assert strip(results["cluster"]) == strip(results["single"])
    assert [row["passed"] for row in results["single"]] == [True, False, False] * 3
