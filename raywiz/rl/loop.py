"""A single-process GRPO loop on one device (CPU or one GPU): the policy generates with the weights it
trains, in place, with HF ``generate``; the trusted checker scores; raywiz.rl.grpo updates.

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
from raywiz.rl.rewards import CodeOf, code_of_response, score_responses


@dataclass
class Rollout:
    """One rollout batch: prompt + response token ids per sample, right-padded."""

    input_ids: torch.Tensor  # [samples, tokens]
    attention_mask: torch.Tensor  # [samples, tokens]
    response_mask: torch.Tensor  # [samples, tokens - 1]: 1 where the next token is a response token
    texts: list[str]
    finish_reasons: list[str]


def _generate_group(model, tokenizer, prompt: str, cfg: RLConfig, max_tokens: int, generator_seed: int):
    """`group_size` samples of one prompt: (ids, mask, response_mask, texts, finish reasons)."""
    enc = tokenizer(prompt, return_tensors="pt").to(model.device)
    n_prompt = enc.input_ids.shape[1]
    torch.manual_seed(generator_seed)  # generate samples with the global RNG
    with torch.no_grad():
        out = model.generate(**enc, do_sample=True, temperature=cfg.sampling.temperature, top_p=cfg.sampling.top_p,
                             top_k=0, max_new_tokens=max_tokens, num_return_sequences=cfg.group_size,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    response = out[:, n_prompt:]
    eos = response == tokenizer.eos_token_id
    # A response is its tokens up to and including its first EOS; generate pads after it.
    after_eos = (eos.cumsum(dim=1) - eos.long()) > 0
    keep = ~after_eos
    texts = [tokenizer.decode(r[k & ~e]) for r, k, e in zip(response, keep, eos)]
    reasons = ["stop" if e.any() else "length" for e in eos]
    attention = torch.cat([torch.ones_like(enc.input_ids).expand(cfg.group_size, -1), keep.long()], dim=1)
    response_mask = torch.zeros_like(attention)
    response_mask[:, n_prompt:] = keep.long()
    return out, attention, response_mask[:, 1:], texts, reasons


def _pad_cat(tensors: list[torch.Tensor], value: int) -> torch.Tensor:
    width = max(t.shape[1] for t in tensors)
    return torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value) for t in tensors])


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """Log-probability of each next token ([samples, tokens - 1]) and the logits that gave it."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return logprobs, logits


class GRPOLoop:
    def __init__(self, model, tokenizer, tasks: list[Task], cfg: RLConfig, max_tokens: int = 64,
                 settings: ScoreSettings | None = None, code_of: CodeOf = code_of_response, seed: int = 0):
        self.model, self.tokenizer, self.tasks, self.cfg = model, tokenizer, tasks, cfg
        self.max_tokens = cfg.sampling.max_tokens or max_tokens
        self.settings, self.code_of = settings or ScoreSettings(), code_of
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
        self.sampler = random.Random(seed)  # which prompts each step takes
        self.seed, self.step_index = seed, 0
        # The reference policy is needed only for the KL term: no second copy when kl_coef is 0.
        self.reference = None
        if cfg.kl_coef > 0:
            import copy

            self.reference = copy.deepcopy(model).eval().requires_grad_(False)

    def rollout(self, prompts: list[Task]) -> Rollout:
        self.model.eval()
        groups = [_generate_group(self.model, self.tokenizer, t.prompt, self.cfg, self.max_tokens,
                                  self.seed * 1_000_003 + self.step_index * 1009 + i) for i, t in enumerate(prompts)]
        pad = self.tokenizer.pad_token_id
        return Rollout(_pad_cat([g[0] for g in groups], pad), _pad_cat([g[1] for g in groups], 0),
                       _pad_cat([g[2] for g in groups], 0), [x for g in groups for x in g[3]],
                       [x for g in groups for x in g[4]])

    def step(self) -> dict:
        cfg, timings = self.cfg, {}
        started = time.perf_counter()
        prompts = self.sampler.sample(self.tasks, min(cfg.prompts_per_step, len(self.tasks)))
        batch = self.rollout(prompts)
        timings["generate_s"] = time.perf_counter() - started

        t = time.perf_counter()
        items = [(task, text, reason) for task, text, reason in
                 zip([p for p in prompts for _ in range(cfg.group_size)], batch.texts, batch.finish_reasons)]
        rewards = score_responses(items, cfg, self.settings, code_of=self.code_of)
        values = torch.tensor([r.value for r in rewards], dtype=torch.float32)
        advantages = group_advantages(values, cfg.group_size, scale_by_std=cfg.scale_advantages_by_std)
        timings["score_s"] = time.perf_counter() - t

        t = time.perf_counter()
        with torch.no_grad():
            old_logprobs, _ = token_logprobs(self.model, batch.input_ids, batch.attention_mask)
            ref_logprobs = (token_logprobs(self.reference, batch.input_ids, batch.attention_mask)[0]
                            if self.reference is not None else None)
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
        self.step_index += 1
        lengths = batch.response_mask.sum(dim=1).float()
        return {
            "step": self.step_index, "reward_mean": float(values.mean()), "reward_std": float(values.std()),
            "pass_rate": sum(r.passed for r in rewards) / len(rewards), "response_length": float(lengths.mean()),
            "loss": sum(float(s.loss.detach()) for s in stats) / len(stats), "kl": sum(s.kl for s in stats) / len(stats),
            "clip_fraction": sum(s.clip_fraction for s in stats) / len(stats),
            "entropy": sum(s.entropy for s in stats) / len(stats), **timings,
            "step_s": time.perf_counter() - started,
        }
