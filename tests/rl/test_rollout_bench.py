"""bench/rl_step.py's CPU smoke run (--tiny) in this process, on the shared local Ray cluster: every key
the issue's Benchmark section lists, with numbers that add up."""

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "rl_step.py"


def _bench():
    spec = importlib.util.spec_from_file_location("rl_step", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_bench_task_program_parses():
    bench = _bench()
    tasks = bench.bench_tasks(164)
    assert len({t.prompt for t in tasks}) == 164 and all(t.test_list for t in tasks)
    for task in tasks[:40]:
        compile(bench.toy_program(task, 'e"; whatever follows\nis cut'), task.task_id, "exec")


def test_tiny_run_writes_the_issues_keys(ray_local, tmp_path):
    out = tmp_path / "rl_step.json"
    assert _bench().main(["--tiny", "--prompts", "2", "--group-size", "2", "--max-new-tokens", "8",
                          "--naive-prompts", "1", "--offline-prompts", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    raywiz, naive = report["raywiz"], report["naive"]
    assert report["card"] == "cpu" and report["prompts"] == 2 and report["group_size"] == 2
    for key in ("step_s", "generate_s", "score_s", "update_s", "sync_s", "gen_tokens_per_s"):
        assert raywiz[key] >= 0, key
    assert 0 < raywiz["generated_tokens"] <= 2 * 2 * 8
    assert raywiz["generate_s"] + raywiz["score_s"] + raywiz["update_s"] + raywiz["sync_s"] <= raywiz["step_s"]
    assert raywiz["sync_s"] < 0.1  # in place: nothing to send
    assert naive["prompts_measured"] == 1 and naive["scaled_to_prompts"] == 2
    assert naive["step_s"] == pytest.approx(2 * sum(naive["measured_step"][k] for k in
                                                   ("generate_s", "score_s", "update_s", "sync_s")), rel=0.01)
    assert report["speedup"] == pytest.approx(naive["step_s"] / raywiz["step_s"], rel=0.02)
    assert report["offline_gen_tokens_per_s"] > 0 and report["offline_prompts"] == 2
    assert set(report["targets"]) == {"speedup_at_least_5x", "generation_at_least_70pct_of_offline",
                                      "score_share_under_10pct"}
