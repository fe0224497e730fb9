"""ClusterRewardScorer: the reward contract on the cluster's sandbox workers (a real local Ray cluster)
gives ThreadRewardScorer's rewards, on honest and forging samples alike."""

import pytest

from raywiz.rl.reward_service import ClusterRewardScorer, ThreadRewardScorer
from raywiz.rl.rewards import reward_units
from tests.rl.test_rewards import FORGERIES, HONEST_FRACTION, RIGHT, SETTINGS, TASKS, WRONG, _cfg, _fenced


def test_cluster_rewards_equal_thread_rewards_and_forgeries_get_zero(ray_local):
    cfg = _cfg(reward="fraction", truncated_penalty=0.5)
    items = [(task, response, "stop") for task in TASKS.values() for response in (RIGHT, WRONG)]
    forged_from = len(items)
    items += [(TASKS["asserts"], _fenced(code.strip()), "stop") for code in FORGERIES.values()]
    items.append((TASKS["asserts"], RIGHT, "length"))  # the truncation penalty applies the same way
    cluster, threads = ClusterRewardScorer(cfg, SETTINGS, workers=2), ThreadRewardScorer(cfg, SETTINGS)
    try:
        for scorer in (cluster, threads):
            for key, (task, response, finish_reason) in enumerate(items):
                scorer.submit(key, task, response, finish_reason)
        got, want = cluster.results(), threads.results()
        assert cluster.results() == {}  # results() hands each reward back once
    finally:
        cluster.close()
        threads.close()
    assert got == want
    assert [got[2 * i].value for i in range(len(TASKS))] == pytest.approx([HONEST_FRACTION[n] for n in TASKS])
    forged = {name: got[forged_from + i].value for i, name in enumerate(FORGERIES)}
    assert all(v == 0 for v in forged.values()), forged
    assert got[len(items) - 1].value == pytest.approx(HONEST_FRACTION["asserts"] - 0.5)
    # every test of every response was one sandboxed check on a cluster worker
    assert sum(cluster.cluster.stats.per_node.values()) == sum(len(reward_units(t, cfg)) for t, _, _ in items)
