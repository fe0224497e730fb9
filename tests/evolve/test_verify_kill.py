"""SIGKILL a real `raywiz evolve` mid-verify, restart it: no verdict lost or run again, no request re-sent."""

import json
import os
import time
from collections import Counter

import pytest
import yaml

from raywiz.artifacts import check_manifest, verdict_cache_dir
from tests.evolve.fake_llm_server import FakeLLMServer
from tests.evolve.test_kill_resume import cached_keys, finish, kill_when

from .helpers import TOPICS, read_shards, write_jsonl

CONCURRENCY = 4


def verdict_lines(directory) -> Counter:
    """How many times each sandbox run's verdict was written (complete lines only)."""
    counts: Counter = Counter()
    for name in os.listdir(directory) if os.path.isdir(directory) else ():
        with open(os.path.join(directory, name), "rb") as f:
            counts.update(json.loads(line)["key"] for line in f if line.endswith(b"\n"))
    return counts


@pytest.mark.slow
def test_killed_verify_resumes_without_losing_or_rerunning(tmp_path, ray_local):
    ray_address = ray_local.get_runtime_context().gcs_address
    records = [{"instruction": f"Write a Python function that {topic} (variant {v}).", "output": "x = 1"}
               for v in range(3) for topic in TOPICS]
    seeds = write_jsonl(tmp_path / "seeds.jsonl", records)
    with FakeLLMServer(latency_s=0.05) as server:
        job_file = tmp_path / "job.yaml"
        job_file.write_text(yaml.safe_dump({"name": "killed", "storage": str(tmp_path / "runs"), "evolve": {
            "seeds": {"paths": [seeds]}, "rounds": 1, "decontam": {"enabled": False}, "dedup": {"near": False},
            "llm": {"base_url": server.base_url, "model": "fake", "api_key_env": None, "concurrency": CONCURRENCY},
            "verify": {"answers": 2, "tests_per_task": 3, "workers": 2}}}))
        run_dir = tmp_path / "runs" / "killed"
        cache_dir = str(run_dir / "evolve_cache")
        verdicts = verdict_cache_dir(cache_dir)

        # 1. SIGKILL the run (driver, LLM worker, sandbox workers) once some verdicts are saved.
        kill_when(job_file, tmp_path / "run1.log", ray_address, lambda: sum(verdict_lines(verdicts).values()) >= 6,
                  "to verify")
        time.sleep(1.0)
        before = verdict_lines(verdicts)
        answered_before_kill = cached_keys(cache_dir)
        assert not check_manifest(str(run_dir / "evolve")).complete

        # 2. Restart: it finishes; what was answered or run before the kill is not sent or run again.
        finish(job_file, tmp_path / "run2.log", ray_address)
        assert server.wait_idle()
        stats = server.stats()
    assert [k for k in answered_before_kill if stats["requests_by_key"][k] > 1] == []
    assert stats["total_requests"] - stats["unique_keys"] <= CONCURRENCY  # only those in flight at the kill
    after = verdict_lines(verdicts)
    assert all(after[k] == 1 for k in before), "a saved verdict was run again"
    assert set(before) < set(after)

    check = check_manifest(str(run_dir / "evolve"), kind="instruction_shards")
    assert check.complete, check.reason
    evolved = [r for r in read_shards(run_dir / "evolve") if r["evol_round"] == 1]
    assert len(evolved) == len(records) and all(r["verified"] and r["answers_passed"] == 2 for r in evolved)
    report = json.loads((run_dir / "evolve_report" / "report.json").read_text())
    assert report["verify"]["sandbox"]["verdicts_cached_at_start"] == len(before)
    assert report["totals"]["verified"] == len(records)
