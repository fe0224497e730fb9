"""The `rl:` section of a job config: GRPO's settings, the tasks it trains on, the reward.

Defaults follow recent code-RL recipes (DAPO arXiv 2503.14476): clip-higher (eps_high > eps_low),
token-level loss, no KL to the reference (kl_coef 0).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from raywiz.config_base import ConfigSection as _Section


class RLSampling(_Section):
    temperature: float = Field(1.0, gt=0, description="sampling temperature of rollouts (> 0: a group "
                               "of greedy samples would be identical and carry no signal)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling; 1.0 keeps the policy's own "
                         "distribution, which the policy-ratio objective assumes")
    max_tokens: int | None = Field(None, ge=1, description="new tokens per sample (default: the checkpoint's, "
                                   "as in eval)")
    seed: int = Field(0, description="seed of the rollout sampler")


class RLTasks(_Section):
    """Where the training tasks come from: exactly one of `path`, `evolve_output`, `benchmark`."""

    path: str | None = Field(None, description="a JSONL or Parquet file with columns prompt and tests "
                             "(or test_list, or check + entry_point)")
    evolve_output: str | None = Field(None, description="verified evolve output (JSONL/Parquet): its "
                                      "instruction is the prompt, its `tests` column the assert list")
    benchmark: str | None = Field(None, description="a benchmark raywiz scores, e.g. mbpp (refused when it is "
                                  "an eval benchmark unless rl.allow_eval_benchmarks)")
    limit: int | None = Field(None, ge=1, description="use only the first N tasks")

    @model_validator(mode="after")
    def _exactly_one_source(self):
        given = [k for k in ("path", "evolve_output", "benchmark") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"give exactly one of path, evolve_output, benchmark (got {given or 'none'})")
        return self


class RLConfig(_Section):
    tasks: RLTasks = Field(description="the training tasks")
    group_size: int = Field(8, ge=2, description="samples per prompt; advantages are normalised within "
                            "each group (GRPO), so a group needs at least 2")
    prompts_per_step: int = Field(8, ge=1, description="prompts per rollout batch")
    ppo_epochs: int = Field(1, ge=1, description="passes of updates over each rollout batch")
    mini_batch_size: int = Field(16, ge=1, description="samples per optimizer step within a pass")
    lr: float = Field(1e-6, gt=0, description="AdamW learning rate")
    eps_low: float = Field(0.2, gt=0, lt=1, description="lower clip of the policy ratio: 1 - eps_low")
    eps_high: float = Field(0.28, gt=0, description="upper clip of the policy ratio: 1 + eps_high "
                            "(DAPO's clip-higher: larger than eps_low)")
    kl_coef: float = Field(0.0, ge=0, description="weight of the k3 KL to the reference model (0: no "
                           "reference model is kept)")
    scale_advantages_by_std: bool = Field(True, description="divide by the group's reward std (GRPO); "
                                          "false: only centre them (Dr. GRPO)")
    reward: Literal["binary", "fraction"] = Field("binary", description="binary: 1 when every test passes; "
                                                  "fraction: the fraction of tests passed")
    no_code_block_penalty: float = Field(0.0, ge=0, description="subtracted when the response has no "
                                         "fenced code block")
    truncated_penalty: float = Field(0.0, ge=0, description="subtracted when the response hit max_tokens "
                                     "(finish_reason 'length')")
    sampling: RLSampling = Field(default_factory=RLSampling)
    async_rewards: bool = Field(True, description="score a batch while the next one generates")
    allow_eval_benchmarks: bool = Field(False, description="allow tasks from benchmarks eval reports on "
                                        "(contaminates those results)")
    steps: int = Field(100, ge=1, description="rollout batches to train on")

    @model_validator(mode="after")
    def _mini_batch_fits(self):
        batch = self.prompts_per_step * self.group_size
        if self.mini_batch_size > batch:
            raise ValueError(f"mini_batch_size ({self.mini_batch_size}) exceeds the rollout batch "
                             f"(prompts_per_step x group_size = {batch})")
        return self
