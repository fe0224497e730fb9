"""The `rl` stage end to end on a real local Ray cluster, through the CLI (`raywiz rl JOB.yaml`):

- the shipped quickstart (toy task, tiny random GPT-BigCode, 2 CPU workers) learns: the last 5 steps'
  mean reward beats the first 5 steps' by at least 0.15, and it exports a model transformers loads;
- a worker SIGKILLed after a checkpoint resumes from it and trains the steps after it again with
  identical rewards and losses (float32 on CPU, the sampler's state and the RNG restored).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raywiz.artifacts import check_manifest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _start(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), WANDB_MODE="disabled")
    return subprocess.Popen([sys.executable, "-m", "raywiz.cli", "rl", *args], stdout=subprocess.PIPE,
                            stderr=open(log, "w"), text=True, env=env, start_new_session=True, cwd=cwd)


def _finish(proc: subprocess.Popen, log: Path, timeout: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"raywiz rl failed:\n{out[-3000:]}\n{log.read_text()[-5000:]}"
    return out


def _rows(metrics: Path) -> list[dict]:
    return [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.exists() else []


def test_quickstart_learns_and_exports_a_loadable_model(tmp_path):
    log = tmp_path / "rl.log"
    out = _finish(_start([str(REPO / "jobs" / "rl_quickstart.yaml")], tmp_path, log), log)
    rl_dir = tmp_path / "runs" / "rl_quickstart" / "rl"
    rows = _rows(rl_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 31))
    rewards = [r["reward_mean"] for r in rows]
    assert sum(rewards[-5:]) / 5 >= sum(rewards[:5]) / 5 + 0.15, rewards
    for r in rows:  # every metric the issue names, with values that make sense
        assert 0 <= r["reward_mean"] <= 1 and 0 <= r["pass_rate"] <= 1 and 0 <= r["clip_fraction"] <= 1
        assert r["response_length"] > 0 and r["entropy"] > 0 and r["kl"] == 0
        assert r["generate_s"] > 0 and r["update_s"] > 0 and r["score_s"] >= 0 and r["sync_s"] >= 0
    assert [r["step"] for r in rows if r["eval_reward"] is not None] == [10, 20, 30]

    final = rl_dir / "checkpoint_00000030" / "hf"
    assert out.strip().splitlines()[-1] == str(final)
    assert check_manifest(str(final), kind="hf_export").complete
    best = json.loads((rl_dir / "best_checkpoint.json").read_text())
    evaluated = {r["step"]: r["eval_reward"] for r in rows if r["eval_reward"] is not None}
    assert best["eval_reward"] == max(v for s, v in evaluated.items() if s in (20, 30))  # 10 is not kept (2 kept)
    assert check_manifest(best["hf"], kind="hf_export").complete
    info = json.loads((final / "raywiz.json").read_text())
    assert info["run"] == "rl_quickstart" and info["step"] == 30 and info["base_model"] == "tiny-gpt-bigcode"

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(final)
    tok = AutoTokenizer.from_pretrained(final)
    ids = tok('def word_9():\n    return "', return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()
    assert "rl step 30/30" in log.read_text() + out  # the progress line


JOB = """
name: killed
storage: {storage}
model: {{name_or_path: tiny-gpt-bigcode}}
rl:
  tasks: {{toy: 2}}
  reward: binary
  steps: 8
  prompts_per_step: 2
  group_size: 4
  mini_batch_size: 4
  ppo_epochs: 2
  lr: 3.0e-3
  sampling: {{max_tokens: 8}}
  checkpoint: {{every_n_steps: 3, export_hf: last}}
  max_failures: 2
"""


def test_sigkilled_worker_resumes_and_repeats_the_same_steps(tmp_path):
    job = tmp_path / "killed.yaml"
    job.write_text(JOB.format(storage=tmp_path / "runs"))
    rl_dir = tmp_path / "runs" / "killed" / "rl"
    log = tmp_path / "rl.log"
    proc = _start([str(job)], tmp_path, log)
    deadline = time.time() + 300
    while not any(r["step"] >= 4 for r in _rows(rl_dir / "metrics.jsonl")):  # checkpoint 3, and step 4 after it
        assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.02)
    before = {r["step"]: r for r in _rows(rl_dir / "metrics.jsonl")}
    pid = json.loads((rl_dir / "workers" / "rank_0.json").read_text())["pid"]
    os.kill(pid, signal.SIGKILL)
    out = _finish(proc, log)

    assert json.loads((rl_dir / "workers" / "rank_0.json").read_text())["pid"] != pid  # a new worker ran
    after = {r["step"]: r for r in _rows(rl_dir / "metrics.jsonl")}
    assert sorted(after) == list(range(1, 9))  # no step missing or repeated in the history
    redone = [s for s in before if s > 3]
    assert redone and all(after[s]["time"] > before[s]["time"] for s in redone), "the steps after the checkpoint were not trained again"
    for s in before:
        for key in ("reward_mean", "reward_std", "pass_rate", "loss", "clip_fraction", "entropy", "response_length"):
            assert after[s][key] == pytest.approx(before[s][key], rel=1e-5, abs=1e-7), (s, key)
    assert "resumed from step 3" in out + log.read_text()
