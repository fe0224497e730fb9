"""grpo.py against a direct computation: Python loops over float64 numbers on fixed random inputs."""

import math

import pytest
import torch

from raywiz.rl.grpo import group_advantages, policy_loss


def _direct_advantages(rewards, group_size, scale_by_std, eps=1e-6):
    out = []
    for start in range(0, len(rewards), group_size):
        group = rewards[start:start + group_size]
        mean = sum(group) / len(group)
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / (len(group) - 1))
        out += [(r - mean) / (std + eps) if scale_by_std else r - mean for r in group]
    return out


@pytest.mark.parametrize("scale_by_std", [True, False])
def test_group_advantages_match_direct_and_equal_group_is_zero(scale_by_std):
    gen = torch.Generator().manual_seed(0)
    rewards = torch.rand(12, generator=gen, dtype=torch.float64)
    rewards[4:8] = 0.5  # the second group: all-equal rewards
    got = group_advantages(rewards, 4, scale_by_std=scale_by_std)
    want = _direct_advantages(rewards.tolist(), 4, scale_by_std)
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), atol=1e-12)
    assert torch.isfinite(got).all() and got[4:8].abs().max() == 0
    assert abs(got[:4].sum()) < 1e-9  # centred within each group


def test_group_advantages_refuse_partial_groups():
    with pytest.raises(ValueError, match="whole groups of 4"):
        group_advantages(torch.zeros(6), 4)


def _direct_loss(lp, old, ref, adv, mask, logits, eps_low, eps_high, kl_coef):
    """Token-level (DAPO) aggregation written out: sums over every unmasked token of the batch."""
    n = total = kl_sum = clipped_count = ent_sum = 0.0
    for b in range(len(lp)):
        for t in range(len(lp[b])):
            if not mask[b][t]:
                continue
            ratio = math.exp(lp[b][t] - old[b][t])
            a = adv[b]
            clipped_ratio = min(max(ratio, 1 - eps_low), 1 + eps_high)
            total += -min(ratio * a, clipped_ratio * a)
            clipped_count += (a > 0 and ratio > 1 + eps_high) or (a < 0 and ratio < 1 - eps_low)
            d = ref[b][t] - lp[b][t]
            kl_sum += math.exp(d) - d - 1
            z = max(logits[b][t])
            norm = math.log(sum(math.exp(x - z) for x in logits[b][t])) + z
            ent_sum += -sum(math.exp(x - norm) * (x - norm) for x in logits[b][t])
            n += 1
    return total / n, kl_sum / n, clipped_count / n, ent_sum / n, total / n + kl_coef * kl_sum / n


def test_policy_loss_matches_direct_computation_with_padding():
    gen = torch.Generator().manual_seed(1)
    batch, tokens, vocab = 6, 7, 5
    old = -torch.rand(batch, tokens, generator=gen, dtype=torch.float64) * 3
    # Ratios spread well beyond both clip bounds so the clipped branch is exercised both ways.
    lp = (old + torch.randn(batch, tokens, generator=gen, dtype=torch.float64) * 0.5).requires_grad_()
    ref = old + torch.randn(batch, tokens, generator=gen, dtype=torch.float64) * 0.3
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5, 0.5, 0.5], dtype=torch.float64)  # one all-equal group
    adv = group_advantages(rewards, 2)
    mask = torch.ones(batch, tokens, dtype=torch.float64)
    for b, length in enumerate([7, 3, 5, 1, 6, 4]):
        mask[b, length:] = 0  # right padding
    logits = torch.randn(batch, tokens, vocab, generator=gen, dtype=torch.float64)
    out = policy_loss(lp, old, adv, mask, eps_low=0.2, eps_high=0.28, ref_logprobs=ref, kl_coef=0.05,
                      logits=logits)
    policy, kl, clip_frac, entropy, total = _direct_loss(
        lp.tolist(), old.tolist(), ref.tolist(), adv.tolist(), mask.tolist(), logits.tolist(), 0.2, 0.28, 0.05)
    assert out.policy_loss == pytest.approx(policy, abs=1e-12)
    assert out.kl == pytest.approx(kl, abs=1e-12) and kl > 0
    assert out.clip_fraction == pytest.approx(clip_frac, abs=1e-12) and 0 < clip_frac < 1
    assert out.entropy == pytest.approx(entropy, abs=1e-12)
    assert float(out.loss.detach()) == pytest.approx(total, abs=1e-12)
    # Padding carries no gradient; zero-advantage rows only get the KL's.
    out.loss.backward()
    assert lp.grad[mask == 0].abs().max() == 0
    assert torch.isfinite(lp.grad).all()


def test_policy_loss_without_reference_and_with_equal_rewards_is_zero():
    lp = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    adv = group_advantages(torch.ones(4, dtype=torch.float64), 4)
    out = policy_loss(lp, lp.detach() - 0.1, adv, torch.ones(4, 3))
    assert out.kl == 0 and out.entropy is None and out.policy_loss == 0
    out.loss.backward()
    assert lp.grad.abs().max() == 0


def test_gradient_raises_logprob_of_positive_advantage_tokens():
    lp = torch.zeros(2, 2, dtype=torch.float64, requires_grad=True)
    out = policy_loss(lp, lp.detach(), torch.tensor([1.0, -1.0], dtype=torch.float64), torch.ones(2, 2))
    out.loss.backward()
    assert (lp.grad[0] < 0).all() and (lp.grad[1] > 0).all()  # descent raises row 0, lowers row 1
