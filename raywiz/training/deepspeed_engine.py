"""DeepSpeed ZeRO (`train.engine: deepspeed`): the config dict, a model built already sharded, and
`DeepSpeedTrainEngine`, which saves, loads and exports DeepSpeed's state.

Order matters for ZeRO-3: the DeepSpeed config must be alive (``HfDeepSpeedConfig``) before the
model is created, so that transformers builds it inside ``zero.Init`` and no rank ever holds the
full weights in host memory.
"""

from __future__ import annotations

import glob
import os
from typing import Any

import torch

from raywiz.artifacts import CheckpointDir
from raywiz.training.engine_base import (EngineSetup, TrainEngine, build_training_model, make_optimizer,
                                      weights_are_small)

ZERO_TAG = "state"  # DeepSpeed's tag: the sub-directory of zero/ its files go into


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
    return weights_are_small(on_gpu, param_bytes, gpu_bytes)


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


def _import_before_zero_init() -> None:
    """zero.Init patches tensor constructors; modules imported lazily inside it (torch._dynamo's
    polyfills, via transformers' generation utils) then fail their signature checks. Import them first."""
    import torch._dynamo  # noqa: F401
    import transformers.generation  # noqa: F401
    import transformers.masking_utils  # noqa: F401


def _skip_the_shm_inference_op() -> None:
    """On CPU, DeepSpeed's comm backend JIT-compiles a shared-memory all-reduce op (C++: about a minute on 2
    cores) that only its tensor-parallel inference calls, never ZeRO training: mark it unavailable, so it is
    neither built nor loaded (torch.distributed's gloo does the collectives either way). Its build is redone
    whenever the build command changes (another venv path shares the cache), which made test runs rebuild it."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None:
        deepspeed.ops.__compatible_ops__[builder.NAME] = False


def _load_trainable_only(src: dict, dst) -> None:
    """DeepSpeed's custom_load_fn for adapter-only checkpoints: restore the trainable weights, leave the
    frozen base as it was built (bitsandbytes' packed 4-bit state must not be re-loaded half-way)."""
    trainable = {n for n, p in dst.named_parameters() if p.requires_grad}
    missing = trainable - set(src)
    if missing:
        raise RuntimeError(f"the checkpoint lacks adapter weights {sorted(missing)[:3]}: written by another peft setup?")
    dst.load_state_dict({k: v for k, v in src.items() if k in trainable}, strict=False)


class DeepSpeedTrainEngine(TrainEngine):
    kind = "deepspeed"

    def __init__(self, driver, model, setup: EngineSetup, zero_stage: int, ds_config: dict, hf_ds_config: Any):
        super().__init__(driver, model, setup, zero_stage)
        self.ds_config = ds_config
        self.hf_ds_config = hf_ds_config  # keeps transformers' ZeRO-3 awareness alive while the engine lives

    @property
    def description(self) -> str:
        return f"ZeRO stage {self.zero_stage}"

    @classmethod
    def create(cls, model_cfg, train_cfg, setup: EngineSetup) -> "DeepSpeedTrainEngine":
        import deepspeed
        from transformers.integrations import HfDeepSpeedConfig

        from raywiz.training.adapters import quantization_config

        ds_config = deepspeed_config(train_cfg, setup.on_gpu, setup.dtype, setup.param_bytes, setup.gpu_bytes)
        if not setup.on_gpu:  # before zero.Init or initialize starts DeepSpeed's comm backend
            _skip_the_shm_inference_op()
        _import_before_zero_init()
        # Must exist before the model is created (see module docstring); keep the reference.
        stage = ds_config["zero_optimization"]["stage"]
        hf_ds_config = HfDeepSpeedConfig(ds_config) if stage == 3 else None
        # With HfDeepSpeedConfig alive, transformers enters zero.Init itself (from_config and from_pretrained).
        # We don't add our own: DeepSpeed 0.19's zero.Init(dtype=...) turns float32 into bfloat16 on CPU
        # (an operator-precedence slip in _set_dtype); without dtype it follows the config's bf16 flag.
        # Whole weights (stage < 3) are made on the GPU directly: a 1B random init on the host takes ~40 s longer.
        # A 4-bit base is quantized as it loads onto its device (device_map), not inside a device context.
        quantized = quantization_config(train_cfg.peft, setup.dtype)
        model = build_training_model(model_cfg, train_cfg, setup, setup.dtype,
                                     on_device=setup.on_gpu and stage != 3 and quantized is None,
                                     quantization_config=quantized,
                                     device_map={"": str(setup.device)} if quantized is not None else None)
        optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], train_cfg, setup.on_gpu)
        driver, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
        return cls(driver, driver.module, setup, stage, ds_config, hf_ds_config)

    def save(self, ckpt: CheckpointDir, adapter_only: bool) -> None:
        """adapter_only (LoRA/DoRA/QLoRA): the frozen base stays out, so a checkpoint holds the adapter and
        its optimizer state (megabytes, not the base's gigabytes); resume rebuilds the base from its source."""
        self.driver.save_checkpoint(ckpt.zero, tag=ZERO_TAG, exclude_frozen_parameters=adapter_only)

    def load(self, ckpt: CheckpointDir, adapter_only: bool) -> None:
        # ZeRO-3 restores the weights from its fp32 partitions (the module file holds placeholders), so only
        # strictness changes there; below stage 3 the module file is the weights' source.
        custom = _load_trainable_only if adapter_only and self.zero_stage < 3 else None
        load_path, _ = self.driver.load_checkpoint(ckpt.zero, tag=ZERO_TAG, load_module_strict=not adapter_only,
                                                   custom_load_fn=custom, load_optimizer_states=True,
                                                   load_lr_scheduler_states=False)
        if load_path is None:
            raise RuntimeError(f"{ckpt.zero}: DeepSpeed found no state to load")

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        if self.zero_stage == 3:
            # DeepSpeed's gather of ZeRO-3's partitions; it has no public name (DeepSpeed's own
            # save_16bit_model calls it).
            return self.driver._zero3_consolidated_16bit_state_dict()
        if self.driver.global_rank == 0:
            return {k: v.detach().cpu() for k, v in self.driver.module.state_dict().items()}
        return None

    @staticmethod
    def stage_from_files(ckpt: CheckpointDir) -> int:
        """The ZeRO stage of a checkpoint written before raywiz recorded it, from DeepSpeed's own file names:
        stage 3 names its model states per rank, stages 0-2 once (mp_rank_00_model_states.pt)."""
        per_rank = glob.glob(os.path.join(ckpt.zero, ZERO_TAG, "zero_pp_rank_*_model_states.pt"))
        return 3 if per_rank else 2
