"""`train.engine: fsdp2` end to end on a real local Ray cluster: 2 CPU workers on gloo, against DeepSpeed.

Both engines start from the same saved base model (a random init under ZeRO-3's zero.Init draws other
numbers than a plain one) with the same data, seed and constant lr, so they must train the same model:
hf/ exports within 1e-4 (max abs, float32). A SIGKILLed FSDP2 job resumes from its DCP checkpoint to the
uninterrupted run's weights (1e-4) with no sample skipped or repeated. A checkpoint resumed under another
engine or ZeRO stage stops at once (exit 2) with an error naming the checkpoint and both sides.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from raywiz.artifacts import RunLayout, check_manifest
from tests.train.test_train_e2e import (_finish, _four_samples, _kill_job_and_rerun, _read_trace, _start, _weights,
                                        running_jobs)

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
STEPS, CKPT_EVERY, DS_STEPS = 12, 4, 4


def _job(tmp: Path, name: str, engine: str, max_steps: int | None = None, max_failures: int = 0) -> Path:
    base = tmp / "base"
    if not base.exists():
        from raywiz.modeling import build_model

        build_model("tiny-gpt-bigcode", seed=3).save_pretrained(base)
        _four_samples(tmp)
    job = tmp / f"{name}.yaml"
    # constant lr after warm-up: a run cut short by max_steps follows the longer run's first steps exactly
    job.write_text(f"""
name: {name}
storage: {tmp / 'runs'}
model: {{name_or_path: {base}, tokenizer: {REPO / 'raywiz/assets/tokenizer'}}}
train:
  engine: {engine}
  data: {{paths: [{tmp / 'four.jsonl'}], max_length: 256, pack: false}}
  optim: {{epochs: {STEPS // 2}, max_steps: {max_steps or 'null'}, global_batch_size: 2, micro_batch_size: 1,
          lr: 1.0e-3, warmup_steps: 2, schedule: constant}}
  scaling: {{num_workers: 2}}
  checkpoint: {{every_n_steps: {CKPT_EVERY}, num_to_keep: 3}}
  debug: {{pid_files: true, trace_samples: true}}
  max_failures: {max_failures}
""")
    return job


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The FSDP2 and DeepSpeed runs, and an FSDP2 job SIGKILLed after its first checkpoint then run again,
    all side by side (each its own local cluster): on 2 cores that takes about half the time."""
    tmp = tmp_path_factory.mktemp("fsdp2")
    procs = {name: _start(_job(tmp, name, engine, steps), tmp / f"{name}.log")
             for name, engine, steps in (("fsdp2", "fsdp2", None), ("deepspeed", "deepspeed", DS_STEPS),
                                         ("killed", "fsdp2", None))}
    with running_jobs(procs):
        last = _kill_job_and_rerun(procs, "killed", tmp / "killed.yaml", tmp / "runs" / "killed" / "train", CKPT_EVERY,
                                   tmp / "killed2.log")
        out = {name: _finish(proc, tmp / f"{name}.log" if name != "killed" else tmp / "killed2.log")
               for name, proc in procs.items()}
    return {"tmp": tmp, "stdout": out, "killed_at": last, "fsdp2": RunLayout(str(tmp / "runs" / "fsdp2")),
            "deepspeed": RunLayout(str(tmp / "runs" / "deepspeed")), "killed": RunLayout(str(tmp / "runs" / "killed"))}


def test_fsdp2_trains_and_exports_a_loadable_model_with_dcp_shards(runs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    layout = runs["fsdp2"]
    ckpt = layout.latest_checkpoint()
    assert ckpt.step == STEPS and runs["stdout"]["fsdp2"].strip().splitlines()[-1] == ckpt.hf
    losses = [json.loads(line)["loss"] for line in open(layout.metrics)]
    assert len(losses) == STEPS and sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.3, losses
    state = json.loads(Path(ckpt.train_state).read_text())
    assert state["engine"] == "fsdp2" and state["step"] == STEPS
    shards = sorted(os.listdir(ckpt.fsdp2))  # DCP: one file per rank + its metadata
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"] and not os.path.exists(ckpt.zero)
    assert check_manifest(ckpt.hf, kind="hf_export").complete
    model = AutoModelForCausalLM.from_pretrained(ckpt.hf)
    tok = AutoTokenizer.from_pretrained(ckpt.hf)
    out = model.generate(**tok("def", return_tensors="pt"), max_new_tokens=8, do_sample=False)
    assert out.shape[1] > 1


def test_fsdp2_and_deepspeed_export_the_same_weights(runs):
    a = _weights(Path(runs["fsdp2"].checkpoint(DS_STEPS).hf))
    b = _weights(Path(runs["deepspeed"].checkpoint(DS_STEPS).hf))
    assert a.keys() == b.keys()  # the same format: tied weights once, the same names
    for name in a:
        assert a[name].dtype == b[name].dtype
        torch.testing.assert_close(a[name], b[name], atol=1e-4, rtol=0)
    fs, ds = (json.loads(Path(r.checkpoint(DS_STEPS).hf, "config.json").read_text()) for r in (runs["fsdp2"], runs["deepspeed"]))
    assert fs == ds
    base = _weights(runs["tmp"] / "base")  # and they trained: not the base
    assert any((a[k] - base[k]).abs().max() > 1e-3 for k in a if k in base)


def test_a_killed_fsdp2_job_resumes_exactly(runs):
    text = runs["stdout"]["killed"] + (runs["tmp"] / "killed2.log").read_text()
    resumed = re.search(r"resumed from step (\d+) ", text)
    assert resumed, "the rerun did not resume"
    # Never older than what the controller had registered when the job died; newer can happen, as a
    # checkpoint being registered at the kill still lands (steps are short here).
    assert CKPT_EVERY <= runs["killed_at"] <= int(resumed[1]) < STEPS
    ref_dir, train_dir = Path(runs["fsdp2"].train), Path(runs["killed"].train)
    assert _read_trace(train_dir) == _read_trace(ref_dir), "a sample was skipped or repeated"
    a, b = _weights(ref_dir / f"checkpoint_{STEPS:08d}" / "hf"), _weights(train_dir / f"checkpoint_{STEPS:08d}" / "hf")
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-4, rtol=0)


def _rerun(job: Path, *overrides: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), WANDB_MODE="disabled")
    sets = [a for o in overrides for a in ("--set", o)]
    return subprocess.Popen([sys.executable, "-m", "raywiz.cli", "train", str(job), *sets], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)


def test_resuming_under_another_zero_stage_or_engine_stops_with_a_clear_error(runs):
    tmp = runs["tmp"]
    stage = _rerun(tmp / "deepspeed.yaml", "train.deepspeed.resident_params=always")  # ZeRO-3 -> runs as ZeRO-2
    engine = _rerun(tmp / "fsdp2.yaml", "train.engine=deepspeed")  # FSDP2's DCP shards -> DeepSpeed
    for proc, ckpt, says in (
            (stage, runs["deepspeed"].checkpoint(DS_STEPS).path,
             "written by DeepSpeed ZeRO stage 3, but this run trains with DeepSpeed ZeRO stage 2"),
            (engine, runs["fsdp2"].checkpoint(STEPS).path, "written by FSDP2, but this run trains with DeepSpeed")):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, err[-3000:]
        assert f"{ckpt}: {says}" in err and "Traceback" not in out + err


def test_checkpoints_from_before_the_engine_record_are_read_from_deepspeeds_files(runs, tmp_path):
    """A ZeRO-3 checkpoint written before train_state.json named its engine: the stage comes from DeepSpeed's
    file names, so an old run resumed as ZeRO-2 is stopped too."""
    from raywiz.training.engine import CheckpointMismatch, check_resumable, written_by

    old = tmp_path / "old"
    shutil.copytree(runs["deepspeed"].checkpoint(DS_STEPS).path, old)
    state = json.loads((old / "train_state.json").read_text())
    (old / "train_state.json").write_text(json.dumps({k: v for k, v in state.items() if k not in ("engine", "zero_stage")}))
    assert written_by(str(old)) == ("deepspeed", 3)
    check_resumable(str(old), "deepspeed", 3)
    with pytest.raises(CheckpointMismatch, match="written by DeepSpeed ZeRO stage 3, but this run trains with "
                                                 "DeepSpeed ZeRO stage 2"):
        check_resumable(str(old), "deepspeed", 2)
