"""One GRPO step, end to end: the policy generates with the weights it trains (raywiz.rl.rollout), the
trusted checker scores each sample as it arrives (raywiz.rl.reward_service), raywiz.rl.grpo updates.

Plain code, no Ray: the stage (raywiz.rl.recipe) runs it on each Ray Train worker with the training
engine as the ``Updater``, and adds checkpoints, export and metrics. With several workers, each takes
whole groups of the step's prompts (advantages stay local) and ``Collective`` reduces the metrics.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Callable, Protocol

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


class Updater(Protocol):
    """What the loop drives to update the policy: DeepSpeed's engine and raywiz's FSDP2 driver have these
    calls (raywiz.training.engine_base.TrainEngine.driver); ``TorchUpdater`` is the plain one."""

    def __call__(self, **batch): ...

    def backward(self, loss: torch.Tensor) -> None: ...

    def step(self) -> None: ...


class TorchUpdater:
    """AdamW on one process, no engine (the loop's own tests, the bench's naive loop)."""

    def __init__(self, model, lr: float):
        self.model, self.optimizer = model, torch.optim.AdamW(model.parameters(), lr=lr)

    def __call__(self, **batch):
        return self.model(**batch)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def _no_collective(t: torch.Tensor) -> torch.Tensor:
    return t.unsqueeze(0)


class GRPOLoop:
    """``step()`` runs one rollout batch and returns its metrics; ``state_dict()`` is what a checkpoint
    needs to continue exactly (with the engine's state and the RNG, which the recipe saves).

    ``all_gather(t)``: every rank's ``t`` stacked ([world, *t.shape]); identity-like on one process.
    """

    def __init__(self, model, tokenizer, tasks: list[Task], cfg: RLConfig, max_tokens: int = 64,
                 settings: ScoreSettings | None = None, code_of: CodeOf = code_of_response, seed: int = 0,
                 rollouts: Rollouts | None = None, scorer: RewardScorer | None = None,
                 updater: Updater | None = None, rank: int = 0, world: int = 1,
                 all_gather: Callable[[torch.Tensor], torch.Tensor] = _no_collective):
        if cfg.prompts_per_step > len(tasks):
            raise ValueError(f"rl.prompts_per_step ({cfg.prompts_per_step}) exceeds the {len(tasks)} training tasks")
        self.model, self.tokenizer, self.tasks, self.cfg = model, tokenizer, tasks, cfg
        self.rollouts = rollouts or GenerateRollouts(model, tokenizer, cfg.sampling.max_tokens or max_tokens,
                                                     cfg.sampling.temperature, cfg.sampling.top_p)
        self.scorer = scorer or ThreadRewardScorer(cfg, settings or ScoreSettings(), code_of=code_of)
        self.updater = updater or TorchUpdater(model, cfg.lr)
        self.rank, self.world, self.all_gather = rank, world, all_gather
        # Which prompts each step takes and the mini-batch order: the same on every rank (same seed, same calls).
        self.sampler = random.Random(seed)
        self.seed, self.step_index = seed, 0
        # The reference policy is needed only for the KL term: no second copy when kl_coef is 0.
        self.reference = None
        if cfg.kl_coef > 0:
            import copy

            self.reference = copy.deepcopy(model).eval().requires_grad_(False)

    # -- exact resume
    def state_dict(self) -> dict:
        version, internal, gauss = self.sampler.getstate()
        return {"step": self.step_index, "sampler": [version, list(internal), gauss]}

    def load_state_dict(self, state: dict) -> None:
        version, internal, gauss = state["sampler"]
        self.sampler.setstate((version, tuple(internal), gauss))
        self.step_index = state["step"]

    # -- one step
    def _rollout_seed(self, step: int) -> int:
        return (self.seed * 1_000_003 + step) * self.world + self.rank

    def _generate_and_score(self, prompts: list[Task], group_size: int, seed: int):
        """Samples (grouped by prompt) and their rewards; each sample is scored as soon as it is
        generated, so the checks run while the rest generate. Returns (samples, rewards, generate_s,
        score_s: the wait for the rewards generation did not hide)."""
        started, samples = time.perf_counter(), []

        def submit(key: int, sample: Sample) -> None:
            self.scorer.submit(key, prompts[sample.prompt_index], sample.text, sample.finish_reason)

        for sample in self.rollouts.generate([t.prompt for t in prompts], group_size, seed):
            if self.cfg.async_rewards:  # scored as soon as it is generated: the checks run while the rest generate
                submit(len(samples), sample)
            samples.append(sample)
        generate_s = time.perf_counter() - started
        if not self.cfg.async_rewards:
            for key, sample in enumerate(samples):
                submit(key, sample)
        by_key = self.scorer.results()
        score_s = time.perf_counter() - started - generate_s
        # Groups are contiguous (GRPO normalises within each): order samples by prompt, then by their
        # place in the group (not by when they finished: the update does not depend on timing).
        order = sorted(range(len(samples)), key=lambda i: (samples[i].prompt_index, samples[i].sample_index))
        return [samples[i] for i in order], [by_key[i] for i in order], generate_s, score_s

    def step(self) -> dict:
        cfg, timings = self.cfg, {}
        started = time.perf_counter()
        prompts = self.sampler.sample(self.tasks, cfg.prompts_per_step)[self.rank::self.world]  # whole groups
        samples, rewards, timings["generate_s"], timings["score_s"] = self._generate_and_score(
            prompts, cfg.group_size, self._rollout_seed(self.step_index))

        t = time.perf_counter()
        batch = Rollout.of(samples, self.tokenizer.pad_token_id)
        values = torch.tensor([r.value for r in rewards], dtype=torch.float32)
        advantages = group_advantages(values, cfg.group_size, scale_by_std=cfg.scale_advantages_by_std)
        stats = self._update(batch, advantages)
        timings["update_s"] = time.perf_counter() - t
        timings["sync_s"] = self.rollouts.sync_weights(self.model)
        self.step_index += 1
        return self._metrics(values, rewards, batch, stats, timings, started)

    def _update(self, batch: Rollout, advantages: torch.Tensor) -> list:
        """ppo_epochs passes of clipped-objective updates over the batch, one optimizer step per mini-batch."""
        cfg = self.cfg
        batch = batch.to(next(self.model.parameters()).device)
        ids, attention, response = batch.input_ids, batch.attention_mask, batch.response_mask
        advantages = advantages.to(ids.device)
        per_rank = cfg.mini_batch_size // self.world
        # In mini-batches: a whole rollout batch's logits (samples x tokens x vocabulary) need not fit.
        chunks = [slice(start, start + per_rank) for start in range(0, len(ids), per_rank)]
        # The policy as it sampled the rollouts: in eval mode (no dropout), as every rollout engine runs it.
        # The model is left in train mode by the last update, and rollouts on Ray actors never switch it.
        self.model.eval()
        with torch.no_grad():
            old_logprobs = torch.cat([token_logprobs(self.updater, ids[c], attention[c])[0] for c in chunks])
            ref_logprobs = (torch.cat([token_logprobs(self.reference, ids[c], attention[c])[0] for c in chunks])
                            if self.reference is not None else None)
        self.model.train()
        stats, order = [], list(range(len(ids)))
        for _ in range(cfg.ppo_epochs):
            self.sampler.shuffle(order)
            for start in range(0, len(order), per_rank):
                idx = torch.tensor(order[start:start + per_rank], device=ids.device)
                logprobs, logits = token_logprobs(self.updater, ids[idx], attention[idx])
                out = policy_loss(logprobs, old_logprobs[idx], advantages[idx], response[idx],
                                  cfg.eps_low, cfg.eps_high,
                                  ref_logprobs[idx] if ref_logprobs is not None else None, cfg.kl_coef, logits)
                self.updater.backward(out.loss)
                self.updater.step()
                stats.append(out)
        return stats

    def _metrics(self, values, rewards, batch, stats, timings, started) -> dict:
        """The step's numbers over every rank's samples (rewards gathered, the rest averaged)."""
        n = len(stats)
        local = torch.tensor([
            sum(r.passed for r in rewards) / len(rewards), float(batch.response_mask.sum(dim=1).float().mean().cpu()),
            sum(float(s.loss.detach()) for s in stats) / n, sum(s.kl for s in stats) / n,
            sum(s.clip_fraction for s in stats) / n, sum(s.entropy for s in stats) / n,
            timings["generate_s"], timings["score_s"], timings["update_s"], timings["sync_s"]], dtype=torch.float64)
        means = self.all_gather(local).mean(dim=0).tolist()
        every_reward = self.all_gather(values.to(torch.float64)).reshape(-1)
        names = ("pass_rate", "response_length", "loss", "kl", "clip_fraction", "entropy",
                 "generate_s", "score_s", "update_s", "sync_s")
        return {"step": self.step_index, "reward_mean": float(every_reward.mean()),
                "reward_std": float(every_reward.std()), **dict(zip(names, means)),
                "step_s": time.perf_counter() - started}

    def evaluate(self, tasks: list[Task], seed: int = 0) -> float:
        """Mean reward of one sample per held-out task (split over ranks), at a fixed seed, so two
        evaluations differ only by the weights."""
        mine = tasks[self.rank::self.world]
        rewards = self._generate_and_score(mine, 1, seed)[1] if mine else []
        totals = self.all_gather(torch.tensor([sum(r.value for r in rewards), len(rewards)], dtype=torch.float64))
        total, count = totals.sum(dim=0).tolist()
        return total / max(count, 1)
