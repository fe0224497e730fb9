"""Which training engine runs (`train.engine`), and whether a checkpoint's state suits it.

    eng = create_engine(job.model, job.train, on_gpu, device, n_params)   # a TrainEngine
    check_resumable(ckpt, *planned_engine(job.train, on_gpu))              # before resuming

The engines: DeepSpeed ZeRO (raywiz.training.deepspeed_engine) and FSDP2 (raywiz.training.fsdp2), both
`TrainEngine`s (raywiz.training.engine_base) that save, load and export their own state.
"""

from __future__ import annotations

import os

import torch

from raywiz.artifacts import CheckpointDir, read_json
from raywiz.training.deepspeed_engine import DeepSpeedTrainEngine, zero_stage
from raywiz.training.engine_base import EngineSetup, TrainEngine
from raywiz.training.fsdp2 import FSDP2TrainEngine

ENGINES: dict[str, type[TrainEngine]] = {"deepspeed": DeepSpeedTrainEngine, "fsdp2": FSDP2TrainEngine}


def create_engine(model_cfg, train_cfg, on_gpu: bool, device: torch.device, n_params: int | None = None,
                  n_tokens: int | None = None) -> TrainEngine:
    """train.engine's engine, with the set-up both share (dtype, attention, fused loss) resolved once.
    `n_tokens`: the training tokenizer's size (the embeddings grow to it when it added tokens)."""
    setup = EngineSetup.resolve(model_cfg, train_cfg, on_gpu, device, n_params, n_tokens)
    return ENGINES[train_cfg.engine].create(model_cfg, train_cfg, setup)


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


# ------------------------------------------------------------------ resume compatibility


class CheckpointMismatch(ValueError):
    """A checkpoint whose sharded state the engine of this run cannot load exactly."""


def written_by(ckpt_dir: str) -> tuple[str, int | None]:
    """(engine, ZeRO stage) that wrote a checkpoint: its train state's record, else (checkpoints from
    before raywiz recorded it) the state directory it has and DeepSpeed's file names."""
    ckpt = CheckpointDir(ckpt_dir)
    state = read_json(ckpt.train_state)
    if "engine" in state:
        return state["engine"], state.get("zero_stage")
    if os.path.isdir(ckpt.fsdp2):
        return "fsdp2", None
    return "deepspeed", DeepSpeedTrainEngine.stage_from_files(ckpt)


def _family(kind: str, stage: int | None):
    # ZeRO-1 and ZeRO-2 share one optimizer and one checkpoint format; stage 0 and 3 each have their own.
    return kind, (None if kind != "deepspeed" else 2 if stage in (1, 2) else stage)


def describe(kind: str, stage: int | None) -> str:
    return "FSDP2" if kind == "fsdp2" else f"DeepSpeed ZeRO stage {stage}" if stage is not None else "DeepSpeed"


def check_resumable(ckpt_dir: str, kind: str, stage: int | None) -> None:
    """Raise CheckpointMismatch unless this run's engine (kind, stage) loads the checkpoint's state exactly.

    ZeRO-3's per-parameter partitions, ZeRO-2's flat fp32 groups and FSDP2's DTensor shards are different
    layouts of the optimizer state. Loading only the weights with a fresh optimizer would not be an exact
    resume, so a mismatch stops the run, naming both sides.
    """
    was_kind, was_stage = written_by(ckpt_dir)
    if _family(was_kind, was_stage) == _family(kind, stage):
        return
    hint = ("train.engine" if was_kind != kind else
            "train.deepspeed.stage, resident_params and scaling.num_workers decide it: stage 3 with resident "
            "weights runs as stage 2")
    raise CheckpointMismatch(
        f"{ckpt_dir}: written by {describe(was_kind, was_stage)}, but this run trains with {describe(kind, stage)}, "
        f"which cannot load its sharded optimizer state exactly. Resume with the settings that wrote it ({hint}), "
        "or train under a new run name")
