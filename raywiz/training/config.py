"""The engine's settings, shared by the stages that train on raywiz.training (`train:` and `rl:`):
the optimizer, the DeepSpeed / FSDP2 options, PEFT (LoRA/QLoRA), and how many Ray Train workers run.

The engines read these by attribute from the stage's section (raywiz.training.engine.create_engine).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from raywiz.config_base import ConfigSection


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
