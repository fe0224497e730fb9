"""bench/train_throughput.py --engine-loop, the GPU engine comparison, as its CPU smoke test: raywiz's two
engines run the recipe's own step on the same rows and must agree step for step (float32: equal losses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def test_engine_loop_runs_both_engines_on_the_same_rows(tmp_path):
    out = tmp_path / "engines.json"
    p = subprocess.run([sys.executable, str(REPO / "bench/train_throughput.py"), "--cpu", "--engine-loop",
                        "--engines", "deepspeed,fsdp2", "--engine-steps", "4", "--out", str(out)],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    result = json.loads(out.read_text())
    runs = {r["engine"]: r for r in result["engine_loop"]}
    assert set(runs) == {"deepspeed", "fsdp2"}, result["engine_loop"]
    assert runs["deepspeed"]["detail"] == "ZeRO stage 2" and runs["fsdp2"]["detail"] == "FSDP2"
    for r in runs.values():
        assert r["useful_tokens_per_s"] > 0 and r["steps_measured"] == 2 and r["profile"]["top_host_ops"]
    assert len(runs["fsdp2"]["losses"]) == 4
    assert result["summary"]["engine_loop"]["loss_max_rel_diff"] < 1e-5
