"""The `rl` stage end to end on a real local Ray cluster, through the CLI (`raywiz rl JOB.yaml`):

- the shipped quickstart (toy task, tiny random GPT-BigCode, 2 CPU workers) learns: the last 5 steps'
  mean reward beats the first 5 steps' by at least 0.15, and it exports a model transformers loads;
- a LoRA policy's worker SIGKILLed after a checkpoint resumes from it and trains the steps after it
  again with identical rewards and losses (float32 on CPU, the sampler's state and the RNG restored),
  and exports adapter/ and the merged hf/, which load to the same model.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from raywiz.artifacts import check_manifest
from tests.train.test_train_e2e import await_side_job, running_jobs

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


@pytest.fixture(scope="module")
def rl_runs(tmp_path_factory):
    """The module's two jobs side by side (each its own local cluster; on 2 cores much of a job is start-up
    waits, so together they take far less than one after the other): the shipped quickstart, and the LoRA
    job whose worker is SIGKILLed. Each waits in its own thread; its failure is its own test's."""
    dirs = {name: tmp_path_factory.mktemp(name) for name in ("quickstart", "killed")}
    (dirs["killed"] / "killed.yaml").write_text(JOB.format(storage=dirs["killed"] / "runs", steps=STEPS))
    jobs = {"quickstart": REPO / "jobs" / "rl_quickstart.yaml", "killed": dirs["killed"] / "killed.yaml"}
    procs = {name: _start([str(job)], dirs[name], dirs[name] / "rl.log") for name, job in jobs.items()}
    with ThreadPoolExecutor() as pool, running_jobs(procs):  # on a failure: the jobs die, then the threads end
        runs = {"quickstart": pool.submit(_finish, procs["quickstart"], dirs["quickstart"] / "rl.log"),
                "killed": pool.submit(_kill_a_worker_and_finish, procs["killed"], dirs["killed"])}
        for future in runs.values():
            await_side_job(future)
    return {name: (dirs[name], future) for name, future in runs.items()}


def test_quickstart_learns_and_exports_a_loadable_model(rl_runs):
    tmp_path, run = rl_runs["quickstart"]
    log, out = tmp_path / "rl.log", run.result()  # the job's own failure, if it failed, fails here
    rl_dir = tmp_path / "runs" / "rl_quickstart" / "rl"
    rows = _rows(rl_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 21))
    rewards = [r["reward_mean"] for r in rows]
    assert sum(rewards[-5:]) / 5 >= sum(rewards[:5]) / 5 + 0.15, rewards
    for r in rows:  # every metric the issue names, with values that make sense
        assert 0 <= r["reward_mean"] <= 1 and 0 <= r["pass_rate"] <= 1 and 0 <= r["clip_fraction"] <= 1
        assert r["response_length"] > 0 and r["entropy"] > 0 and r["kl"] == 0
        assert r["generate_s"] > 0 and r["update_s"] > 0 and r["score_s"] >= 0 and r["sync_s"] >= 0
    assert [r["step"] for r in rows if r["eval_reward"] is not None] == [10, 20]

    final = rl_dir / "checkpoint_00000020" / "hf"
    assert out.strip().splitlines()[-1] == str(final)
    assert check_manifest(str(final), kind="hf_export").complete
    best = json.loads((rl_dir / "best_checkpoint.json").read_text())
    evaluated = {r["step"]: r["eval_reward"] for r in rows if r["eval_reward"] is not None}
    assert best["eval_reward"] == max(evaluated.values()) and evaluated[best["step"]] == best["eval_reward"]
    assert check_manifest(best["hf"], kind="hf_export").complete
    info = json.loads((final / "raywiz.json").read_text())
    assert info["run"] == "rl_quickstart" and info["step"] == 20 and info["base_model"] == "tiny-gpt-bigcode"

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(final)
    tok = AutoTokenizer.from_pretrained(final)
    ids = tok('def word_9():\n    return "', return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()
    assert "rl step 20/20" in log.read_text() + out  # the progress line


STEPS = 12
JOB = """
name: killed
storage: {storage}
model: {{name_or_path: tiny-gpt-bigcode}}
rl:
  tasks: {{toy: 2}}
  reward: fraction             # a signal from the first step, so the adapter moves
  steps: {steps}
  prompts_per_step: 2
  group_size: 4
  mini_batch_size: 4
  ppo_epochs: 2
  lr: 3.0e-3
  sampling: {{max_tokens: 8}}
  checkpoint: {{every_n_steps: 3, export_hf: last}}
  peft: {{method: lora, r: 4, alpha: 8, dropout: 0.0}}
  max_failures: 2
"""


def _registered(rl_dir: Path) -> int:
    """The newest checkpoint Ray Train's controller recorded (0: none yet): where a restart resumes.
    Workers report a checkpoint before the controller records it; a fault in between rightly restarts
    from the previous one."""
    snapshot = rl_dir / "checkpoint_manager_snapshot.json"
    found = re.findall(r"checkpoint_(\d{8})", snapshot.read_text()) if snapshot.exists() else []
    return max((int(step) for step in found), default=0)


def _kill_a_worker_and_finish(proc: subprocess.Popen, tmp_path: Path) -> dict:
    """SIGKILL worker rank 0 once a checkpoint is registered and a step trained after it; then the job's
    end. Returns the killed pid, the metrics rows from before the kill, and the job's output."""
    rl_dir, log = tmp_path / "runs" / "killed" / "rl", tmp_path / "rl.log"
    deadline = time.time() + 600
    while True:  # a registered checkpoint, and a step trained after it
        registered, rows = _registered(rl_dir), _rows(rl_dir / "metrics.jsonl")
        if registered and any(r["step"] > registered for r in rows):
            break
        assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.02)
    pid = json.loads((rl_dir / "workers" / "rank_0.json").read_text())["pid"]
    os.kill(pid, signal.SIGKILL)
    return {"pid": pid, "before": {r["step"]: r for r in rows}, "out": _finish(proc, log)}


def test_sigkilled_lora_worker_resumes_repeats_the_same_steps_and_exports(rl_runs):
    tmp_path, run = rl_runs["killed"]
    killed = run.result()  # the job's own failure, if it failed, fails here
    rl_dir, log = tmp_path / "runs" / "killed" / "rl", tmp_path / "rl.log"
    pid, before, out = killed["pid"], killed["before"], killed["out"]

    resumed = re.search(r"resumed from step (\d+)", out + log.read_text())
    assert resumed, "the run did not restart from its checkpoint"
    assert json.loads((rl_dir / "workers" / "rank_0.json").read_text())["pid"] != pid  # a new worker ran
    after = {r["step"]: r for r in _rows(rl_dir / "metrics.jsonl")}
    assert sorted(after) == list(range(1, STEPS + 1))  # no step missing or repeated in the history
    redone = [s for s in before if s > int(resumed.group(1))]
    assert redone and all(after[s]["time"] > before[s]["time"] for s in redone), "no step was trained again"
    for s in before:  # the steps trained again, and those kept, are the steps trained before the kill
        for key in ("reward_mean", "reward_std", "pass_rate", "loss", "clip_fraction", "entropy", "response_length"):
            assert after[s][key] == pytest.approx(before[s][key], rel=1e-5, abs=1e-7), (s, key)

    final = rl_dir / f"checkpoint_{STEPS:08d}"
    assert out.strip().splitlines()[-1] == str(final / "hf")
    assert check_manifest(str(final / "adapter"), kind="adapter_export").complete
    assert check_manifest(str(final / "hf"), kind="hf_export").complete
    assert json.loads((final / "adapter" / "raywiz.json").read_text())["peft"] == "lora"

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from raywiz.modeling import build_model

    merged = AutoModelForCausalLM.from_pretrained(final / "hf").eval()
    base = build_model("tiny-gpt-bigcode", seed=0)  # the random base, as rl.seed (0) initialised it
    from_adapter = PeftModel.from_pretrained(base, final / "adapter").merge_and_unload().eval()
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        torch.testing.assert_close(from_adapter(ids).logits, merged(ids).logits, atol=1e-4, rtol=0)
        assert not torch.allclose(build_model("tiny-gpt-bigcode", seed=0)(ids).logits, merged(ids).logits)
