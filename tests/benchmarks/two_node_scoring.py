"""Run by test_cluster_scoring.py in a process of its own (a Ray cluster of two raylets needs a fresh
driver): score HumanEval samples on two nodes, remove the second node after a few verdicts, and print
what was written as JSON on stdout."""

from __future__ import annotations

import json
import os
import sys


def samples_for(tasks) -> list[dict]:
    """Canonical, wrong and hostile samples, interleaved so that every worker gets each kind."""
    rows = []
    for t in tasks:
        rows += [{"task_id": t.task_id, "completion": t.solution},
                 {"task_id": t.task_id, "completion": "    return None\n"},
                 {"task_id": t.task_id, "completion": "    import sys\n    sys.exit(0)\n"}]
    return rows


def main(partial_path: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from raywiz.benchmarks import load_tasks
    from raywiz.benchmarks.cluster_scoring import ClusterScorer
    from raywiz.benchmarks.score import score_samples
    from raywiz.eval.config import EvalConfig

    tasks = load_tasks("humaneval")[:8]
    samples = samples_for(tasks)
    settings = EvalConfig().score_settings()
    settings.workers = 2
    single = score_samples("humaneval", tasks, samples, settings, allow_partial=True)

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    second = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, runtime_env={"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}},
             log_to_driver=False)
    removed_after: list[int] = []
    with open(partial_path, "a", encoding="utf-8") as partial, ClusterScorer(settings) as scorer:
        nodes = sorted(set(scorer.node_of.values()))

        def save(index, verdict) -> None:  # what `raywiz eval score` does: append as each verdict comes
            partial.write(json.dumps({"_index": index, **verdict.to_dict()}) + "\n")
            partial.flush()
            if not removed_after and sum(1 for _ in open(partial_path)) >= 4:
                removed_after.append(4)
                cluster.remove_node(second)  # mid-run: the second node's worker has samples in flight

        verdicts = scorer.score("humaneval", tasks, samples, allow_partial=True, on_verdict=save)
        stats = scorer.stats
    ray.shutdown()
    cluster.shutdown()
    print(json.dumps({
        "nodes": nodes, "second_node": second.node_id, "removed_after": removed_after,
        "workers_started": stats.workers_started, "workers_lost": stats.workers_lost, "reruns": stats.reruns,
        "per_node": stats.per_node,
        "single": [[v.passed, v.result] for v in single], "cluster": [[v.passed, v.result] for v in verdicts],
    }))


if __name__ == "__main__":
    main(sys.argv[1])
