"""End to end on a real local Ray cluster: `raywiz train` with 2 CPU workers and DeepSpeed ZeRO-3 on gloo.

One reference run (4 samples, 80 steps) is shared: it must overfit, export a loadable HF model whose
weights equal the ZeRO-3 shards, and serve as the baseline that interrupted runs must reproduce.
Stated tolerance for "resumed == uninterrupted": loss within 1e-4 (relative), weights within 1e-4
(max abs) — float32 on CPU with the same data order and restored RNG.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from raywiz.artifacts import check_manifest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
STEPS, CKPT_EVERY = 80, 20


EVALUATE = """
eval:
  benchmarks: [humaneval]
  limit: 2
  generation: {max_tokens: 12}
"""


def _four_samples(tmp: Path, by=lambda r: len(r["instruction"]) + len(r["output"])) -> Path:
    """tmp/four.jsonl: the 4 shortest quickstart samples (by `by`), small enough to overfit in a few steps."""
    rows = [json.loads(line) for line in (REPO / "raywiz/assets/quickstart/instructions.jsonl").read_text().splitlines()]
    data = tmp / "four.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in sorted(rows, key=by)[:4]))
    return data


def _write_job(tmp: Path, name: str, max_failures: int = 0, evaluate: bool = False) -> Path:
    data = _four_samples(tmp)
    job = tmp / f"{name}.yaml"
    job.write_text(f"""
name: {name}
storage: {tmp / 'runs'}
model: {{name_or_path: tiny-gpt-bigcode}}
train:
  data: {{paths: [{data}], max_length: 256, pack: false}}
  optim: {{epochs: 40, global_batch_size: 2, micro_batch_size: 1, lr: 1.0e-2, warmup_steps: 5}}
  scaling: {{num_workers: 2}}
  checkpoint: {{every_n_steps: {CKPT_EVERY}, num_to_keep: 3}}
  debug: {{pid_files: true, trace_samples: true}}
  max_failures: {max_failures}
  evaluate: {{enabled: {str(evaluate).lower()}}}
""" + (EVALUATE if evaluate else ""))
    return job


def _start(job: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), WANDB_MODE="disabled")
    return subprocess.Popen([sys.executable, "-m", "raywiz.cli", "train", str(job)], stdout=subprocess.PIPE,
                            stderr=open(log, "w"), text=True, env=env, start_new_session=True, cwd=REPO)


def _finish(proc: subprocess.Popen, log: Path, timeout: float = 900) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"raywiz train failed:\n{out[-3000:]}\n{log.read_text()[-5000:]}"
    return out


def _wait_for_step(train_dir: Path, step: int, proc: subprocess.Popen, registered: int,
                   timeout: float = 600) -> None:
    """Poll until `step` (0-based) has been trained and Ray Train has registered checkpoint `registered`.

    Workers report a checkpoint before the controller records it; a fault in between would rightly
    restart from the previous one, so the test waits for the controller's snapshot to name it.
    """
    deadline = time.time() + timeout
    target = train_dir / "trace" / f"step_{step:08d}.rank_1.json"
    snapshot = train_dir / "checkpoint_manager_snapshot.json"
    while not (target.exists() and snapshot.exists() and f"checkpoint_{registered:08d}" in snapshot.read_text()):
        assert proc.poll() is None, "the run ended before the fault could be injected"
        assert time.time() < deadline, f"step {step} never came"
        time.sleep(0.05)


def _last_registered_step(train_dir: Path) -> int:
    """The newest checkpoint Ray Train's controller recorded: where a rerun must resume.

    Read after the kill: on a slow machine the run may have registered a later checkpoint than
    the one the test waited for, and the rerun rightly resumes from that one.
    """
    text = (train_dir / "checkpoint_manager_snapshot.json").read_text()
    return max(int(step) for step in re.findall(r"checkpoint_(\d{8})", text))


@contextmanager
def running_jobs(procs: dict[str, subprocess.Popen]):
    """Jobs started side by side (each in its own session): whatever happens, none outlives the block;
    SIGKILL what is left of each (driver, local cluster, workers)."""
    try:
        yield procs
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def await_side_job(future: Future) -> None:
    """Wait for a side job's thread; its result or failure is its own test's, so none is raised here."""
    future.exception()


def _kill_job_and_rerun(procs: dict[str, subprocess.Popen], name: str, job: Path, train_dir: Path, ckpt_every: int,
                        log: Path) -> int:
    """SIGKILL job `name` whole (driver, local cluster, workers) once it trained past its first checkpoint,
    then start it again in its place in `procs`. Returns the newest checkpoint registered at the kill."""
    _wait_for_step(train_dir, ckpt_every + 1, procs[name], registered=ckpt_every)  # well before the end
    os.killpg(procs[name].pid, signal.SIGKILL)
    procs[name].wait()
    procs[name] = _start(job, log)
    return _last_registered_step(train_dir)  # ckpt_every, or a later one on a slow machine


def _kill_worker(proc: subprocess.Popen, train_dir: Path, ckpt_every: int, step_after: int = 1) -> int:
    """SIGKILL worker rank 1 once its job trained `step_after` steps past its first checkpoint: Ray Train
    restarts the group from the last checkpoint. Returns the killed pid."""
    _wait_for_step(train_dir, ckpt_every + step_after, proc, registered=ckpt_every)
    pid = json.loads((train_dir / "workers" / "rank_1.json").read_text())["pid"]
    os.kill(pid, signal.SIGKILL)
    return pid


def _read_trace(train_dir: Path) -> dict[int, list[str]]:
    from tests.train.traces import read_trace

    return read_trace(str(train_dir))


def _weights(hf_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(hf_dir / "model.safetensors"))


def _final_loss(train_dir: Path) -> float:
    from raywiz.artifacts import RunLayout

    ckpt = RunLayout(str(train_dir.parent)).latest_checkpoint()
    return json.loads(Path(ckpt.train_state).read_text())["loss"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The reference run, and beside it (each its own local cluster: together far quicker than one after
    the other on 2 cores) the same job whose worker rank 1 is SIGKILLed after its first checkpoint."""
    tmp = tmp_path_factory.mktemp("ref")
    job = _write_job(tmp, "ref", evaluate=True)  # also scores each checkpoint as it lands (train.evaluate)
    killed_job = _write_job(tmp, "killed", max_failures=2)
    killed_dir = tmp / "runs" / "killed" / "train"
    procs = {"ref": _start(job, tmp / "ref.log"), "killed": _start(killed_job, tmp / "killed.log")}
    with ThreadPoolExecutor() as pool, running_jobs(procs):  # on a failure: the jobs die, then the threads end
        killed = pool.submit(_killed_worker_run, procs["killed"], killed_dir, tmp / "killed.log")
        out = _finish(procs["ref"], tmp / "ref.log")
        await_side_job(killed)
    return {"tmp": tmp, "stdout": out, "train_dir": tmp / "runs" / "ref" / "train", "killed": killed}


def _killed_worker_run(proc: subprocess.Popen, train_dir: Path, log: Path) -> dict:
    pid = _kill_worker(proc, train_dir, CKPT_EVERY, step_after=3)  # a checkpoint, and work after it
    return {"train_dir": train_dir, "pid": pid, "text": _finish(proc, log) + log.read_text()}


def test_last_stdout_line_is_a_loadable_export_that_generates(reference):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = Path(reference["stdout"].strip().splitlines()[-1])
    assert hf == reference["train_dir"] / f"checkpoint_{STEPS:08d}" / "hf"
    assert check_manifest(str(hf), kind="hf_export").complete
    assert check_manifest(str(hf.parent), kind="train_checkpoint").complete
    model = AutoModelForCausalLM.from_pretrained(hf)
    tok = AutoTokenizer.from_pretrained(hf)
    # The classic ZeRO-3 failure is an empty or KB-sized save: the file must hold every parameter.
    n_bytes = (hf / "model.safetensors").stat().st_size
    n_params = sum(p.numel() for p in model.parameters())
    assert n_bytes >= 4 * n_params
    out = model.generate(**tok("def", return_tensors="pt"), max_new_tokens=8, do_sample=False)
    assert out.shape[1] > 1
    assert json.loads((hf / "raywiz.json").read_text())["step"] == STEPS


def test_export_equals_the_zero3_shards(reference):
    """The consolidated HF weights are the trained ones: compare with DeepSpeed's own fp32 reconstruction."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    ckpt = reference["train_dir"] / f"checkpoint_{STEPS:08d}"
    zero = get_fp32_state_dict_from_zero_checkpoint(str(ckpt / "zero"), tag="state")
    exported = _weights(ckpt / "hf")
    assert set(exported) <= set(zero)
    for name, tensor in exported.items():
        torch.testing.assert_close(tensor.float(), zero[name].float(), atol=1e-6, rtol=0)
    # and training moved them: the export is not the random init
    from raywiz.modeling import build_model

    init = build_model("tiny-gpt-bigcode", dtype=torch.float32, seed=42).state_dict()
    assert any(not torch.allclose(init[k], v) for k, v in exported.items() if k in init)


def test_tiny_model_overfits_and_reproduces_a_trained_response(reference):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raywiz.data.template import format_prompt

    hf = reference["train_dir"] / f"checkpoint_{STEPS:08d}" / "hf"
    model = AutoModelForCausalLM.from_pretrained(hf).eval()
    tok = AutoTokenizer.from_pretrained(hf)
    row = json.loads((reference["tmp"] / "four.jsonl").read_text().splitlines()[0])
    prompt = format_prompt(row["instruction"], row.get("input") or None)
    ids = tok(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=200, do_sample=False, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    text = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert text.strip() == row["output"].strip()


def test_data_report_and_schedule(reference):
    report = json.loads((reference["train_dir"] / "data_report.json").read_text())
    assert report["n_samples"] == 4 and report["n_bad"] == 0
    assert report["plan"]["total_steps"] == STEPS and report["plan"]["steps_per_epoch"] == 2
    trace = _read_trace(reference["train_dir"])
    assert sorted(trace) == list(range(STEPS))
    # every epoch (2 steps x 2 rows) sees each of the 4 samples exactly once
    for epoch in range(STEPS // 2):
        seen = trace[2 * epoch] + trace[2 * epoch + 1]
        assert len(seen) == 4 and len(set(seen)) == 4


def _assert_matches_reference(train_dir: Path, reference) -> None:
    ref_dir = reference["train_dir"]
    assert _read_trace(train_dir) == _read_trace(ref_dir), "a sample was skipped or repeated"
    ref_loss, loss = _final_loss(ref_dir), _final_loss(train_dir)
    assert abs(loss - ref_loss) <= 1e-4 * abs(ref_loss) + 1e-7
    a = _weights(ref_dir / f"checkpoint_{STEPS:08d}" / "hf")
    b = _weights(train_dir / f"checkpoint_{STEPS:08d}" / "hf")
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-4, rtol=0)


def test_sigkilled_worker_resumes_from_checkpoint_and_matches(reference):
    killed = reference["killed"].result()  # the job's own failure, if it failed, fails here
    assert f"resumed from step {CKPT_EVERY}" in killed["text"], "the run did not restart from its last checkpoint"
    assert json.loads((killed["train_dir"] / "workers" / "rank_1.json").read_text())["pid"] != killed["pid"]
    _assert_matches_reference(killed["train_dir"], reference)


# A rerun of a SIGKILLed job (driver, cluster and workers) resuming from storage is tested with the
# LoRA job (tests/train/test_lora_e2e.py) and the FSDP2 job (test_fsdp2_e2e.py): the same discovery
# path as a full fine-tune's, in less suite time.


def test_every_checkpoint_is_scored_while_training_and_the_best_is_recorded(reference):
    """train.evaluate: Ray Train V2 validation scores each checkpoint's export with the job's eval section."""
    from raywiz.artifacts import check_manifest

    run_dir = reference["train_dir"].parent
    scored = {}
    for step in range(CKPT_EVERY, STEPS + 1, CKPT_EVERY):
        bench_dir = run_dir / "eval" / f"checkpoint_{step:08d}" / "humaneval"
        assert check_manifest(str(bench_dir), kind="eval_results").complete, f"checkpoint {step} was not scored"
        summary = json.loads((bench_dir / "summary.json").read_text())
        assert summary["n_tasks"] == 2
        scored[step] = summary["pass@1"]
    best = json.loads((reference["train_dir"] / "best_checkpoint.json").read_text())
    assert best["pass@1"] == max(scored.values()) and scored[best["step"]] == best["pass@1"]
    assert best["hf"] == str(reference["train_dir"] / f"checkpoint_{best['step']:08d}" / "hf")
    assert check_manifest(best["hf"], kind="hf_export").complete  # kept: the best is never deleted
    # Ray's own record of the kept checkpoints carries the scores
    snapshot = json.loads((reference["train_dir"] / "checkpoint_manager_snapshot.json").read_text())
    assert "pass@1/humaneval" in json.dumps(snapshot)
    assert f"best checkpoint by pass@1: step {best['step']}" in reference["stdout"] + (reference["tmp"] / "ref.log").read_text()
    assert not list((reference["train_dir"] / ".staging").iterdir()), "staged checkpoint parts were left behind"
