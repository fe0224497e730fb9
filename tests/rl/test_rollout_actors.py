"""Rollouts on Ray actors (ActorRollouts): 2 CPU engines on the shared local cluster follow the trained
module's weights after sync_weights."""

import pytest
import torch

from raywiz.inference import EngineSpec
from raywiz.modeling import build_model, load_tokenizer
from raywiz.rl.rollout import ActorRollouts, EngineRollouts
from tests.rl.test_rollout import MAX_TOKENS, PROMPTS, by_prompt, optimizer_step

# The actors build the same random tiny model the trainer starts from (seed 0), in fp32 on CPU.
SPEC = EngineSpec(model="tiny-gpt-bigcode", device="cpu", dtype="float32", max_batch_size=4)


@pytest.mark.slow
def test_after_sync_the_actors_generate_what_the_updated_local_model_does(ray_local):
    model, tok = build_model("tiny-gpt-bigcode", dtype=torch.float32, seed=0), load_tokenizer("tiny-gpt-bigcode")
    local = EngineRollouts(model, tok, MAX_TOKENS, temperature=0.0)
    actors = ActorRollouts(SPEC, n_engines=2, max_tokens=MAX_TOKENS, temperature=0.0)
    try:
        before = by_prompt(actors.generate(PROMPTS, 2, seed=0))
        assert before == by_prompt(local.generate(PROMPTS, 2, seed=0))  # both on the checkpoint

        optimizer_step(model, tok)
        seconds = actors.sync_weights(model)
        assert 0 < seconds < 60
        after = by_prompt(actors.generate(PROMPTS, 2, seed=0))
        assert after != before
        assert after == by_prompt(local.generate(PROMPTS, 2, seed=0))

        # Sampled groups too: each prompt's seed is its own, whichever actor and batch it runs in.
        actors.temperature = local.temperature = 1.0
        sampled = list(actors.generate(PROMPTS, 3, seed=5))
        assert by_prompt(sampled) == by_prompt(local.generate(PROMPTS, 3, seed=5))
        assert sorted((s.prompt_index, s.sample_index) for s in sampled) == [(i, k) for i in range(3) for k in range(3)]

        # An actor lost after the sync: its replacement starts from the checkpoint and catches up on the
        # synced weights before it generates.
        ray_local.kill(actors.pool.actors[0])
        actors.temperature = local.temperature = 0.0
        assert by_prompt(actors.generate(PROMPTS, 2, seed=0)) == after
    finally:
        actors.close()
