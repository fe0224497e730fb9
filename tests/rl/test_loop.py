"""The GRPO loop learns: on the toy task a tiny random model's reward climbs (CPU, a minute or two)."""

import pytest
import torch

from raywiz.benchmarks.score import ScoreSettings
from raywiz.modeling import build_model, load_tokenizer
from raywiz.rl.config import RLConfig
from raywiz.rl.loop import GRPOLoop
from raywiz.rl.toy import toy_program, toy_tasks


@pytest.mark.slow
def test_toy_reward_climbs_with_tiny_random_model():
    torch.manual_seed(0)
    cfg = RLConfig.model_validate({
        "tasks": {"path": "toy"}, "reward": "fraction", "group_size": 8, "prompts_per_step": 2,
        "mini_batch_size": 8, "ppo_epochs": 2, "lr": 3e-3, "sampling": {"max_tokens": 8}})
    model = build_model("tiny-gpt-bigcode", seed=0)
    loop = GRPOLoop(model, load_tokenizer("tiny-gpt-bigcode"), toy_tasks(), cfg,
                    settings=ScoreSettings(workers=2), code_of=toy_program)
    metrics = [loop.step() for _ in range(30)]
    rewards = [m["reward_mean"] for m in metrics]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last - first >= 0.15, rewards
    assert all(0 <= m["clip_fraction"] <= 1 and m["entropy"] > 0 and m["kl"] == 0 for m in metrics)
    assert metrics[-1]["entropy"] < metrics[0]["entropy"]  # the policy sharpens as it learns
    assert all(m["generate_s"] > 0 and m["score_s"] > 0 and m["update_s"] > 0 for m in metrics)


def test_toy_program_always_parses_and_is_scored_by_the_checker():
    (task,) = toy_tasks(1)
    program = toy_program(task, 'eee\\eeee"; import os; os._exit(0)\nmore')
    assert program == 'def word_0():\n    return "eeeeeee"\n'
    compile(program, "<toy>", "exec")


def test_kl_to_reference_grows_once_the_policy_moves():
    cfg = RLConfig.model_validate({
        "tasks": {"path": "toy"}, "reward": "fraction", "group_size": 4, "prompts_per_step": 2,
        "mini_batch_size": 8, "lr": 1e-2, "kl_coef": 0.1, "sampling": {"max_tokens": 8}})
    loop = GRPOLoop(build_model("tiny-gpt-bigcode", seed=1), load_tokenizer("tiny-gpt-bigcode"), toy_tasks(2), cfg,
                    settings=ScoreSettings(workers=2), code_of=toy_program)
    first, second = loop.step(), loop.step()
    assert first["reward_std"] > 0  # a reward signal, so the first update moves the policy
    assert first["kl"] < 1e-6 < second["kl"]  # identical to the reference until the first update
