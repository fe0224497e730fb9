"""The `train:` section of a job config.

Defaults are WizardCoder's recipe (global batch 512, lr 2e-5, 30 warmup steps, cosine, max length
2048, 3 epochs) on DeepSpeed ZeRO-3 (or torch's FSDP2: `engine: fsdp2`). With packing on, a "row" is
one packed sequence of ``max_length`` tokens holding several samples, and batch sizes count rows.
"""

from __future__ import annotations

from typing import Callable, Literal

from pydantic import Field, field_validator, model_validator

from raywiz.config_base import ConfigSection
from raywiz.data.config import DataConfig
# The engine's sections live in the training library (rl uses them too); re-exported here.
from raywiz.training.config import (CheckpointSection, DeepSpeedSection, FSDP2Section, OptimConfig, PeftConfig,  # noqa: F401
                                    ScalingSection)


class EvaluateSection(ConfigSection):
    """Evaluate each checkpoint while training goes on (Ray Train V2 checkpoint validation)."""

    enabled: bool = Field(
        False, description="score every exported checkpoint with the job's `eval:` section, in a separate "
        "Ray task, while training continues; its pass@1 joins the checkpoint's metrics")
    keep_best: bool = Field(
        True, description="checkpoint.num_to_keep keeps the checkpoints with the best pass@1 (mean over the "
        "eval benchmarks) instead of the newest; the latest is always kept too, for resume")
    num_gpus: float | None = Field(
        None, ge=0, description="GPUs for each evaluation task; default: 1 on a GPU cluster with a local "
        "model backend, 0 for an openai endpoint or on CPU")
    num_cpus: float = Field(1, gt=0)
    timeout_s: float | None = Field(None, gt=0, description="give up on one checkpoint's evaluation after this")


class DebugSection(ConfigSection):
    """Opt-in diagnostics (off by default: none of them is needed to train)."""

    pid_files: bool = Field(
        False, description="write each worker's pid to train/workers/rank_N.json (for operators and fault injection)")
    trace_samples: bool = Field(
        False, description="record the sample_ids of every step (to audit resume: nothing skipped or repeated)")
    profile_step: int | None = Field(
        None, ge=1, description="profile this optimizer step (1-based) with torch.profiler; rank 0 writes the top "
        "host and device ops to train/profile_step_N.json")


class TrainConfig(ConfigSection):
    data: DataConfig
    optim: OptimConfig = Field(default_factory=OptimConfig)
    engine: Literal["deepspeed", "fsdp2"] = Field(
        "deepspeed", description="deepspeed: DeepSpeed ZeRO (train.deepspeed); fsdp2: torch's fully_shard per "
        "transformer block, DCP checkpoints (train.fsdp2). Both export the same hf/")
    deepspeed: DeepSpeedSection = Field(default_factory=DeepSpeedSection)
    fsdp2: FSDP2Section = Field(default_factory=FSDP2Section)
    scaling: ScalingSection = Field(default_factory=ScalingSection)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    evaluate: EvaluateSection = Field(default_factory=EvaluateSection)
    peft: PeftConfig = Field(default_factory=PeftConfig)
    max_failures: int = Field(3, ge=-1, description="worker failures to recover from (-1: forever)")
    log_every_n_steps: int = Field(1, ge=1)
    fused_loss: Literal["auto", "liger", "chunked", "off"] = Field(
        "auto", description="loss straight from the hidden states, never holding full-vocabulary fp32 logits. auto: "
        "liger-kernel on GPU when installed (raywiz[gpu]), else chunked torch; off for models other than "
        "GPT-BigCode, Llama, Qwen2. off: logits then cross-entropy")
    debug: DebugSection = Field(default_factory=DebugSection)

    @field_validator("fused_loss", mode="before")
    @classmethod
    def _yaml_off(cls, v):
        return "off" if v is False else v  # YAML reads a bare `off` as false

    @model_validator(mode="after")
    def _batch_divides(self):
        per_step = self.optim.micro_batch_size * self.scaling.num_workers
        if self.optim.global_batch_size % per_step:
            raise ValueError(
                f"optim.global_batch_size ({self.optim.global_batch_size}) must be a multiple of "
                f"optim.micro_batch_size x scaling.num_workers ({self.optim.micro_batch_size} x "
                f"{self.scaling.num_workers} = {per_step})"
            )
        return self

    @model_validator(mode="after")
    def _engine_options(self):
        """Each engine's own section applies to it alone: an option the other engine would ignore is an error."""
        if self.engine == "fsdp2":
            default = DeepSpeedSection()
            changed = [k for k in DeepSpeedSection.model_fields if getattr(self.deepspeed, k) != getattr(default, k)]
            if changed:
                raise ValueError(f"train.deepspeed.{changed[0]}: a DeepSpeed option, but train.engine is fsdp2 "
                                 "(remove it, or set train.engine: deepspeed)")
            if self.peft.method in ("dora", "qlora"):
                raise ValueError(f"train.peft.method: {self.peft.method} is not supported with train.engine: fsdp2 "
                                 "(lora is); use train.engine: deepspeed")
        elif self.fsdp2 != FSDP2Section():
            raise ValueError("train.fsdp2: FSDP2 options, but train.engine is deepspeed (set train.engine: fsdp2)")
        return self

    @model_validator(mode="after")
    def _evaluate_needs_exports(self):
        if self.evaluate.enabled and self.checkpoint.export_hf != "every":
            raise ValueError("evaluate.enabled scores each checkpoint's HF export: set checkpoint.export_hf: every")
        return self

    @property
    def grad_accum_steps(self) -> int:
        return self.optim.global_batch_size // (self.optim.micro_batch_size * self.scaling.num_workers)

    def resolve_paths(self, fix: Callable[[str], str]) -> None:
        self.data.resolve_paths(fix)
