"""GRPO's math in plain torch: group-normalised advantages and the clipped policy-ratio loss.

Formulations followed (each option says which):

- Advantages: GRPO's outcome supervision (DeepSeekMath, arXiv 2402.03300, sec. 4.1.2):
  ``A_i = (r_i - mean(r_group)) / (std(r_group) + eps)``, every token of response ``i`` gets ``A_i``.
  ``scale_by_std=False`` drops the division as Dr. GRPO does (arXiv 2503.20783, sec. 3.2), which
  removes the bias towards questions whose rewards barely vary. The std is the unbiased sample std
  (torch's default, as in DeepSeekMath's reference code and TRL). A group with all-equal rewards gets
  advantage 0 (never NaN).
- Objective: the clipped surrogate with DAPO's clip-higher (arXiv 2503.14476, eq. 10): the ratio is
  clipped to ``[1 - eps_low, 1 + eps_high]`` and the loss is the token-level mean over all response
  tokens of the batch (DAPO's token-level aggregation, not GRPO's per-sequence mean of means).
- KL to a reference policy: the k3 estimator GRPO uses (DeepSeekMath eq. 4):
  ``exp(ref - logp) - (ref - logp) - 1`` per token, added to the loss with ``kl_coef`` (0 by default,
  as DAPO and Dr. GRPO drop it).
- Metrics: the token-level mean of the KL, the fraction of tokens whose ratio was clipped (the
  clipped term was the active one of the min), and the mean entropy of the policy's token distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def group_advantages(rewards: torch.Tensor, group_size: int, scale_by_std: bool = True,
                     eps: float = 1e-6) -> torch.Tensor:
    """Advantages for ``rewards`` laid out prompt by prompt, ``group_size`` consecutive samples each."""
    if rewards.dim() != 1 or group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be a flat tensor of whole groups of {group_size}; "
                         f"got shape {tuple(rewards.shape)}")
    groups = rewards.view(-1, group_size).to(torch.float64)
    centred = groups - groups.mean(dim=1, keepdim=True)
    if scale_by_std:
        # A single sample has no spread: its std is undefined, its centred reward is 0 anyway.
        std = groups.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(centred)
        centred = centred / (std + eps)
    return centred.reshape(-1).to(rewards.dtype)


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each position's next-token distribution (``logits``: [..., vocab])."""
    # At least float32: bf16 log-softmax over a large vocabulary loses the small probabilities.
    logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


@dataclass
class PolicyLoss:
    loss: torch.Tensor  # what to backpropagate
    policy_loss: float
    kl: float  # token-mean k3 estimate (0 when no reference is given)
    clip_fraction: float
    entropy: float | None  # token-mean entropy when logits were given


def _masked_token_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # DAPO's token-level aggregation: every response token of the batch weighs the same.
    return (values * mask).sum() / mask.sum().clamp(min=1)


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, eps_low: float = 0.2, eps_high: float = 0.28,
                ref_logprobs: torch.Tensor | None = None, kl_coef: float = 0.0,
                logits: torch.Tensor | None = None) -> PolicyLoss:
    """The clipped GRPO/DAPO loss over a batch of responses.

    ``logprobs``/``old_logprobs``/``ref_logprobs``/``mask``: [batch, tokens] (mask 1 on response tokens,
    0 on padding and prompt); ``advantages``: [batch] (one per response) or [batch, tokens];
    ``logits``: [batch, tokens, vocab], only for the entropy metric.
    """
    mask = mask.to(logprobs.dtype)
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    advantages = advantages.to(logprobs.dtype)
    ratio = torch.exp(logprobs - old_logprobs.detach())
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * advantages
    per_token = -torch.minimum(unclipped, clipped)
    policy = _masked_token_mean(per_token, mask)
    loss = policy
    kl_value = 0.0
    if ref_logprobs is not None:
        delta = ref_logprobs.detach() - logprobs
        kl = _masked_token_mean(torch.exp(delta) - delta - 1.0, mask)
        loss = loss + kl_coef * kl
        kl_value = float(kl.detach())
    with torch.no_grad():
        # A token is clipped when the clipped term is the smaller (the gradient through it is zero).
        was_clipped = (clipped < unclipped).to(mask.dtype)
        clip_fraction = float(_masked_token_mean(was_clipped, mask))
        entropy = float(_masked_token_mean(token_entropy(logits), mask)) if logits is not None else None
    return PolicyLoss(loss=loss, policy_loss=float(policy.detach()), kl=kl_value,
                      clip_fraction=clip_fraction, entropy=entropy)
