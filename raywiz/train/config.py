"""The `train:` section of a job config.

Defaults are WizardCoder's recipe (global batch 512, lr 2e-5, 30 warmup steps, cosine, max length
2048, 3 epochs) on DeepSpeed ZeRO-3 (or torch's FSDP2: `engine: fsdp2`). With packing on, a "row" is
one packed sequence of ``max_length`` tokens holding several samples, and batch sizes count rows.
"""

from __future__ import annotations

from typing import Any, Callable, Literal

from pydantic import Field, field_validator, model_validator

from raywiz.config_base import ConfigSection
from raywiz.data.config import DataConfig


class PeftConfig(ConfigSection):
    method: Literal["none", "lora", "dora", "qlora"] = Field(
        "none", description="none: full fine-tuning; lora / dora (peft); qlora: LoRA on a 4-bit base (bitsandbytes; runs as ZeRO-2)")
    r: int = Field(16, ge=1)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: Literal["auto"] | list[str] = Field(
        "auto", description="auto: attention and MLP projections per architecture (raywiz/training/adapters.py)")

    @property
    def enabled(self) -> bool:
        return self.method != "none"


class OptimConfig(ConfigSection):
    epochs: int = Field(3, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    global_batch_size: int = Field(512, ge=1, description="rows per optimizer step, over all workers")
    micro_batch_size: int = Field(4, ge=1, description="rows per worker per forward pass")
    lr: float = Field(2e-5, gt=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    warmup_steps: int = Field(30, ge=0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float = Field(1.0, ge=0, description="max grad norm; 0 turns clipping off")
    seed: int = 42
    gradient_checkpointing: bool = False


class DeepSpeedSection(ConfigSection):
    stage: Literal[0, 1, 2, 3] = 3
    offload_optimizer: bool = False
    offload_params: bool = False
    resident_params: Literal["auto", "always", "never"] = Field(
        "auto", description="stage 3: keep the (bf16) weights whole on every GPU while gradients and optimizer "
        "state stay sharded (ZeRO-2's layout, so DeepSpeed runs it as stage 2: no per-module hooks). auto: one "
        "worker, or on GPUs when the weights take at most 10% of a GPU's memory (about 4B "
        "parameters on 80 GB), where ZeRO-3's per-layer weight all-gathers cost more than they save "
        "(weak scaling 87% -> 93% on 2 H100s, 1B model); never: shard everything (pure ZeRO-3)")
    optimizer: Literal["auto", "adamw", "fused_adam", "cpu_adam"] = Field(
        "auto", description="auto: torch fused AdamW on GPU, DeepSpeedCPUAdam with offload, torch AdamW otherwise"
    )
    config: dict[str, Any] = Field(
        default_factory=dict, description="extra DeepSpeed config merged over raywiz's (expert use)"
    )


class FSDP2Section(ConfigSection):
    """train.engine: fsdp2 (raywiz/training/fsdp2.py)."""

    reshard_after_forward: Literal["auto", "always", "never"] = Field(
        "auto", description="free each block's gathered weights after its forward and gather them again for "
        "backward (ZeRO-3-like), or keep them to backward (ZeRO-2-like: more memory, one all-gather less). auto: "
        "keep them on one worker, or on GPUs when the weights take at most 10% of a GPU's memory; else free")


class ScalingSection(ConfigSection):
    num_workers: int = Field(1, ge=1)
    use_gpu: bool | None = Field(None, description="default: True when the cluster has GPUs")
    cpus_per_worker: float = Field(1, gt=0)
    accelerator_type: str | None = Field(None, description="e.g. 'H100': schedule workers on that GPU type")
    worker_start_timeout_s: float = Field(600, gt=0, description="how long to wait for workers (autoscaling)")
    nccl_timeout_s: int = Field(1800, ge=1, description="collective timeout")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="how workers spread over nodes (Ray placement group strategy); PACK fills a node "
        "before the next, SPREAD puts each worker on a different node where it can")


class CheckpointSection(ConfigSection):
    every_n_steps: int = Field(100, ge=1)
    num_to_keep: int | None = Field(2, ge=1)
    export_hf: Literal["every", "last", "never"] = Field(
        "every", description="write the HF safetensors export into each checkpoint, the last one, or none"
    )
    merge_adapter: bool = Field(
        True, description="with train.peft: also write the merged full model into hf/ (adapter/ is always written)")


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
