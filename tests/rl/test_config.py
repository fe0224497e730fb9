import pytest
from pydantic import ValidationError

from raywiz.rl.config import RLConfig


def _errors(data) -> str:
    with pytest.raises(ValidationError) as info:
        RLConfig.model_validate(data)
    return str(info.value)


def test_defaults_are_dapo_like():
    cfg = RLConfig.model_validate({"tasks": {"path": "tasks.jsonl"}})
    assert cfg.kl_coef == 0 and cfg.eps_high > cfg.eps_low and cfg.reward == "binary"
    assert cfg.sampling.temperature > 0 and cfg.async_rewards and not cfg.allow_eval_benchmarks


@pytest.mark.parametrize("data, field", [
    ({"tasks": {"path": "t.jsonl"}, "group_size": 1}, "group_size"),
    ({"tasks": {"path": "t.jsonl"}, "reward": "partial"}, "reward"),
    ({"tasks": {"path": "t.jsonl"}, "sampling": {"temperature": 0}}, "sampling.temperature"),
    ({"tasks": {"path": "t.jsonl"}, "group_sise": 4}, "group_sise"),
    ({"tasks": {"path": "t.jsonl", "benchmark": "mbpp"}}, "tasks"),
    ({"tasks": {}}, "tasks"),
    ({}, "tasks"),
])
def test_errors_name_the_field(data, field):
    assert field in _errors(data)


def test_mini_batch_larger_than_rollout_batch_is_refused():
    msg = _errors({"tasks": {"path": "t.jsonl"}, "prompts_per_step": 2, "group_size": 4, "mini_batch_size": 9})
    assert "mini_batch_size (9)" in msg and "= 8" in msg
