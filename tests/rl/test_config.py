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


# ---------------------------------------------------------------- the rl: section of a job


def _job_error(data: dict) -> str:
    from raywiz.config import ConfigError, parse_job

    with pytest.raises(ConfigError) as info:
        parse_job({"name": "j", **data}, "job.yaml")
    return str(info.value)


@pytest.mark.parametrize("rl, field", [
    ({"tasks": {"toy": 4}, "workers": 3, "prompts_per_step": 4}, "prompts_per_step (4) must be a multiple of workers"),
    ({"tasks": {"toy": 4}, "deepspeed": {"stage": 3}}, "deepspeed.stage"),
    ({"tasks": {"toy": 4}, "eval_every": 5}, "eval_every and eval_tasks"),
    ({"tasks": {"toy": 0}}, "rl.tasks.toy"),
    ({"tasks": {"toy": 4}, "peft": {"method": "lore"}}, "rl.peft.method"),
    ({"tasks": {"toy": 4}, "checkpoint": {"every_n_steps": 0}}, "rl.checkpoint.every_n_steps"),
    ({"tasks": {"toy": 4}, "model": "best"}, "rl.model"),  # 'best' is train's, and the job has no train:
])
def test_job_errors_name_the_rl_field(rl, field):
    msg = _job_error({"rl": rl})
    assert msg.startswith("job.yaml: invalid job config") and field in msg, msg


def test_start_model_is_trains_best_else_last_checkpoint_else_the_named_one(tmp_path):
    from raywiz.artifacts import write_json_atomic, write_manifest
    from raywiz.config import ConfigError, parse_job
    from raywiz.rl.launch import start_model

    job = parse_job({"name": "j", "storage": str(tmp_path), "train": {"data": {}}, "rl": {"tasks": {"toy": 2}}})
    with pytest.raises(ConfigError, match="rl.model: 'best': this run has no train checkpoint"):
        start_model(job)
    train = job.layout.training("train")
    for step in (2, 4):
        hf = train.checkpoint(step).hf
        (tmp_path / "j" / "train" / f"checkpoint_{step:08d}" / "hf").mkdir(parents=True)
        write_manifest(hf, "hf_export")
    assert start_model(job) == train.checkpoint(4).hf  # no best recorded: the last
    write_json_atomic(train.best_checkpoint, {"step": 2, "hf": train.checkpoint(2).hf})
    assert start_model(job) == train.checkpoint(2).hf
    job.rl.model = "last"
    assert start_model(job) == train.checkpoint(4).hf
    job.rl.model = "tiny-llama"
    assert start_model(job) == "tiny-llama"
    assert start_model(job, given="/models/x") == "/models/x"  # handed on by the pipeline (--checkpoint)
    no_train = parse_job({"name": "k", "storage": str(tmp_path), "model": {"name_or_path": "tiny-llama"},
                          "rl": {"tasks": {"toy": 2}}})
    assert start_model(no_train) == "tiny-llama"
