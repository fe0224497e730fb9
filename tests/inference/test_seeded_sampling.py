"""raywiz's seeded sampler for continuous batching: its choices follow softmax(scores) and never pick
a token the warpers before it removed; unseeded rows pass through untouched."""

import torch

from raywiz.inference.seeded_sampling import SeededSampler, step_key


def test_seeded_choices_follow_the_distribution_and_skip_removed_tokens():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    scores = torch.log(probs).repeat(20000, 1)  # the last token was removed (-inf), as top-p would
    keys = torch.tensor([step_key(row, 0) for row in range(20000)], dtype=torch.int32)
    out = SeededSampler()(scores, keys)
    chosen = out.argmax(-1)
    assert torch.isinf(out).sum(-1).eq(4).all()  # one token left per row: the manager must pick it
    freq = torch.bincount(chosen, minlength=5).float() / 20000
    assert torch.allclose(freq, probs, atol=0.015), freq
    # Unseeded rows (-1) are left to the manager's own sampling.
    mixed = SeededSampler()(scores[:2], torch.tensor([-1, keys[0].item()], dtype=torch.int32))
    assert torch.equal(mixed[0], scores[0]) and torch.isinf(mixed[1]).sum() == 4
