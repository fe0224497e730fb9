"""Kill a real `raywiz evolve` run with SIGKILL, restart it, and count what reaches the server."""

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
import yaml

from raywiz.artifacts import check_manifest
from raywiz.evolve.cache import RequestCache
from tests.evolve.fake_llm_server import FakeLLMServer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SECRET = "sk-kill-test-secret-7777"
CONCURRENCY = 4


def start_run(job_file, log, ray_address):
    # The run joins the test session's Ray cluster as a second driver (as `raywiz evolve` on a cluster
    # does); killing the driver must take its actors down with it.
    env = dict(os.environ, PYTHONPATH=REPO, RAYWIZ_KILL_TEST_KEY=SECRET, RAY_ADDRESS=ray_address)
    return subprocess.Popen([sys.executable, "-m", "raywiz.cli", "evolve", str(job_file)], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def kill_when(job_file, log_path, ray_address, ready, what: str) -> None:
    """Start a run and SIGKILL its whole process group once `ready()` holds (mid-run)."""
    with open(log_path, "wb") as log:
        proc = start_run(job_file, log, ray_address)
        deadline = time.monotonic() + 120
        while not ready():
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, f"the run never got {what}"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


def finish(job_file, log_path, ray_address) -> None:
    with open(log_path, "wb") as log:
        proc = start_run(job_file, log, ray_address)
        assert proc.wait(240) == 0, log_path.read_text()[-3000:]


def cached_keys(cache_dir) -> set[str]:
    return set(RequestCache(cache_dir).load()) if os.path.isdir(cache_dir) else set()


@pytest.mark.slow
def test_killed_run_resumes_without_resending_answered_requests(tmp_path, shared_data, ray_local):
    ray_address = ray_local.get_runtime_context().gcs_address
    with FakeLLMServer(latency_s=0.05, require_api_key=SECRET) as server:
        job = {"name": "killed", "storage": str(tmp_path / "runs"),
               "evolve": {"seeds": {"paths": [str(shared_data / "codealpaca/code_alpaca_2k.json")], "limit": 100},
                          "rounds": 2, "decontam": {"enabled": False}, "rows_per_shard": 40,
                          "verify": {"enabled": False},  # tests/evolve/test_verify_kill.py kills a verifying run
                          "llm": {"base_url": server.base_url, "model": "fake", "concurrency": CONCURRENCY,
                                  "api_key_env": "RAYWIZ_KILL_TEST_KEY"}}}
        job_file = tmp_path / "job.yaml"
        job_file.write_text(yaml.safe_dump(job))
        run_dir = tmp_path / "runs" / "killed"
        cache_dir = str(run_dir / "evolve_cache")

        # 1. Start, and SIGKILL the whole process group once ~150 answers are cached (mid round 1).
        kill_when(job_file, tmp_path / "run1.log", ray_address, lambda: len(cached_keys(cache_dir)) >= 150, "going")
        time.sleep(1.0)  # anything still alive would keep sending
        answered_before_kill = cached_keys(cache_dir)
        requests_at_kill = server.total_requests
        time.sleep(1.0)
        assert server.total_requests == requests_at_kill, "requests kept coming after the kill"
        assert not check_manifest(str(run_dir / "evolve")).complete

        # 2. Restart: it finishes, and no answered request reaches the server again.
        finish(job_file, tmp_path / "run2.log", ray_address)
        assert server.wait_idle()
        stats = server.stats()
        resent = [k for k in answered_before_kill if stats["requests_by_key"][k] > 1]
        assert resent == []
        # Only requests in flight at the kill (unanswered, or answered but not yet cached) went twice.
        assert stats["repeated_keys"] <= CONCURRENCY
        assert stats["total_requests"] - stats["unique_keys"] <= CONCURRENCY

    check = check_manifest(str(run_dir / "evolve"), kind="instruction_shards")
    assert check.complete, check.reason
    rows = [r for f in sorted(os.listdir(run_dir / "evolve")) if f.endswith(".parquet")
            for r in pq.read_table(run_dir / "evolve" / f).to_pylist()]
    assert len(rows) == check.manifest["meta"]["rows"] > 200
    report = json.loads((run_dir / "evolve_report" / "report.json").read_text())
    assert report["llm"]["cache_hits"] >= len(answered_before_kill)
    # The run's answers, all cached now: every key the server saw is in the cache exactly once.
    assert cached_keys(cache_dir) == set(stats["requests_by_key"])
    for path in [tmp_path / "run1.log", tmp_path / "run2.log", *run_dir.rglob("*")]:
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
