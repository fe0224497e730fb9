"""What both training engines share: the `TrainEngine` interface the recipe and `checkpoint.py` call,
and the set-up they do alike (compute dtype, memory sizes, attention, fused loss, gradient
checkpointing, PEFT, the optimizer, the learning-rate schedule).

The engines themselves: DeepSpeed ZeRO (raywiz.training.deepspeed_engine) and torch's FSDP2
(raywiz.training.fsdp2); raywiz.training.engine picks one (`train.engine`).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from raywiz.artifacts import CheckpointDir
from raywiz.modeling import build_model, model_config, torch_dtype

RESIDENT_PARAMS_MAX_FRACTION = 0.10  # of one GPU's memory: weights this small stay whole on every worker


@dataclass(frozen=True)
class EngineSetup:
    """The choices both engines make the same way, before building anything."""

    dtype: torch.dtype  # the compute dtype (bf16 on GPU, fp32 on CPU unless model.dtype says otherwise)
    device: torch.device
    on_gpu: bool
    param_bytes: int | None  # the weights' size in `dtype`, when the parameter count is known
    gpu_bytes: int | None  # one card's memory
    attn_implementation: str
    fused_loss: str  # liger | chunked | off (raywiz.training.kernels)
    n_tokens: int | None = None  # the training tokenizer's size, when it added tokens the model lacks

    @classmethod
    def resolve(cls, model_cfg, train_cfg, on_gpu: bool, device: torch.device, n_params: int | None,
                n_tokens: int | None = None) -> "EngineSetup":
        from raywiz.training.kernels import resolve_attn_implementation, resolve_fused_loss

        dtype = torch_dtype(model_cfg.dtype, on_gpu)
        model_type = model_config(model_cfg.name_or_path, model_cfg.trust_remote_code, model_cfg.revision).model_type
        return cls(dtype=dtype, device=device, on_gpu=on_gpu,
                   param_bytes=n_params * torch.finfo(dtype).bits // 8 if n_params else None,
                   gpu_bytes=torch.cuda.get_device_properties(device).total_memory if on_gpu else None,
                   attn_implementation=resolve_attn_implementation(model_cfg.attn_implementation, model_type, on_gpu,
                                                                   dtype),
                   fused_loss=resolve_fused_loss(train_cfg.fused_loss, model_type, on_gpu), n_tokens=n_tokens)


def weights_are_small(on_gpu: bool, param_bytes: int | None, gpu_bytes: int | None) -> bool:
    """Small next to one GPU: keeping them whole on every worker costs less than gathering them per layer."""
    return bool(on_gpu and param_bytes and gpu_bytes and param_bytes <= RESIDENT_PARAMS_MAX_FRACTION * gpu_bytes)


def embedding_rows(model) -> int:
    """The input embedding's row count, also when ZeRO-3 has partitioned it (its local tensor is empty)."""
    weight = model.get_input_embeddings().weight
    return int(getattr(weight, "ds_shape", weight.shape)[0])


def grow_embeddings(model, n_tokens: int | None) -> None:
    """Make room for tokens the training tokenizer added (a chat template's, e.g. ChatML's <|im_start|>):
    the embeddings (and a tied or separate output layer) grow to the tokenizer's size, new rows at the
    mean of the old ones (transformers' default). A model already large enough is left as it is."""
    if n_tokens is not None and n_tokens > embedding_rows(model):
        model.resize_token_embeddings(n_tokens)


def build_training_model(model_cfg, train_cfg, setup: EngineSetup, dtype: torch.dtype, on_device: bool,
                         **build_kwargs):
    """The model as both engines train it: built (`dtype`: the weights' storage dtype; `on_device`: made
    on this rank's GPU directly, as a 1B random init on the host is slow), gradient checkpointing and no
    KV cache, and with train.peft an adapter whose weights alone train."""
    with torch.device(setup.device) if on_device else contextlib.nullcontext():
        model = build_model(model_cfg.name_or_path, dtype=dtype, attn_implementation=setup.attn_implementation,
                            trust_remote_code=model_cfg.trust_remote_code, revision=model_cfg.revision,
                            seed=train_cfg.optim.seed, **build_kwargs)
    base_rows = embedding_rows(model)
    grow_embeddings(model, setup.n_tokens)
    if train_cfg.optim.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    if train_cfg.peft.enabled:
        from raywiz.training.adapters import apply_adapter

        # The adapter's random init must be the same on every rank and every run (exact resume, and
        # sharded engines partition each rank's own copy): seed it, whatever loading the base did to the RNG.
        torch.manual_seed(train_cfg.optim.seed)
        new_rows = range(base_rows, embedding_rows(model))  # the added tokens' rows train too
        model = apply_adapter(model, train_cfg.peft, train_cfg.optim.gradient_checkpointing, new_rows)
    return model


def make_optimizer(params, train_cfg, on_gpu: bool):
    """The optimizer. auto: fused AdamW on GPU, DeepSpeedCPUAdam with offload, else torch AdamW."""
    o, choice = train_cfg.optim, train_cfg.deepspeed.optimizer
    if choice == "auto":
        choice = "cpu_adam" if train_cfg.deepspeed.offload_optimizer else ("fused_adam" if on_gpu else "adamw")
    kwargs = dict(lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    if choice == "fused_adam":
        # torch's own fused AdamW kernel: as fast as DeepSpeed's FusedAdam, with no JIT build
        # (DeepSpeed's op builder also trips over arch lists such as "9.0a").
        return torch.optim.AdamW(params, fused=True, **kwargs)
    if choice == "cpu_adam":
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(params, adamw_mode=True, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


def lr_at(step: int, optim_cfg, total_steps: int) -> float:
    """Linear warmup, then cosine / linear decay / constant. `step` counts optimizer steps from 0."""
    base, warm = optim_cfg.lr, optim_cfg.warmup_steps
    if warm and step < warm:
        return base * (step + 1) / warm
    if optim_cfg.schedule == "constant":
        return base
    progress = min(1.0, (step - warm) / max(1, total_steps - warm))
    floor = base * optim_cfg.min_lr_ratio
    if optim_cfg.schedule == "linear":
        return floor + (base - floor) * (1 - progress)
    return floor + (base - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class TrainEngine:
    """One training engine: what the recipe drives and what checkpoints save, load and export.

    ``driver`` is what the training loop calls: ``driver(**batch)``, ``driver.backward(loss)``,
    ``driver.step()``, ``driver.optimizer``, ``driver.get_global_grad_norm()`` (DeepSpeed's engine, or
    raywiz.training.fsdp2.FSDP2Driver with the same calls). ``model`` is the HF (or peft) model.
    """

    kind: ClassVar[str]  # train.engine's value; a checkpoint's train state records it

    def __init__(self, driver: Any, model: Any, setup: EngineSetup, zero_stage: int | None = None):
        self.driver, self.model, self.setup = driver, model, setup
        self.zero_stage = zero_stage  # what DeepSpeed runs; None for FSDP2

    @property
    def dtype(self) -> torch.dtype:
        return self.setup.dtype

    @property
    def attn_implementation(self) -> str:
        return self.setup.attn_implementation

    @property
    def fused_loss(self) -> str:
        return self.setup.fused_loss

    @property
    def description(self) -> str:
        raise NotImplementedError

    def record(self) -> dict:
        """What a checkpoint's train state says about the engine that wrote it."""
        return {"engine": self.kind, "zero_stage": self.zero_stage}

    # -- collective: every rank calls these
    def save(self, ckpt: CheckpointDir, adapter_only: bool) -> None:
        """Write this rank's shards of the model and optimizer state into the checkpoint."""
        raise NotImplementedError

    def load(self, ckpt: CheckpointDir, adapter_only: bool) -> None:
        """Restore this rank's shards of the model and optimizer state from the checkpoint."""
        raise NotImplementedError

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The full weights on rank 0 (None elsewhere), in the compute dtype: what the HF export writes."""
        raise NotImplementedError
