"""The training engine (`train.engine`). DeepSpeed's here: the config dict, a model built already
sharded, and the engine; FSDP2's in raywiz.train.fsdp2, behind the same `Engine`.

Order matters for ZeRO-3: the DeepSpeed config must be alive (``HfDeepSpeedConfig``) before the
model is created, so that transformers builds it inside ``zero.Init`` and no rank ever holds the
full weights in host memory.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Any

import torch

from raywiz.modeling import build_model, torch_dtype

log = logging.getLogger(__name__)


RESIDENT_PARAMS_MAX_FRACTION = 0.10  # of one GPU's memory, for deepspeed.resident_params: auto


def params_resident(train_cfg, on_gpu: bool, param_bytes: int | None, gpu_bytes: int | None) -> bool:
    """Keep every weight whole on each worker (ZeRO-3 still shards gradients and optimizer state)?

    One worker has nothing to shard. Otherwise `auto` keeps them on GPUs when they are small next to
    the card: then the per-layer all-gathers of pure ZeRO-3 cost throughput and save little memory.
    """
    ds = train_cfg.deepspeed
    if ds.stage != 3 or ds.offload_params or ds.resident_params == "never":
        return False
    if train_cfg.scaling.num_workers == 1 or ds.resident_params == "always":
        return True
    return bool(on_gpu and param_bytes and gpu_bytes and param_bytes <= RESIDENT_PARAMS_MAX_FRACTION * gpu_bytes)


def zero_stage(train_cfg, on_gpu: bool, param_bytes: int | None, gpu_bytes: int | None) -> int:
    """The ZeRO stage DeepSpeed runs. Stage 3 with resident weights (whole on every worker, gradients and
    optimizer state sharded) is ZeRO-2's memory layout, and ZeRO-2's engine runs it without ZeRO-3's
    per-module hooks and its bias-unfused linear: one H200, 1B model, 8 x 2048 rows, varlen + fused loss
    (bench/train_throughput.py, one call): 62.5k tok/s (44.4% MFU) as stage 2, 42.0k (29.8%) as stage 3;
    its profile: ZeRO-3 spends the host time in AccumulateGrad and its pre/post-backward module hooks, and
    the device time in extra bias adds and copies. A ZeRO-3 checkpoint does not load into ZeRO-2."""
    if train_cfg.deepspeed.stage == 3 and train_cfg.peft.method == "qlora":
        # ZeRO-3 cannot partition bitsandbytes' packed 4-bit weights; the 4-bit base is small enough to
        # sit whole on every worker (QLoRA's point), and ZeRO-2 still shards the adapter's grads and state.
        return 2
    if train_cfg.deepspeed.stage == 3 and params_resident(train_cfg, on_gpu, param_bytes, gpu_bytes):
        return 2
    return train_cfg.deepspeed.stage


def planned_engine(train_cfg, on_gpu: bool) -> tuple[str, int | None]:
    """(engine, ZeRO stage) a run will train with, as far as the driver knows it: the stage is None where
    it hangs on the workers' GPU memory (stage 3, resident_params auto, several GPU workers)."""
    if train_cfg.engine == "fsdp2":
        return "fsdp2", None
    ds = train_cfg.deepspeed
    if (on_gpu and ds.stage == 3 and ds.resident_params == "auto" and not ds.offload_params
            and train_cfg.scaling.num_workers > 1):
        return "deepspeed", None
    return "deepspeed", zero_stage(train_cfg, on_gpu, None, None)


def deepspeed_config(train_cfg, on_gpu: bool, dtype: torch.dtype, param_bytes: int | None = None,
                     gpu_bytes: int | None = None) -> dict[str, Any]:
    """raywiz's DeepSpeed config for a TrainConfig; `train.deepspeed.config` is merged over it."""
    ds = train_cfg.deepspeed
    stage = zero_stage(train_cfg, on_gpu, param_bytes, gpu_bytes)
    zero: dict[str, Any] = {"stage": stage}
    if stage == 3:
        zero.update(
            {
                "overlap_comm": on_gpu,
                "contiguous_gradients": True,
                "stage3_gather_16bit_weights_on_model_save": True,  # lets rank 0 gather the HF export
                "stage3_prefetch_bucket_size": 5e7,
                "stage3_param_persistence_threshold": 1e5,
                "stage3_max_live_parameters": 1e9,
                "stage3_max_reuse_distance": 1e9,
                "reduce_bucket_size": 5e7,
            }
        )
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
    if ds.offload_params:
        if ds.stage != 3:
            raise ValueError("train.deepspeed.offload_params needs stage 3")
        zero["offload_param"] = {"device": "cpu", "pin_memory": on_gpu}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": train_cfg.optim.micro_batch_size,
        "gradient_accumulation_steps": train_cfg.grad_accum_steps,
        "gradient_clipping": train_cfg.optim.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": dtype == torch.bfloat16},
        "fp16": {"enabled": dtype == torch.float16},
        "steps_per_print": 10**9,  # raywiz prints its own progress
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    }
    return _merge(config, ds.config)


def _merge(base: dict, extra: dict) -> dict:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v
    return base


def make_optimizer(params, train_cfg, on_gpu: bool):
    """The optimizer DeepSpeed wraps. auto: fused AdamW on GPU, DeepSpeedCPUAdam with offload, else torch AdamW."""
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


def _import_before_zero_init() -> None:
    """zero.Init patches tensor constructors; modules imported lazily inside it (torch._dynamo's
    polyfills, via transformers' generation utils) then fail their signature checks. Import them first."""
    import torch._dynamo  # noqa: F401
    import transformers.generation  # noqa: F401
    import transformers.masking_utils  # noqa: F401


@dataclass
class Engine:
    engine: Any  # deepspeed.DeepSpeedEngine
    model: Any  # the HF model (engine.module)
    ds_config: dict
    hf_ds_config: Any  # keeps transformers' ZeRO-3 awareness alive while the engine lives
    dtype: torch.dtype
    device: torch.device
    attn_implementation: str = "sdpa"
    fused_loss: str = "off"  # liger | chunked | off (raywiz.train.kernels)
    zero_stage: int | None = 3  # what DeepSpeed runs (zero_stage): checkpoints and the HF export follow it
    kind: str = "deepspeed"  # train.engine: deepspeed | fsdp2 (raywiz.train.fsdp2)

    @property
    def description(self) -> str:
        return f"ZeRO stage {self.zero_stage}" if self.kind == "deepspeed" else "FSDP2"


def grow_embeddings(model, n_tokens: int | None) -> None:
    """Make room for tokens the training tokenizer added (a chat template's, e.g. ChatML's <|im_start|>):
    the embeddings (and a tied or separate output layer) grow to the tokenizer's size, new rows at the
    mean of the old ones (transformers' default). A model already large enough is left as it is."""
    if n_tokens is not None and n_tokens > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(n_tokens)


def create_engine(model_cfg, train_cfg, on_gpu: bool, device: torch.device, n_params: int | None = None,
                  n_tokens: int | None = None) -> Engine:
    """train.engine's engine: DeepSpeed (below), or FSDP2 (raywiz.train.fsdp2), behind one interface."""
    if train_cfg.engine == "fsdp2":
        from raywiz.train.fsdp2 import create_fsdp2_engine

        return create_fsdp2_engine(model_cfg, train_cfg, on_gpu, device, n_params, n_tokens)
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig

    dtype = torch_dtype(model_cfg.dtype, on_gpu)
    gpu_bytes = torch.cuda.get_device_properties(device).total_memory if on_gpu else None
    param_bytes = n_params * torch.finfo(dtype).bits // 8 if n_params else None
    ds_config = deepspeed_config(train_cfg, on_gpu, dtype, param_bytes, gpu_bytes)
    _import_before_zero_init()
    # Must exist before the model is created (see module docstring); keep the reference.
    stage = ds_config["zero_optimization"]["stage"]
    hf_ds_config = HfDeepSpeedConfig(ds_config) if stage == 3 else None
    from raywiz.modeling import model_config
    from raywiz.train.kernels import resolve_attn_implementation, resolve_fused_loss

    model_type = model_config(model_cfg.name_or_path, model_cfg.trust_remote_code, model_cfg.revision).model_type
    attn = resolve_attn_implementation(model_cfg.attn_implementation, model_type, on_gpu, dtype)
    fused = resolve_fused_loss(train_cfg.fused_loss, model_type, on_gpu)
    # With HfDeepSpeedConfig alive, transformers enters zero.Init itself (from_config and from_pretrained).
    # We don't add our own: DeepSpeed 0.19's zero.Init(dtype=...) turns float32 into bfloat16 on CPU
    # (an operator-precedence slip in _set_dtype); without dtype it follows the config's bf16 flag.
    from raywiz.train.adapters import quantization_config

    # Whole weights (stage < 3) are made on the GPU directly: a 1B random init on the host takes ~40 s longer.
    # A 4-bit base is quantized as it loads onto its device (device_map), not inside a device context.
    quantized = quantization_config(train_cfg.peft, dtype)
    with torch.device(device) if on_gpu and stage != 3 and quantized is None else contextlib.nullcontext():
        model = build_model(model_cfg.name_or_path, dtype=dtype, attn_implementation=attn,
                            trust_remote_code=model_cfg.trust_remote_code, revision=model_cfg.revision,
                            seed=train_cfg.optim.seed, quantization_config=quantized,
                            device_map={"": str(device)} if quantized is not None else None)
    grow_embeddings(model, n_tokens)
    if train_cfg.optim.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    if train_cfg.peft.enabled:  # LoRA / DoRA: only the adapter's weights train (and reach the optimizer)
        from raywiz.train.adapters import apply_adapter

        # The adapter's random init must be the same on every rank and every run (exact resume, and
        # ZeRO-3 partitions each rank's own copy): seed it, whatever loading the base did to the RNG.
        torch.manual_seed(train_cfg.optim.seed)
        model = apply_adapter(model, train_cfg.peft, train_cfg.optim.gradient_checkpointing)
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], train_cfg, on_gpu)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    return Engine(engine, engine.module, ds_config, hf_ds_config, dtype, device, attn, fused, stage)
