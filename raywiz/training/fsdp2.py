"""FSDP2 engine (`train.engine: fsdp2`): torch's own fully_shard, behind the interface the recipe uses.

The recipe drives its engine's driver as it drives DeepSpeed's engine: ``driver(**batch)``,
``driver.backward(loss)``, ``driver.step()`` after every micro-batch (the optimizer steps at each
accumulation boundary), ``driver.optimizer.param_groups``, ``driver.get_global_grad_norm()``,
``driver.module``. `FSDP2Driver` gives the same calls on torch's public APIs, so `recipe.py` has no
engine branches; `FSDP2TrainEngine` saves, loads and exports its state:

- sharding: ``fully_shard`` on every transformer block (the model's ``_no_split_modules``), then on
  the root (embeddings, final norm, head), as torchtune and torchtitan do;
- precision: fp32 master weights, sharded; ``MixedPrecisionPolicy`` all-gathers them in bf16 on GPU and
  reduces gradients in fp32: DeepSpeed's bf16 mode (bf16 compute, fp32 master in the optimizer);
  fp32 throughout on CPU;
- the same loss normalisation as DeepSpeed: backward divides by the accumulation steps and FSDP2's
  reduce-scatter averages over ranks, so `recipe.loss_scale` means the same for both engines;
- the optimizer: `raywiz.training.engine_base.make_optimizer` (torch's fused AdamW on GPU) over the sharded DTensor parameters;
- checkpoints: ``torch.distributed.checkpoint`` (DCP), sharded model + optimizer state, one file per
  rank plus DCP's metadata, into the checkpoint's ``fsdp2/`` (DeepSpeed's is ``zero/``); DCP reshards
  on load, so a different worker count resumes too.
"""

from __future__ import annotations

import torch

from raywiz.artifacts import CheckpointDir
from raywiz.log import get_logger
from raywiz.training.engine_base import EngineSetup, TrainEngine, build_training_model, make_optimizer, weights_are_small

log = get_logger(__name__)


def reshard_after_forward(train_cfg, on_gpu: bool, param_bytes: int | None, gpu_bytes: int | None) -> bool:
    """Free each block's gathered weights after its forward (and gather them again for backward)?

    auto mirrors DeepSpeed's resident_params: keep them (ZeRO-2-like) on one worker, or on GPUs when the
    weights take at most 10% of a card, where the second all-gather costs more than it saves.
    """
    choice = train_cfg.fsdp2.reshard_after_forward
    if choice != "auto":
        return choice == "always"
    if train_cfg.scaling.num_workers == 1:
        return False
    return not weights_are_small(on_gpu, param_bytes, gpu_bytes)


def block_classes(model) -> set[str]:
    """Class names of the transformer blocks, as transformers declares them (its `_no_split_modules`)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps the HF model
    names = set(getattr(base, "_no_split_modules", None) or [])
    if not names:
        raise ValueError(f"train.engine: fsdp2 needs the model's transformer block class "
                         f"({type(base).__name__} declares no _no_split_modules); use train.engine: deepspeed")
    return names


def shard_model(model, param_dtype: torch.dtype, reshard: bool) -> int:
    """fully_shard each block, then the root; returns the number of blocks sharded."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    names = block_classes(model)
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        raise ValueError(f"train.engine: fsdp2 found no {sorted(names)} block in the model")
    for block in blocks:
        fully_shard(block, mp_policy=mp, reshard_after_forward=reshard)
    # The root's own weights (embeddings, tied head, final norm) are needed again at once by backward.
    fully_shard(model, mp_policy=mp, reshard_after_forward=False)
    return len(blocks)


class FSDP2Driver:
    """The calls the recipe makes on DeepSpeed's engine, on an FSDP2 model (+ DCP save and load)."""

    def __init__(self, model, optimizer, accum: int, grad_clip: float, rank: int):
        self.module, self.optimizer = model, optimizer
        self.accum, self.grad_clip, self.global_rank = accum, grad_clip, rank
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.micro_steps = 0
        self._grad_norm: torch.Tensor | None = None

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        # As DeepSpeed: divide by the accumulation steps (FSDP2's reduce-scatter averages over ranks).
        (loss / self.accum).backward()

    def step(self) -> None:
        """After each micro-batch; at an accumulation boundary: clip, step, zero the gradients."""
        self.micro_steps += 1
        if self.micro_steps % self.accum:
            return
        # The norm is over every rank's shards (DTensors): one number on all ranks, left on the device.
        if self.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
        self._grad_norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def get_global_grad_norm(self) -> torch.Tensor | None:
        return self._grad_norm

    # -- checkpoints (collective)
    def save_checkpoint(self, path: str) -> None:
        """DCP: this rank's shards of model and optimizer (+ DCP's metadata from rank 0) into `path`."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(self.module, self.optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=path)

    def load_checkpoint(self, path: str) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_sd, optim_sd = get_state_dict(self.module, self.optimizer)  # the shapes DCP loads into
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=path)
        set_state_dict(self.module, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])

    def full_state_dict(self, dtype: torch.dtype) -> dict[str, torch.Tensor] | None:
        """Collective: the whole model's weights on rank 0, on the host, in `dtype` (None elsewhere)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(self.module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.global_rank != 0:
            return None
        # Tied weights (GPT-BigCode's lm_head is wte) once, under their first name, as DeepSpeed's export has them.
        tied = ({n for n, _ in self.module.named_parameters(remove_duplicate=False)}
                - {n for n, _ in self.module.named_parameters()})
        return {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items() if k not in tied}


class FSDP2TrainEngine(TrainEngine):
    kind = "fsdp2"

    @property
    def description(self) -> str:
        return "FSDP2"

    @classmethod
    def create(cls, model_cfg, train_cfg, setup: EngineSetup) -> "FSDP2TrainEngine":
        """Build the model whole on this rank's device in fp32, shard it, and wrap it with its optimizer."""
        import torch.distributed as dist

        if not dist.is_initialized():  # Ray Train initialises the process group; a single process may not have
            raise RuntimeError("train.engine: fsdp2 needs torch.distributed initialised (Ray Train does it)")
        # Every rank builds the same whole model (same seed) in fp32 (the master weights; setup.dtype is the
        # compute dtype), then keeps its shard: fine while one GPU holds the fp32 weights (about 10B
        # parameters on 80 GB; DeepSpeed's zero.Init never builds them whole).
        model = build_training_model(model_cfg, train_cfg, setup, torch.float32, on_device=setup.on_gpu)
        reshard = reshard_after_forward(train_cfg, setup.on_gpu, setup.param_bytes, setup.gpu_bytes)
        n_blocks = shard_model(model, setup.dtype, reshard)
        log.debug(f"fsdp2: {n_blocks} blocks sharded over {dist.get_world_size()} ranks, "
                  f"reshard after forward: {reshard}")
        optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], train_cfg, setup.on_gpu)
        driver = FSDP2Driver(model, optimizer, train_cfg.grad_accum_steps, train_cfg.optim.grad_clip, dist.get_rank())
        return cls(driver, model, setup)

    def save(self, ckpt: CheckpointDir, adapter_only: bool) -> None:
        """The whole model's shards (DCP), with or without an adapter."""
        self.driver.save_checkpoint(ckpt.fsdp2)

    def load(self, ckpt: CheckpointDir, adapter_only: bool) -> None:
        self.driver.load_checkpoint(ckpt.fsdp2)

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        return self.driver.full_state_dict(self.dtype)
