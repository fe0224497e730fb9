"""The `rl:` section of a job config: GRPO's settings, the tasks it trains on, the reward.

Defaults follow recent code-RL recipes (DAPO arXiv 2503.14476): clip-higher (eps_high > eps_low),
token-level loss, no KL to the reference (kl_coef 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field, model_validator

from raywiz.config_base import ConfigSection as _Section
from raywiz.training.config import CheckpointSection, DeepSpeedSection, FSDP2Section, OptimConfig, PeftConfig


class RLSampling(_Section):
    temperature: float = Field(1.0, gt=0, description="sampling temperature of rollouts (> 0: a group "
                               "of greedy samples would be identical and carry no signal)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling; 1.0 keeps the policy's own "
                         "distribution, which the policy-ratio objective assumes")
    max_tokens: int | None = Field(None, ge=1, description="new tokens per sample (default: the checkpoint's, "
                                   "as in eval)")
    seed: int = Field(0, description="seed of the rollout sampler")
    stop: list[str] | None = Field(None, description="stop sequences of rollouts (default: eval.generation.stop "
                                   "when the job sets it, else none: as the policy is evaluated)")

    @model_validator(mode="after")
    def _no_empty_stop(self):
        if self.stop is not None and any(s == "" for s in self.stop):
            raise ValueError("stop sequences must not be empty strings")
        return self


class RLTasks(_Section):
    """Where the training tasks come from: exactly one of `path`, `evolve_output`, `benchmark`, `toy`."""

    path: str | None = Field(None, description="a JSONL or Parquet file with columns prompt and tests "
                             "(or test_list, or check + entry_point)")
    evolve_output: str | None = Field(None, description="verified evolve output (JSONL/Parquet): its "
                                      "instruction is the prompt, its `tests` column the assert list")
    benchmark: str | None = Field(None, description="a benchmark raywiz scores, e.g. mbpp (refused when it is "
                                  "an eval benchmark unless rl.allow_eval_benchmarks)")
    toy: int | None = Field(None, ge=1, description="N prompts of the toy task (raywiz.rl.toy), which a tiny "
                            "random model can learn: the quickstart's")
    limit: int | None = Field(None, ge=1, description="use only the first N tasks")

    @model_validator(mode="after")
    def _exactly_one_source(self):
        given = [k for k in ("path", "evolve_output", "benchmark", "toy") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"give exactly one of path, evolve_output, benchmark, toy (got {given or 'none'})")
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
    rollout: Literal["engine", "actors", "generate"] = Field(
        "engine", description="engine: raywiz's engine generates with the trained module itself, in place (no copy, "
        "no reload); actors: rl.rollout_engines Ray actors on the starting checkpoint, given the weights through "
        "Ray's object store after every step (full fine-tuning only); generate: HF generate (the slow reference)")
    rollout_engines: int = Field(1, ge=1, description="rollout: actors -- how many engine actors (a GPU each when "
                                 "rl.use_gpu)")
    reward_workers: int | None = Field(None, ge=0, description="sandbox workers of the cluster that compute rewards "
                                       "(default: one per free CPU; 0: score on each Ray Train worker's own threads)")
    async_rewards: bool = Field(True, description="score a batch while the next one generates")
    allow_eval_benchmarks: bool = Field(False, description="allow tasks from benchmarks eval reports on "
                                        "(contaminates those results)")
    steps: int = Field(100, ge=1, description="rollout batches to train on")
    model: str | None = Field(None, description="the policy to start from: 'best' or 'last' (this run's train "
                              "checkpoint), or an HF model directory, an adapter directory, a hub name. Default: "
                              "'best' when the job has a train: section, else model.name_or_path")
    seed: int = Field(0, description="seeds the prompt sampler, the mini-batch shuffle and the model's init")
    grad_clip: float = Field(1.0, ge=0, description="max grad norm; 0 turns clipping off")
    weight_decay: float = Field(0.0, ge=0)
    workers: int = Field(1, ge=1, description="Ray Train workers; each takes whole groups of the rollout batch")
    cpus_per_worker: float = Field(1, gt=0)
    use_gpu: bool | None = Field(None, description="default: True when the cluster has GPUs")
    engine: Literal["deepspeed", "fsdp2"] = Field("deepspeed", description="the training engine (as train.engine)")
    deepspeed: DeepSpeedSection = Field(
        default_factory=lambda: DeepSpeedSection(stage=2),
        description="as train.deepspeed; stage 2 by default: the policy generates with its own whole weights")
    fsdp2: FSDP2Section = Field(default_factory=FSDP2Section)
    peft: PeftConfig = Field(default_factory=PeftConfig, description="LoRA / DoRA / QLoRA, as train.peft")
    checkpoint: CheckpointSection = Field(default_factory=lambda: CheckpointSection(every_n_steps=10))
    max_failures: int = Field(3, ge=-1, description="worker failures to recover from (-1: forever)")
    eval_every: int = Field(0, ge=0, description="score the policy on the held-out tasks every N steps (0: off); "
                            "each such step is checkpointed and best_checkpoint.json names the best")
    eval_tasks: int = Field(0, ge=0, description="tasks held out of training (the last N of the task list) for "
                            "eval_every")

    @model_validator(mode="after")
    def _mini_batch_fits(self):
        batch = self.prompts_per_step * self.group_size
        if self.mini_batch_size > batch:
            raise ValueError(f"mini_batch_size ({self.mini_batch_size}) exceeds the rollout batch "
                             f"(prompts_per_step x group_size = {batch})")
        return self

    @model_validator(mode="after")
    def _groups_split_over_workers(self):
        if self.prompts_per_step % self.workers:
            raise ValueError(f"prompts_per_step ({self.prompts_per_step}) must be a multiple of workers "
                             f"({self.workers}): each worker takes whole groups")
        if self.mini_batch_size % self.workers:
            raise ValueError(f"mini_batch_size ({self.mini_batch_size}) must be a multiple of workers ({self.workers})")
        return self

    @model_validator(mode="after")
    def _rollouts_need_whole_weights(self):
        ds = self.deepspeed
        if self.engine == "deepspeed" and ds.stage == 3 and ds.resident_params != "always":
            raise ValueError("deepspeed.stage: 3 partitions the weights the policy generates with; use stage 2 "
                             "(the default) or resident_params: always")
        return self

    @model_validator(mode="after")
    def _eval_has_tasks(self):
        if bool(self.eval_every) != bool(self.eval_tasks):
            raise ValueError("eval_every and eval_tasks go together: held-out tasks to score every N steps "
                             f"(got eval_every={self.eval_every}, eval_tasks={self.eval_tasks})")
        return self

    def resolve_paths(self, fix) -> None:
        """Relative task files and model directories in a job file are relative to the file."""
        for field in ("path", "evolve_output"):
            if getattr(self.tasks, field):
                setattr(self.tasks, field, fix(getattr(self.tasks, field)))
        if self.model and self.model not in ("best", "last"):
            self.model = fix(self.model)

    def engine_settings(self) -> "EngineSettings":
        """What raywiz.training's engine reads (the attributes of train:'s section), for one update per
        mini-batch: each worker's share of a mini-batch is one micro-batch, no accumulation."""
        optim = OptimConfig(lr=self.lr, weight_decay=self.weight_decay, grad_clip=self.grad_clip, seed=self.seed,
                            micro_batch_size=self.mini_batch_size // self.workers,
                            global_batch_size=self.mini_batch_size, warmup_steps=0, schedule="constant")
        return EngineSettings(optim=optim, engine=self.engine, deepspeed=self.deepspeed, fsdp2=self.fsdp2,
                              peft=self.peft, scaling=_Scaling(self.workers))


@dataclass(frozen=True)
class _Scaling:
    num_workers: int


@dataclass(frozen=True)
class EngineSettings:
    optim: OptimConfig
    engine: str
    deepspeed: DeepSpeedSection
    fsdp2: FSDP2Section
    peft: PeftConfig
    scaling: _Scaling
    fused_loss: str = "off"  # the loss needs the logits themselves (log-probs, entropy)
    grad_accum_steps: int = 1
