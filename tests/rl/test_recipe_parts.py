"""The rl stage's plain parts, without Ray: tasks and held-out tasks, the driver's checks, prompts."""

from __future__ import annotations

import json

import pytest

from raywiz.config import ConfigError, parse_job
from raywiz.rl.launch import check_tasks
from raywiz.rl.recipe import describe, training_tasks, with_template
from raywiz.rl.toy import toy_program


def _job(tmp_path, **rl):
    return parse_job({"name": "j", "storage": str(tmp_path), "rl": rl})


def test_toy_tasks_hold_out_the_last_eval_tasks(tmp_path):
    cfg = _job(tmp_path, tasks={"toy": 3}, eval_tasks=2, eval_every=5).rl
    train, held_out, code_of = training_tasks(cfg)
    assert [t.task_id for t in train] == ["toy/0", "toy/1", "toy/2"]
    assert [t.task_id for t in held_out] == ["toy/3", "toy/4"]  # never trained on
    assert code_of is toy_program


def test_driver_refuses_bad_task_files_and_too_few_tasks_before_ray(tmp_path):
    bad = tmp_path / "tasks.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "tests": ["assert f() == 1"]}) + "\n" + json.dumps({"prompt": "q"}) + "\n")
    with pytest.raises(ConfigError, match=rf"rl.tasks: {bad}:2: no tests"):
        check_tasks(_job(tmp_path, tasks={"path": str(bad)}))
    bad.write_text(json.dumps({"prompt": "p", "tests": ["assert f() == 1"]}) + "\n")
    with pytest.raises(ConfigError, match=r"rl.prompts_per_step: 8 prompts per step, but only 1 tasks"):
        check_tasks(_job(tmp_path, tasks={"path": str(bad)}, mini_batch_size=8))
    with pytest.raises(ConfigError, match="rl.tasks: rl.tasks.benchmark: humaneval is an eval benchmark"):
        check_tasks(_job(tmp_path, tasks={"benchmark": "humaneval"}))
    assert check_tasks(_job(tmp_path, tasks={"toy": 4}, prompts_per_step=4)) == 4


def test_instruction_prompts_take_the_checkpoints_template(tmp_path):
    cfg = _job(tmp_path, tasks={"toy": 1}).rl
    [task], _, _ = training_tasks(cfg)
    [rendered] = with_template([task], "wizardcoder", None, None)
    assert rendered.prompt.startswith("Below is an instruction") and task.prompt in rendered.prompt
    assert with_template([task], None, None, None) == [task]  # a model without raywiz.json: as it is


def test_progress_detail_shows_reward_and_eval():
    record = {"reward_mean": 0.5, "reward_std": 0.25, "pass_rate": 0.125, "response_length": 7.0,
              "clip_fraction": 0.1, "step_s": 2.0, "eval_reward": None}
    assert describe(record) == "reward 0.500 ± 0.250 | pass 12% | len 7 | clip 0.10 | 2.0s/step"
    assert describe({**record, "eval_reward": 0.75}).endswith("| eval 0.750")


def test_rollouts_and_scorer_follow_the_config(tmp_path):
    from raywiz.modeling import build_model, load_tokenizer
    from raywiz.rl.recipe import make_rollouts, make_scorer
    from raywiz.rl.reward_service import ThreadRewardScorer
    from raywiz.rl.rollout import EngineRollouts, GenerateRollouts

    model, tok = build_model("tiny-gpt-bigcode", seed=0), load_tokenizer("tiny-gpt-bigcode")
    cfg = _job(tmp_path, tasks={"toy": 2}).rl
    assert cfg.rollout == "engine"  # in place on raywiz's engine unless asked otherwise
    rollouts = make_rollouts(model, tok, cfg, 8)
    assert isinstance(rollouts, EngineRollouts) and rollouts.engine.model is model  # the trained module, no copy
    rollouts.close()
    assert isinstance(make_rollouts(model, tok, _job(tmp_path, tasks={"toy": 2}, rollout="generate").rl, 8),
                      GenerateRollouts)
    lora_actors = _job(tmp_path, tasks={"toy": 2}, rollout="actors", peft={"method": "lora"}).rl
    with pytest.raises(ValueError, match="rl.rollout: actors needs full fine-tuning"):
        make_rollouts(model, tok, lora_actors, 8)
    scorer = make_scorer(_job(tmp_path, tasks={"toy": 2}, reward_workers=0).rl, toy_program)
    assert isinstance(scorer, ThreadRewardScorer)  # 0: this worker's own threads, no Ray needed
    scorer.close()
    with pytest.raises(ConfigError, match="rl.rollout"):
        _job(tmp_path, tasks={"toy": 2}, rollout="vllm")


def test_rollouts_stop_where_eval_stops(tmp_path):
    from raywiz.modeling import build_model, load_tokenizer
    from raywiz.rl.recipe import make_rollouts, stop_sequences

    job = parse_job({"name": "j", "storage": str(tmp_path), "rl": {"tasks": {"toy": 2}},
                     "eval": {"generation": {"stop": ["\nclass"]}}})
    assert stop_sequences(job) == ("\nclass",)  # eval's, as the policy is evaluated
    assert stop_sequences(_job(tmp_path, tasks={"toy": 2}, sampling={"stop": ["END"]})) == ("END",)
    assert stop_sequences(_job(tmp_path, tasks={"toy": 2})) == ()
    with pytest.raises(ConfigError, match="rl.sampling"):
        _job(tmp_path, tasks={"toy": 2}, sampling={"stop": [""]})

    model, tok = build_model("tiny-gpt-bigcode", seed=0), load_tokenizer("tiny-gpt-bigcode")
    cfg = _job(tmp_path, tasks={"toy": 2}).rl
    free = make_rollouts(model, tok, cfg, 12)
    plain = {(s.prompt_index, s.sample_index): s for s in free.generate(["def f():\n    return '"], 4, seed=3)}
    free.close()
    sample = max(plain.values(), key=lambda s: len(s.text))
    stop = sample.text[3:5]  # a sequence this sample is known to produce
    stopped = make_rollouts(model, tok, cfg, 12, stop=(stop,))
    again = {(s.prompt_index, s.sample_index): s for s in stopped.generate(["def f():\n    return '"], 4, seed=3)}
    stopped.close()
    cut = again[(sample.prompt_index, sample.sample_index)]
    assert cut.text == sample.text[: sample.text.index(stop)] and cut.finish_reason == "stop"
    with pytest.raises(ValueError, match="generate takes no stop"):
        make_rollouts(model, tok, _job(tmp_path, tasks={"toy": 2}, rollout="generate").rl, 12, stop=("x",))
