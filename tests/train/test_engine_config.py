"""DeepSpeed config choices that need no GPU to check: when ZeRO-3 keeps the weights resident (and so
runs as ZeRO-2, the same memory layout without the per-module hooks)."""

from __future__ import annotations

import os

import torch

from raywiz.config import parse_job
from raywiz.training.deepspeed_engine import deepspeed_config

GB = 10**9


def _train(workers: int, **deepspeed):
    job = parse_job({"name": "t", "train": {"data": {}, "optim": {"global_batch_size": 8, "micro_batch_size": 1},
                                            "scaling": {"num_workers": workers}, "deepspeed": deepspeed}})
    return job.train


def _stage(train, on_gpu, param_bytes, gpu_bytes=80 * GB):
    """The ZeRO stage DeepSpeed runs: 2 where the weights stay whole, 3 (with per-layer gathers) where sharded."""
    cfg = deepspeed_config(train, on_gpu, torch.bfloat16, param_bytes, gpu_bytes if on_gpu else None)
    zero = cfg["zero_optimization"]
    if zero["stage"] == 3:
        assert zero["stage3_param_persistence_threshold"] == 1e5
    return zero["stage"]


def test_auto_keeps_small_models_resident_on_gpus_and_shards_large_ones():
    two = _train(2)
    assert _stage(two, True, int(2.3 * GB)) == 2  # 1B in bf16 on 80 GB cards: resident
    assert _stage(two, True, int(14.6 * GB)) == 3  # 7B: sharded, per-layer gathers
    assert _stage(two, False, int(2.3 * GB)) == 3  # CPU (tests, gloo): always real sharding
    assert _stage(_train(1), False, 10**6) == 2  # one worker has nothing to shard


def test_never_and_always_override_the_policy():
    assert _stage(_train(2, resident_params="never"), True, int(2.3 * GB)) == 3
    assert _stage(_train(2, resident_params="always"), True, int(14.6 * GB)) == 2
    assert _stage(_train(2, resident_params="always", offload_params=True), True, 10**6) == 3
    assert _stage(_train(1, stage=2), True, 10**6) == 2 and _stage(_train(1, stage=1), True, 10**6) == 1


def test_user_deepspeed_config_wins():
    train = _train(2, resident_params="never", config={"zero_optimization": {"stage3_param_persistence_threshold": 123}})
    cfg = deepspeed_config(train, True, torch.bfloat16, int(2.3 * GB), 80 * GB)
    assert cfg["zero_optimization"]["stage3_param_persistence_threshold"] == 123


def test_a_bare_yaml_off_turns_the_fused_loss_off():
    from raywiz.config import parse_job

    job = parse_job({"name": "t", "train": {"data": {}, "fused_loss": False}})
    assert job.train.fused_loss == "off"


# ------------------------------------------------------------------ train.engine: fsdp2
def _job_error(train: dict) -> str:
    import pytest

    from raywiz.config import ConfigError, parse_job

    with pytest.raises((ConfigError, ValueError)) as e:
        parse_job({"name": "t", "train": {"data": {}, **train}})
    return str(e.value)


def test_fsdp2_refuses_what_it_does_not_do_naming_the_field():
    assert "train.deepspeed.offload_optimizer: a DeepSpeed option, but train.engine is fsdp2" in _job_error(
        {"engine": "fsdp2", "deepspeed": {"offload_optimizer": True}})
    assert "train.deepspeed.config:" in _job_error({"engine": "fsdp2", "deepspeed": {"config": {"a": 1}}})
    assert "train.peft.method: qlora is not supported with train.engine: fsdp2" in _job_error(
        {"engine": "fsdp2", "peft": {"method": "qlora"}})
    assert "train.fsdp2: FSDP2 options, but train.engine is deepspeed" in _job_error(
        {"fsdp2": {"reshard_after_forward": "never"}})
    job = parse_job({"name": "t", "train": {"data": {}, "engine": "fsdp2", "peft": {"method": "lora"}}})
    assert job.train.engine == "fsdp2" and job.train.deepspeed.stage == 3  # the untouched defaults are fine


def test_fsdp2_keeps_gathered_weights_where_deepspeed_keeps_them_resident():
    from raywiz.training.fsdp2 import reshard_after_forward

    def train(workers, choice="auto"):
        return parse_job({"name": "t", "train": {"data": {}, "engine": "fsdp2", "scaling": {"num_workers": workers},
                                                "optim": {"global_batch_size": 8, "micro_batch_size": 1},
                                                "fsdp2": {"reshard_after_forward": choice}}}).train

    assert reshard_after_forward(train(1), True, int(14.6 * GB), 80 * GB) is False  # one worker: nothing to save
    assert reshard_after_forward(train(2), True, int(2.3 * GB), 80 * GB) is False  # 1B on 80 GB: keep
    assert reshard_after_forward(train(2), True, int(14.6 * GB), 80 * GB) is True  # 7B: free after forward
    assert reshard_after_forward(train(2), False, 10**6, None) is True  # CPU: real sharding
    assert reshard_after_forward(train(1, "always"), True, 10**6, 80 * GB) is True


def test_the_driver_knows_the_stage_except_where_gpu_memory_picks_it():
    from raywiz.training.engine import planned_engine

    assert planned_engine(_train(2), False) == ("deepspeed", 3)  # CPU workers shard
    assert planned_engine(_train(1), True) == ("deepspeed", 2)  # one worker: resident
    assert planned_engine(_train(2), True) == ("deepspeed", None)  # the card's memory decides
    assert planned_engine(_train(2, resident_params="always"), True) == ("deepspeed", 2)


def test_a_zero2_checkpoint_resumed_as_zero3_or_fsdp2_is_refused(tmp_path):
    import json

    import pytest

    from raywiz.training.engine import CheckpointMismatch, check_resumable

    (tmp_path / "train_state.json").write_text(json.dumps({"step": 4, "engine": "deepspeed", "zero_stage": 2}))
    check_resumable(str(tmp_path), "deepspeed", 1)  # ZeRO-1 and -2 share their checkpoint format
    with pytest.raises(CheckpointMismatch, match=f"{tmp_path}: written by DeepSpeed ZeRO stage 2, but this run "
                                                 "trains with DeepSpeed ZeRO stage 3"):
        check_resumable(str(tmp_path), "deepspeed", 3)
    with pytest.raises(CheckpointMismatch, match="trains with FSDP2.*train.engine"):
        check_resumable(str(tmp_path), "fsdp2", None)


def test_a_mismatch_only_the_workers_saw_reaches_the_user_as_its_message():
    from ray.train.v2.api.exceptions import WorkerGroupError

    from raywiz.training.engine import CheckpointMismatch
    from raywiz.train.launch import checkpoint_mismatch

    cause = CheckpointMismatch("ckpt: written by DeepSpeed ZeRO stage 3, but ...")
    wrapped = RuntimeError("worker 1 failed")
    wrapped.__cause__ = cause
    assert checkpoint_mismatch(WorkerGroupError("failed", {0: RuntimeError("other"), 1: wrapped})) is cause
    assert checkpoint_mismatch(WorkerGroupError("failed", {0: RuntimeError("other")})) is None
    assert checkpoint_mismatch(RuntimeError("driver")) is None


def test_a_rerun_the_checkpoint_refuses_stops_before_ray_starts(tmp_path, monkeypatch):
    """`raywiz train` again on a checkpoint another engine wrote: exit 2 without paying for a Ray start,
    where the engine does not hang on the GPUs Ray would find."""
    import json

    import pytest

    from raywiz import runtime
    from raywiz.artifacts import Kind, write_manifest
    from raywiz.config import ConfigError
    from raywiz.train.launch import check_resume, run_train

    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"instruction": "i", "output": "o"}) + "\n")
    job = parse_job({"name": "t", "storage": str(tmp_path / "runs"), "train": {
        "engine": "deepspeed", "data": {"paths": [str(data)]}, "scaling": {"num_workers": 2},
        "optim": {"global_batch_size": 2, "micro_batch_size": 1}}})
    ckpt = job.layout.checkpoint(4)
    os.makedirs(ckpt.path)
    with open(ckpt.train_state, "w") as f:
        json.dump({"step": 4, "engine": "fsdp2"}, f)
    write_manifest(ckpt.path, Kind.TRAIN_CHECKPOINT)

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(runtime, "init_ray", no_ray)
    with pytest.raises(ConfigError, match=f"{ckpt.path}: written by FSDP2, but this run trains with DeepSpeed,"):
        run_train(job)
    # On GPUs the card's memory picks the ZeRO stage: before Ray, only another engine's checkpoint is refused.
    with open(ckpt.train_state, "w") as f:
        json.dump({"step": 4, "engine": "deepspeed", "zero_stage": 2}, f)
    write_manifest(ckpt.path, Kind.TRAIN_CHECKPOINT)
    check_resume(job, None)  # ZeRO-3 on CPU workers, ZeRO-2 or 3 on GPUs: known once Ray has started
    with pytest.raises(ConfigError, match="stage 2, but this run trains with DeepSpeed ZeRO stage 3"):
        check_resume(job, False)


def test_cpu_training_does_not_build_deepspeeds_shm_inference_op(tmp_path, monkeypatch):
    """The shared-memory all-reduce DeepSpeed JIT-compiles on CPU serves only its tensor-parallel inference:
    a CPU engine marks it unavailable, so DeepSpeed's comm backend neither builds nor loads it."""
    import deepspeed.ops
    from deepspeed.comm.torch import build_shm_op

    from raywiz.training.deepspeed_engine import _skip_the_shm_inference_op

    compatible = deepspeed.ops.__compatible_ops__
    monkeypatch.setitem(compatible, "deepspeed_shm_comm", compatible["deepspeed_shm_comm"])  # restored after
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))  # a build would land here
    _skip_the_shm_inference_op()
    assert build_shm_op() is None
    assert not any(tmp_path.iterdir())
