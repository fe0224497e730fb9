"""DeepSpeed config choices that need no GPU to check: when ZeRO-3 keeps the weights resident (and so
runs as ZeRO-2, the same memory layout without the per-module hooks)."""

from __future__ import annotations

import torch

from raywiz.config import parse_job
from raywiz.train.engine import deepspeed_config

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
