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


def test_the_loop_on_engine_rollouts_and_cluster_rewards_async_or_not(ray_local):
    """One GRPO step on EngineRollouts + ClusterRewardScorer: scoring while generating (async_rewards)
    gives the same rewards and update as scoring after."""
    import torch

    from raywiz.modeling import build_model, load_tokenizer
    from raywiz.rl.config import RLConfig
    from raywiz.rl.loop import GRPOLoop
    from raywiz.rl.rollout import EngineRollouts
    from raywiz.rl.toy import toy_program, toy_tasks

    results = []
    for async_rewards in (True, False):
        cfg = RLConfig.model_validate({
            "tasks": {"path": "toy"}, "reward": "fraction", "group_size": 4, "prompts_per_step": 2,
            "mini_batch_size": 8, "lr": 1e-2, "async_rewards": async_rewards, "sampling": {"max_tokens": 8}})
        model, tok = build_model("tiny-gpt-bigcode", dtype=torch.float32, seed=0), load_tokenizer("tiny-gpt-bigcode")
        scorer = ClusterRewardScorer(cfg, SETTINGS, workers=2, code_of=toy_program)
        loop = GRPOLoop(model, tok, toy_tasks(2), cfg, rollouts=EngineRollouts(model, tok, 8), scorer=scorer)
        try:
            results.append(loop.step())
        finally:
            scorer.close()
    scored_while_generating, scored_after = results
    for key in ("reward_mean", "reward_std", "loss", "response_length"):
        assert scored_while_generating[key] == pytest.approx(scored_after[key]), key
    assert scored_while_generating["reward_std"] > 0  # a signal, so the comparison means something
    assert scored_while_generating["sync_s"] < 0.5 and scored_after["score_s"] > 0
