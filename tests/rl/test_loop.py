"""The GRPO loop on one process. That it learns is tested through the stage, on the shipped quickstart
(tests/rl/test_stage.py: `raywiz rl jobs/rl_quickstart.yaml` on 2 Ray Train workers)."""

from raywiz.benchmarks.score import ScoreSettings
from raywiz.modeling import build_model, load_tokenizer
from raywiz.rl.config import RLConfig
from raywiz.rl.loop import GRPOLoop
from raywiz.rl.toy import toy_program, toy_tasks


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
