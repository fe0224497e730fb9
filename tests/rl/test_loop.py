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


def test_old_logprobs_are_the_sampling_policy_s_without_dropout(monkeypatch):
    """The clipped objective's old logprobs are the policy's as it sampled (eval mode): with dropout in
    the model they are the same on every computation and equal an eval-mode forward, also after an
    update has left the model in train mode."""
    import torch

    import raywiz.rl.loop as loop_module
    from raywiz.rl.loop import TorchUpdater, token_logprobs

    model = build_model("tiny-gpt-bigcode", seed=1)
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts
    for m in dropouts:
        m.p = 0.3
    cfg = RLConfig.model_validate({
        "tasks": {"path": "toy"}, "reward": "fraction", "group_size": 2, "prompts_per_step": 2,
        "mini_batch_size": 4, "sampling": {"max_tokens": 6}})
    loop = GRPOLoop(model, load_tokenizer("tiny-gpt-bigcode"), toy_tasks(2), cfg, settings=ScoreSettings(workers=2),
                    code_of=toy_program, updater=TorchUpdater(model, 0.0))  # lr 0: the weights stay put
    seen, batches = [], []
    policy_loss, update = loop_module.policy_loss, loop._update

    def recording_loss(logprobs, old_logprobs, *a, **k):
        seen.append(old_logprobs.detach().clone())
        return policy_loss(logprobs, old_logprobs, *a, **k)

    def recording_update(batch, advantages):
        batches.append((batch, advantages))
        return update(batch, advantages)

    monkeypatch.setattr(loop_module, "policy_loss", recording_loss)
    monkeypatch.setattr(loop, "_update", recording_update)
    loop.step()
    assert model.training  # the update left it in train mode, as a real step does
    (batch, advantages), = batches
    values = lambda t: torch.sort(t.flatten()).values  # noqa: E731  (mini-batches come in a shuffled order)
    first = values(seen[0])
    seen.clear()
    update(batch, advantages)
    assert torch.equal(values(seen[0]), first)
    model.eval()
    with torch.no_grad():
        expected = token_logprobs(model, batch.input_ids, batch.attention_mask)[0]
    assert torch.allclose(first, values(expected), atol=1e-5)
