"""A single-process GRPO loop on one device (CPU or one GPU): the policy generates with the weights it
trains, in place (raywiz.rl.rollout), the trusted checker scores each sample as it arrives
(raywiz.rl.reward_service), raywiz.rl.grpo updates.

This is the algorithm end to end, small: no Ray, no checkpoints, no export (the stage adds those).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import torch

from raywiz.benchmarks import Task
from raywiz.benchmarks.score import ScoreSettings
from raywiz.rl.config import RLConfig
from raywiz.rl.grpo import group_advantages, policy_loss
from raywiz.rl.reward_service import RewardScorer, ThreadRewardScorer
from raywiz.rl.rewards import CodeOf, code_of_response
from raywiz.rl.rollout import GenerateRollouts, Rollouts, Sample


@dataclass
class Rollout:
    """One rollout batch as tensors: prompt + response token ids per sample, right-padded."""

    input_ids: torch.Tensor  # [samples, tokens]
    attention_mask: torch.Tensor  # [samples, tokens]
    response_mask: torch.Tensor  # [samples, tokens - 1]: 1 where the next token is a response token

    @classmethod
    def of(cls, samples: list[Sample], pad_id: int) -> "Rollout":
        width = max(len(s.prompt_ids) + len(s.response_ids) for s in samples)
        ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(samples), width), dtype=torch.long)
        response = torch.zeros((len(samples), width), dtype=torch.long)
        for row, s in enumerate(samples):
            n_prompt, n = len(s.prompt_ids), len(s.prompt_ids) + len(s.response_ids)
            ids[row, :n] = torch.tensor(s.prompt_ids + s.response_ids)
            attention[row, :n] = 1
            response[row, n_prompt:n] = 1
        return cls(ids, attention, response[:, 1:])

    def to(self, device) -> "Rollout":
        return Rollout(self.input_ids.to(device), self.attention_mask.to(device), self.response_mask.to(device))


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """Log-probability of each next token ([samples, tokens - 1]) and the logits that gave it."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return logprobs, logits


class GRPOLoop:
    def __init__(self, model, tokenizer, tasks: list[Task], cfg: RLConfig, max_tokens: int = 64,
                 settings: ScoreSettings | None = None, code_of: CodeOf = code_of_response, seed: int = 0,
                 rollouts: Rollouts | None = None, scorer: RewardScorer | None = None):
        self.model, self.tokenizer, self.tasks, self.cfg = model, tokenizer, tasks, cfg
        self.rollouts = rollouts or GenerateRollouts(model, tokenizer, cfg.sampling.max_tokens or max_tokens,
                                                     cfg.sampling.temperature, cfg.sampling.top_p)
        self.scorer = scorer or ThreadRewardScorer(cfg, settings or ScoreSettings(), code_of=code_of)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
        self.sampler = random.Random(seed)  # which prompts each step takes
        self.seed, self.step_index = seed, 0
        # The reference policy is needed only for the KL term: no second copy when kl_coef is 0.
        self.reference = None
        if cfg.kl_coef > 0:
            import copy

            self.reference = copy.deepcopy(model).eval().requires_grad_(False)

    def step(self) -> dict:
        cfg, timings = self.cfg, {}
        started = time.perf_counter()
        prompts = self.sampler.sample(self.tasks, min(cfg.prompts_per_step, len(self.tasks)))
        samples = []

        def submit(key: int, sample: Sample) -> None:
            self.scorer.submit(key, prompts[sample.prompt_index], sample.text, sample.finish_reason)

        for sample in self.rollouts.generate([t.prompt for t in prompts], cfg.group_size,
                                             self.seed * 1_000_003 + self.step_index):
            if cfg.async_rewards:  # scored as soon as it is generated: the checks run while the rest generate
                submit(len(samples), sample)
            samples.append(sample)
        timings["generate_s"] = time.perf_counter() - started

        t = time.perf_counter()  # score_s: the wait for rewards once the last sample is in
        if not cfg.async_rewards:
            for key, sample in enumerate(samples):
                submit(key, sample)
        by_key = self.scorer.results()
        # Groups are contiguous (GRPO normalises within each): order samples by prompt, then by their
        # place in the group (not by when they finished: the update does not depend on timing).
        order = sorted(range(len(samples)), key=lambda i: (samples[i].prompt_index, samples[i].sample_index))
        samples, rewards = [samples[i] for i in order], [by_key[i] for i in order]
        batch = Rollout.of(samples, self.tokenizer.pad_token_id)
        values = torch.tensor([r.value for r in rewards], dtype=torch.float32)
        advantages = group_advantages(values, cfg.group_size, scale_by_std=cfg.scale_advantages_by_std)
        timings["score_s"] = time.perf_counter() - t

        t = time.perf_counter()
        batch = batch.to(next(self.model.parameters()).device)
        advantages = advantages.to(batch.input_ids.device)
        # In mini-batches: a whole rollout batch's logits (samples x tokens x vocabulary) need not fit.
        chunks = [slice(start, start + cfg.mini_batch_size) for start in range(0, len(values), cfg.mini_batch_size)]
        with torch.no_grad():
            old_logprobs = torch.cat([token_logprobs(self.model, batch.input_ids[c], batch.attention_mask[c])[0]
                                      for c in chunks])
            ref_logprobs = (torch.cat([token_logprobs(self.reference, batch.input_ids[c], batch.attention_mask[c])[0]
                                       for c in chunks]) if self.reference is not None else None)
        self.model.train()
        stats = []
        order = list(range(len(values)))
        for _ in range(cfg.ppo_epochs):
            self.sampler.shuffle(order)
            for start in range(0, len(order), cfg.mini_batch_size):
                idx = torch.tensor(order[start:start + cfg.mini_batch_size])
                logprobs, logits = token_logprobs(self.model, batch.input_ids[idx], batch.attention_mask[idx])
                out = policy_loss(logprobs, old_logprobs[idx], advantages[idx], batch.response_mask[idx],
                                  cfg.eps_low, cfg.eps_high,
                                  ref_logprobs[idx] if ref_logprobs is not None else None, cfg.kl_coef, logits)
                self.optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                self.optimizer.step()
                stats.append(out)
        timings["update_s"] = time.perf_counter() - t
        timings["sync_s"] = self.rollouts.sync_weights(self.model)
        self.step_index += 1
        lengths = batch.response_mask.sum(dim=1).float().cpu()
        return {
            "step": self.step_index, "reward_mean": float(values.mean()), "reward_std": float(values.std()),
            "pass_rate": sum(r.passed for r in rewards) / len(rewards), "response_length": float(lengths.mean()),
            "loss": sum(float(s.loss.detach()) for s in stats) / len(stats), "kl": sum(s.kl for s in stats) / len(stats),
            "clip_fraction": sum(s.clip_fraction for s in stats) / len(stats),
            "entropy": sum(s.entropy for s in stats) / len(stats), **timings,
            "step_s": time.perf_counter() - started,
        }
