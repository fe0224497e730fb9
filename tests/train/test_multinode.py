"""A train job across two Ray nodes (a local multi-node cluster: `ray start --head` + `ray start --address`).

What a multi-node GPU job needs, checked here on CPU: workers on different nodes (placement
strategy), one storage path every node sees (each rank writes its part of a checkpoint there and the
parts merge into one sealed checkpoint), and the worker start timeout reaching the workers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from raywiz.artifacts import check_manifest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "ops"))

from ray_cluster import LocalRayCluster  # noqa: E402


def test_two_workers_on_two_nodes_share_storage_and_checkpoint(tmp_path):
    shared = tmp_path / "shared"  # stands for the NFS volume or bucket every node mounts
    job = tmp_path / "multinode.yaml"
    job.write_text(f"""
name: multinode
storage: {shared}
model: {{name_or_path: tiny-gpt-bigcode}}
train:
  data: {{paths: ["raywiz:quickstart/instructions.jsonl"], max_length: 256}}
  optim: {{epochs: 1, max_steps: 4, global_batch_size: 4, micro_batch_size: 1, warmup_steps: 1}}
  scaling: {{num_workers: 2, placement_strategy: STRICT_SPREAD, worker_start_timeout_s: 300, nccl_timeout_s: 600}}
  checkpoint: {{every_n_steps: 2}}
  debug: {{pid_files: true}}
""")
    cluster = LocalRayCluster(head={"num_cpus": 2}, workers=[{"num_cpus": 2}], auth=False)
    with cluster:
        env = dict(cluster.env, PYTHONPATH=str(REPO), WANDB_MODE="disabled", RAY_ADDRESS=cluster.address)
        proc = subprocess.run([sys.executable, "-m", "raywiz.cli", "train", str(job)], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    train_dir = shared / "multinode" / "train"
    workers = [json.loads((train_dir / "workers" / f"rank_{r}.json").read_text()) for r in (0, 1)]
    assert workers[0]["node_id"] != workers[1]["node_id"], "STRICT_SPREAD should put the ranks on two nodes"
    assert {w["worker_start_timeout_s"] for w in workers} == {"300.0"}
    for step in (2, 4):
        ckpt = train_dir / f"checkpoint_{step:08d}"
        assert check_manifest(str(ckpt), kind="train_checkpoint").complete
        # each node's rank wrote its own ZeRO shard into the one shared checkpoint
        shards = sorted(p.name for p in (ckpt / "zero" / "state").glob("*optim_states.pt"))
        assert len(shards) == 2, shards
        assert sorted(p.name for p in (ckpt / "rng").iterdir()) == ["rank_0.pt", "rank_1.pt"]
    assert Path(proc.stdout.strip().splitlines()[-1]) == train_dir / "checkpoint_00000004" / "hf"
    assert not any(os.scandir(train_dir / ".staging"))
