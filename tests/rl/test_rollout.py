"""In-place rollouts on raywiz's engine (EngineRollouts) against HF generate on the same module."""

import pytest
import torch

from raywiz.inference.slot_decoding import lane_key, sample_tokens
from raywiz.modeling import build_model, load_tokenizer
from raywiz.rl.rollout import EngineRollouts, GenerateRollouts, rollout_params

PROMPTS = ["def add(a, b):\n", "import os\nclass Stack:\n    def push(self, x):", "# count the e's\n"]
MAX_TOKENS = 12


@pytest.fixture()
def policy():
    model = build_model("tiny-gpt-bigcode", dtype=torch.float32, seed=0)
    return model, load_tokenizer("tiny-gpt-bigcode")


def optimizer_step(model, tok) -> None:
    """One SGD step that pushes the model towards one token: its greedy outputs change."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    ids = torch.tensor([tok(p).input_ids[-4:] for p in PROMPTS])
    loss = -torch.log_softmax(model(input_ids=ids).logits[:, -1], dim=-1)[:, tok.encode("e")[0]].mean()
    loss.backward()
    optimizer.step()


def by_prompt(samples):
    return sorted(((s.prompt_index, s.sample_index, s.prompt_ids, s.response_ids, s.text) for s in samples))


def _greedy_both(model, tok, group_size=1):
    engine = EngineRollouts(model, tok, MAX_TOKENS, temperature=0.0)
    reference = GenerateRollouts(model, tok, MAX_TOKENS, temperature=0.0)
    return (by_prompt(engine.generate(PROMPTS, group_size, seed=0)),
            by_prompt(reference.generate(PROMPTS, group_size, seed=0)), engine)


def test_greedy_engine_rollouts_equal_hf_generate_on_the_same_module(policy):
    model, tok = policy
    engine_out, reference_out, engine = _greedy_both(model, tok)
    assert engine.engine.model is model  # no second copy of the weights
    assert engine_out == reference_out
    assert all(len(r[3]) >= 1 for r in engine_out)


def test_seeded_sampling_is_reproducible_and_streams_every_sample(policy):
    model, tok = policy
    rollouts = EngineRollouts(model, tok, MAX_TOKENS, temperature=1.0)
    first = list(rollouts.generate(PROMPTS, 4, seed=7))
    assert sorted((s.prompt_index, s.sample_index) for s in first) == [(i, k) for i in range(3) for k in range(4)]
    assert by_prompt(first) == by_prompt(rollouts.generate(PROMPTS, 4, seed=7))
    assert by_prompt(first) != by_prompt(rollouts.generate(PROMPTS, 4, seed=8))
    assert len({tuple(s.response_ids) for s in first if s.prompt_index == 0}) > 1  # a group that varies
    # same text under two prompt indices: different groups (each prompt has its own seed)
    twins = list(rollouts.generate([PROMPTS[0], PROMPTS[0]], 2, seed=7))
    assert {tuple(s.response_ids) for s in twins if s.prompt_index == 0} != \
        {tuple(s.response_ids) for s in twins if s.prompt_index == 1}


def test_sampled_tokens_come_from_the_training_models_own_distribution(policy):
    """Replaying the engine's sampler (its uniform for that sample) on the logits of a plain
    full forward of the training module gives back every token the engine sampled: the response ids
    are exactly what the policy sampled, and at temperature 1 with top_p 1 from softmax(logits),
    the distribution whose log-probabilities the loop recomputes."""
    model, tok = policy
    seed, group = 3, 4
    samples = list(EngineRollouts(model, tok, MAX_TOKENS, temperature=1.0).generate(PROMPTS, group, seed))
    for s in samples:
        params = rollout_params(MAX_TOKENS, 1.0, 1.0, seed, s.prompt_index, group)
        ids = torch.tensor([s.prompt_ids + s.response_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(s.prompt_ids) - 1:-1]
        n = len(s.response_ids)
        replayed = sample_tokens(logits, torch.zeros(n, dtype=torch.bool), torch.ones(n), torch.ones(n),
                                 torch.full((n,), lane_key(params.seed, s.sample_index, s.prompt_ids)),
                                 torch.arange(n))
        assert replayed.tolist() == s.response_ids
        assert tok.decode(s.response_ids, skip_special_tokens=True) == s.text


def test_after_an_optimizer_step_the_next_generate_uses_the_new_weights(policy):
    model, tok = policy
    before, _, rollouts = _greedy_both(model, tok)
    optimizer_step(model, tok)
    assert rollouts.sync_weights(model) < 0.5  # in place: nothing to send
    after = by_prompt(rollouts.generate(PROMPTS, 1, seed=0))
    assert after != before
    assert after == by_prompt(GenerateRollouts(model, tok, MAX_TOKENS, temperature=0.0).generate(PROMPTS, 1, 0))
