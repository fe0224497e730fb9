"""Checkpoints: save and restore exact training state, and export a Hugging Face model.

Layout of a checkpoint (``RunLayout.checkpoint(step)``; every rank writes its part into a staging
directory, and the parts are merged into one storage directory; see ``staging_dir``):

    zero/            DeepSpeed's sharded model + optimizer state (one file per rank), or
    fsdp2/           FSDP2's (train.engine: fsdp2): torch.distributed.checkpoint, one file per rank + .metadata
    rng/rank_N.pt    each rank's RNG states (torch, CUDA, numpy, python)
    train_state.json step, epoch, position inside the epoch, schedule length, the engine that wrote it (rank 0)
    hf/              consolidated safetensors + config + tokenizer + generation config, own manifest
    manifest.json    every file above with its size (rank 0, written last)
"""

from __future__ import annotations

import glob
import json
import os
import random
import shutil
from typing import Any

import numpy as np
import torch

from raywiz.artifacts import Kind, RunLayout, check_manifest, is_remote, join, list_files, write_json_atomic, write_manifest

ZERO_TAG = "state"
FSDP2_DIR = "fsdp2"  # beside DeepSpeed's zero/


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class CheckpointMismatch(ValueError):
    """A checkpoint whose sharded state the engine of this run cannot load exactly."""


def engine_record(eng) -> dict:
    """What train_state.json says about the engine that wrote the checkpoint."""
    return {"engine": eng.kind, "zero_stage": eng.zero_stage}


def written_by(ckpt_dir: str) -> tuple[str, int | None]:
    """(engine, ZeRO stage) that wrote a checkpoint: train_state.json's record, else (checkpoints from
    before raywiz recorded it) DeepSpeed's file names: stage 3 names its model states per rank
    (zero_pp_rank_N_mp_rank_00_model_states.pt), stages 0-2 once (mp_rank_00_model_states.pt)."""
    with open(os.path.join(ckpt_dir, "train_state.json")) as f:
        state = json.load(f)
    if "engine" in state:
        return state["engine"], state.get("zero_stage")
    if os.path.isdir(os.path.join(ckpt_dir, FSDP2_DIR)):
        return "fsdp2", None
    per_rank = glob.glob(os.path.join(ckpt_dir, "zero", ZERO_TAG, "zero_pp_rank_*_model_states.pt"))
    return "deepspeed", 3 if per_rank else 2


def _family(kind: str, stage: int | None):
    # ZeRO-1 and ZeRO-2 share one optimizer and one checkpoint format; stage 0 and 3 each have their own.
    return kind, (None if kind != "deepspeed" else 2 if stage in (1, 2) else stage)


def describe(kind: str, stage: int | None) -> str:
    return "FSDP2" if kind == "fsdp2" else f"DeepSpeed ZeRO stage {stage}"


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


def save_training_state(eng, local_dir: str, rank: int, train_state: dict, adapter_only: bool = False) -> None:
    """Collective: every rank writes its engine shard and RNG; rank 0 the train_state.

    adapter_only (LoRA/DoRA/QLoRA under DeepSpeed): the frozen base stays out, so a checkpoint holds the
    adapter and its optimizer state (megabytes, not the base's gigabytes); resume rebuilds the base from
    where it came from. FSDP2 writes the whole model's shards.
    """
    if eng.kind == "fsdp2":
        eng.engine.save_checkpoint(os.path.join(local_dir, FSDP2_DIR))
    else:
        eng.engine.save_checkpoint(os.path.join(local_dir, "zero"), tag=ZERO_TAG, exclude_frozen_parameters=adapter_only)
    os.makedirs(os.path.join(local_dir, "rng"), exist_ok=True)
    torch.save(rng_state(), os.path.join(local_dir, "rng", f"rank_{rank}.pt"))
    if rank == 0:
        write_json_atomic(os.path.join(local_dir, "train_state.json"), {**train_state, **engine_record(eng)})


def _load_trainable_only(src: dict, dst) -> None:
    """DeepSpeed's custom_load_fn for adapter-only checkpoints: restore the trainable weights, leave the
    frozen base as it was built (bitsandbytes' packed 4-bit state must not be re-loaded half-way)."""
    trainable = {n for n, p in dst.named_parameters() if p.requires_grad}
    missing = trainable - set(src)
    if missing:
        raise RuntimeError(f"the checkpoint lacks adapter weights {sorted(missing)[:3]}: written by another peft setup?")
    dst.load_state_dict({k: v for k, v in src.items() if k in trainable}, strict=False)


def load_training_state(eng, ckpt_dir: str, rank: int, adapter_only: bool = False) -> dict:
    """Collective: restore the engine's shards, optimizer, RNG; return the train_state."""
    check = check_manifest(ckpt_dir, kind=Kind.TRAIN_CHECKPOINT)
    if not check.complete:
        raise RuntimeError(f"refusing to resume from an incomplete checkpoint: {check.reason}")
    check_resumable(ckpt_dir, eng.kind, eng.zero_stage)  # before the engine reads anything
    if eng.kind == "fsdp2":
        eng.engine.load_checkpoint(os.path.join(ckpt_dir, FSDP2_DIR))
    else:
        # ZeRO-3 restores the weights from its fp32 partitions (the module file holds placeholders), so only
        # strictness changes there; below stage 3 the module file is the weights' source.
        custom = _load_trainable_only if adapter_only and eng.zero_stage < 3 else None
        load_path, _ = eng.engine.load_checkpoint(os.path.join(ckpt_dir, "zero"), tag=ZERO_TAG,
                                                  load_module_strict=not adapter_only, custom_load_fn=custom,
                                                  load_optimizer_states=True, load_lr_scheduler_states=False)
        if load_path is None:
            raise RuntimeError(f"{ckpt_dir}/zero: DeepSpeed found no state to load")
    rng_file = os.path.join(ckpt_dir, "rng", f"rank_{rank}.pt")
    if os.path.exists(rng_file):  # absent when resuming on a different number of workers
        set_rng_state(torch.load(rng_file, weights_only=False))
    with open(os.path.join(ckpt_dir, "train_state.json")) as f:
        return json.load(f)


def consolidated_state_dict(eng) -> dict[str, torch.Tensor] | None:
    """Collective: the full weights on rank 0 (None elsewhere), in the compute dtype, as DeepSpeed exports them."""
    if eng.kind == "fsdp2":
        return eng.engine.full_state_dict(eng.dtype)
    engine = eng.engine
    if eng.zero_stage == 3:
        return engine._zero3_consolidated_16bit_state_dict()
    if engine.global_rank == 0:
        return {k: v.detach().cpu() for k, v in engine.module.state_dict().items()}
    return None


def export_hf(model, state_dict: dict, tokenizer, out_dir: str, meta: dict) -> None:
    """Rank 0: write a transformers-loadable model directory and seal it with a manifest."""
    os.makedirs(out_dir, exist_ok=True)
    state_dict = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    model.save_pretrained(out_dir, state_dict=state_dict, safe_serialization=True)
    # save_pretrained writes the model's parameter dtype into config.json: FSDP2's are its fp32 masters,
    # so name the dtype the exported weights are in (bf16 on GPU for both engines).
    dtypes = {v.dtype for v in state_dict.values() if v.is_floating_point()}
    if len(dtypes) == 1 and str(model.config.dtype).removeprefix("torch.") != (name := str(dtypes.pop())[6:]):
        model.config.dtype = name
        model.config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    gen = model.generation_config
    gen.eos_token_id = tokenizer.eos_token_id
    gen.pad_token_id = tokenizer.pad_token_id
    gen.save_pretrained(out_dir)
    write_json_atomic(os.path.join(out_dir, "raywiz.json"), meta)
    n_bytes = sum(os.path.getsize(p) for p in glob.glob(os.path.join(out_dir, "*.safetensors")))
    expected = sum(v.numel() * v.element_size() for v in state_dict.values())
    # Peers' classic failure: KB-sized ZeRO-3 saves. Catch it here instead of at load time.
    if n_bytes < 0.5 * expected:
        raise RuntimeError(f"{out_dir}: safetensors hold {n_bytes} bytes but the weights are {expected}")
    write_manifest(out_dir, kind=Kind.HF_EXPORT, meta={"step": meta.get("step"), "run": meta.get("run")})


def seal_checkpoint(local_dir: str, rank: int, world_size: int, meta: dict) -> None:
    """Collective: gather every rank's file list; rank 0 writes the checkpoint manifest last."""
    import torch.distributed as dist

    mine = list_files(local_dir)
    everyone: list[dict[str, int]] = [None] * world_size  # type: ignore[list-item]
    if dist.is_initialized() and world_size > 1:
        dist.all_gather_object(everyone, mine)
    else:
        everyone = [mine]
    if rank == 0:
        files: dict[str, int] = {}
        for part in everyone:
            files.update(part)
        write_manifest(local_dir, kind=Kind.TRAIN_CHECKPOINT, meta=meta, files=files)



def staging_dir(layout: RunLayout, step: int, rank: int) -> str | None:
    """Where a rank writes its part of checkpoint `dir_name` before it is persisted.

    On a local or mounted filesystem (NFS on a cluster) that is a folder beside the checkpoints, so
    persisting is a rename (``move_into_storage``): a checkpoint never needs twice its size on disk,
    and nothing is copied (a 7B model's ZeRO-3 state is ~100 GB: Ray's default copy from a temporary
    directory filled a 128 GB disk). None for cloud storage: write to a temporary directory and let
    Ray upload it.
    """
    if is_remote(layout.root):
        return None
    path = join(layout.train_staging, f"{layout.checkpoint(step).name}.rank_{rank}")
    shutil.rmtree(path, ignore_errors=True)  # left over from a run killed mid-save
    os.makedirs(path)
    return path


def move_into_storage(checkpoint, dir_name: str, layout: RunLayout):
    """Ray Train's checkpoint_upload_fn for staged checkpoints: move this rank's files into place.

    Manifests move last (the innermost first), so a checkpoint whose manifest is there is whole;
    a stale top-level manifest from an interrupted earlier save of the same step goes first.
    """
    import ray.train

    src, dest = checkpoint.path, join(layout.train, dir_name)
    if os.path.exists(os.path.join(src, "manifest.json")):
        try:
            os.remove(os.path.join(dest, "manifest.json"))
        except FileNotFoundError:
            pass
    files, manifests = [], []
    for root, _, names in os.walk(src):
        target = os.path.join(dest, os.path.relpath(root, src))
        os.makedirs(target, exist_ok=True)
        for name in names:
            (manifests if name == "manifest.json" else files).append(
                (os.path.join(root, name), os.path.join(target, name)))
    manifests.sort(key=lambda pair: -pair[1].count(os.sep))
    for a, b in files + manifests:
        os.replace(a, b)
    shutil.rmtree(src, ignore_errors=True)
    return ray.train.Checkpoint.from_directory(dest)
