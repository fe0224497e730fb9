"""Autoscaling: the resources `raywiz train` asks for bring GPU nodes up, and idle ones go away.

Ray's own fake multi-node autoscaler (the provider behind ``ray.cluster_utils.AutoscalingCluster``,
autoscaler v2 as KubeRay runs it) with a GPU worker group that starts at 0 nodes. The head is
started like AutoscalingCluster starts it, but with its own ports and temp dir and stopped without a
machine-wide ``ray stop`` (AutoscalingCluster.start/shutdown run ``ray stop --force``, which would kill
every Ray cluster on the machine; and its base config file is missing from Ray 2.60's wheel).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .ray_cluster import LocalRayCluster

REPO = Path(__file__).resolve().parents[2]
GPU_NODE = {"CPU": 1, "GPU": 1, "object_store_memory": 100 << 20}


def fake_autoscaling_config(gcs_address: str, head_resources: dict, max_gpu_nodes: int) -> dict:
    """What AutoscalingCluster(head, {"gpu": ...}, autoscaler_v2=True) generates, for the fake provider."""
    from ray.cluster_utils import FAKE_HEAD_NODE_ID

    return {
        "cluster_name": "raywiz-fake",
        "max_workers": max_gpu_nodes,
        # type "fake_multinode" would make the autoscaler read its defaults from example.yaml, which
        # Ray 2.60's wheel lacks; "external" loads the same provider class with built-in defaults.
        "provider": {"type": "external", "module": "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider",
                     "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "launch_multiple": True,
                     "head_node_id": FAKE_HEAD_NODE_ID, "gcs_address": gcs_address},
        "available_node_types": {
            "ray.head.default": {"resources": head_resources, "node_config": {}, "max_workers": 0},
            "gpu-group": {"resources": GPU_NODE, "node_config": {}, "min_workers": 0, "max_workers": max_gpu_nodes},
        },
        "head_node_type": "ray.head.default",
        "idle_timeout_minutes": 0.1,  # KubeRay's manifests use minutes; the test can't wait that long
        "upscaling_speed": 1.0,
        "auth": {}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
        "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


DRIVER = textwrap.dedent("""
    import json, sys
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
    from raywiz.config import parse_job
    from raywiz.jobs import train_bundles

    job = parse_job({"name": "autoscale", "train": {"data": {}, "optim": {"global_batch_size": 2, "micro_batch_size": 1},
                                                   "scaling": {"num_workers": 2, "cpus_per_worker": 1}}})
    bundles = train_bundles(job)  # what the train launcher's ScalingConfig asks for
    ray.init(address=sys.argv[1], log_to_driver=False)
    pg = placement_group(bundles, strategy="PACK")
    ray.get(pg.ready(), timeout=150)

    @ray.remote
    def worker():
        return {"node": ray.get_runtime_context().get_node_id(), "gpus": ray.get_gpu_ids()}

    out = ray.get([worker.options(num_cpus=b["CPU"], num_gpus=b.get("GPU", 0),
                                  scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i)
                                  ).remote() for i, b in enumerate(bundles)])
    remove_placement_group(pg)
    print(json.dumps({"bundles": bundles, "workers": out}))
""")


@pytest.mark.slow
def test_train_request_scales_gpu_group_up_from_zero_and_back(tmp_path):
    from ray.cluster_utils import FAKE_HEAD_NODE_ID

    head = {"CPU": 1}
    cluster = LocalRayCluster(head={"num_cpus": 1}, auth=False, extra_env={
        "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
        # autoscaler v2, as AutoscalingCluster(autoscaler_v2=True) and KubeRay's v2 setting turn it on
        "RAY_enable_autoscaler_v2": "1", "RAY_CLOUD_INSTANCE_ID": FAKE_HEAD_NODE_ID,
        "RAY_OVERRIDE_NODE_ID_FOR_TESTING": FAKE_HEAD_NODE_ID})
    cluster.autoscaling_config = fake_autoscaling_config(cluster.address, head, max_gpu_nodes=3)
    with cluster:
        nodes = cluster.wait_for_nodes(1, 60, exact=True)
        assert [n["resources_total"].get("GPU", 0) for n in nodes] == [0]  # no GPU node until asked

        env = {**cluster.env, "PYTHONPATH": str(REPO)}
        r = subprocess.run([sys.executable, "-c", DRIVER, cluster.address], env=env, capture_output=True, text=True,
                           timeout=240)
        assert r.returncode == 0, r.stderr[-3000:] + cluster.logs()
        result = json.loads(r.stdout.strip().splitlines()[-1])
        assert result["bundles"] == [{"CPU": 1.0, "GPU": 1.0}] * 2
        # One fake GPU node per bundle was launched, and each training worker got a GPU on one.
        gpu_nodes = {w["node"] for w in result["workers"]}
        assert len(gpu_nodes) == 2 and all(len(w["gpus"]) == 1 for w in result["workers"])
        assert FAKE_HEAD_NODE_ID not in gpu_nodes

        # Idle GPU nodes are released (idle_timeout_minutes), back to the head alone.
        nodes = cluster.wait_for_nodes(1, 90, exact=True)
        assert nodes[0]["node_id"] == FAKE_HEAD_NODE_ID
