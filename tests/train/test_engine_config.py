"""DeepSpeed config choices that need no GPU to check: when ZeRO-3 keeps the weights resident."""

from __future__ import annotations

import torch

from raywiz.config import parse_job
from raywiz.train.engine import deepspeed_config

GB = 10**9


def _train(workers: int, **deepspeed):
    job = parse_job({"name": "t", "train": {"data": {}, "optim": {"global_batch_size": 8, "micro_batch_size": 1},
                                            "scaling": {"num_workers": workers}, "deepspeed": deepspeed}})
    return job.train


def _threshold(train, on_gpu, param_bytes, gpu_bytes=80 * GB):
    cfg = deepspeed_config(train, on_gpu, torch.bfloat16, param_bytes, gpu_bytes if on_gpu else None)
    return cfg["zero_optimization"]["stage3_param_persistence_threshold"]


def test_auto_keeps_small_models_resident_on_gpus_and_shards_large_ones():
    two = _train(2)
    assert _threshold(two, True, int(2.3 * GB)) == 1e12  # 1B in bf16 on 80 GB cards: resident
    assert _threshold(two, True, int(14.6 * GB)) == 1e5  # 7B: sharded, per-layer gathers
    assert _threshold(two, False, int(2.3 * GB)) == 1e5  # CPU (tests, gloo): always real sharding
    assert _threshold(_train(1), False, 10**6) == 1e12  # one worker has nothing to shard


def test_never_and_always_override_the_policy():
    assert _threshold(_train(2, resident_params="never"), True, int(2.3 * GB)) == 1e5
    assert _threshold(_train(2, resident_params="always"), True, int(14.6 * GB)) == 1e12
    assert _threshold(_train(2, resident_params="always", offload_params=True), True, 10**6) == 1e5


def test_user_deepspeed_config_wins():
    train = _train(2, config={"zero_optimization": {"stage3_param_persistence_threshold": 123}})
    assert _threshold(train, True, int(2.3 * GB)) == 123
