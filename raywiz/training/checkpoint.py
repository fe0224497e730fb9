"""Checkpoints: save and restore exact training state, and export a Hugging Face model.

A checkpoint is a ``CheckpointDir`` (raywiz.artifacts, which names every part): the engine's sharded
model + optimizer state (TrainEngine.save / load), each rank's RNG states, the train state (step,
epoch, position inside the epoch, schedule length, the engine that wrote it; rank 0), the exports
(hf/, adapter/: each with its own manifest and ModelInfo), and the manifest, written last by rank 0.
Every rank writes its part into a staging directory, and the parts are merged into one storage
directory; see ``staging_dir``.
"""

from __future__ import annotations

import glob
import os
import random
import shutil
from typing import Any

import numpy as np
import torch

from raywiz.artifacts import (MANIFEST, CheckpointDir, Kind, ModelInfo, RunLayout, check_manifest, is_remote, join,
                              list_files, read_json, write_json_atomic, write_manifest)
from raywiz.training.engine import check_resumable
from raywiz.training.engine_base import TrainEngine


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


def save_training_state(eng: TrainEngine, ckpt: CheckpointDir, rank: int, train_state: dict,
                        adapter_only: bool = False) -> None:
    """Collective: every rank writes its engine shards and RNG; rank 0 the train_state (with the engine's record).

    adapter_only (train.peft): the engine may leave the frozen base out (DeepSpeed does; FSDP2 writes the
    whole model's shards); resume rebuilds the base from where it came from.
    """
    eng.save(ckpt, adapter_only)
    os.makedirs(os.path.dirname(ckpt.rng(rank)), exist_ok=True)
    torch.save(rng_state(), ckpt.rng(rank))
    if rank == 0:
        write_json_atomic(ckpt.train_state, {**train_state, **eng.record()})


def load_training_state(eng: TrainEngine, ckpt: CheckpointDir, rank: int, adapter_only: bool = False) -> dict:
    """Collective: restore the engine's shards, optimizer, RNG; return the train_state."""
    check = check_manifest(ckpt.path, kind=Kind.TRAIN_CHECKPOINT)
    if not check.complete:
        raise RuntimeError(f"refusing to resume from an incomplete checkpoint: {check.reason}")
    check_resumable(ckpt.path, eng.kind, eng.zero_stage)  # before the engine reads anything
    eng.load(ckpt, adapter_only)
    if os.path.exists(ckpt.rng(rank)):  # absent when resuming on a different number of workers
        set_rng_state(torch.load(ckpt.rng(rank), weights_only=False))
    return read_json(ckpt.train_state)


def load_reported_state(eng: TrainEngine, rank: int, adapter_only: bool = False) -> dict | None:
    """Collective, on a Ray Train worker: the checkpoint Ray Train hands back (after a lost worker, or
    when the same job name runs again) loaded into the engine, and its train_state; None on a fresh start."""
    import ray.train

    restored = ray.train.get_checkpoint()
    if restored is None:
        return None
    with restored.as_directory() as d:
        return load_training_state(eng, CheckpointDir(d), rank, adapter_only=adapter_only)


def export_hf(model, state_dict: dict, tokenizer, out_dir: str, info: ModelInfo) -> None:
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
    info.write(out_dir)
    n_bytes = sum(os.path.getsize(p) for p in glob.glob(os.path.join(out_dir, "*.safetensors")))
    expected = sum(v.numel() * v.element_size() for v in state_dict.values())
    # Peers' classic failure: KB-sized ZeRO-3 saves. Catch it here instead of at load time.
    if n_bytes < 0.5 * expected:
        raise RuntimeError(f"{out_dir}: safetensors hold {n_bytes} bytes but the weights are {expected}")
    write_manifest(out_dir, kind=Kind.HF_EXPORT, meta={"step": info.step, "run": info.run})


def export_model(model, state_dict: dict, tokenizer, here: CheckpointDir, info: ModelInfo, peft,
                 merge_adapter: bool) -> None:
    """Rank 0: hf/ (transformers' format); with PEFT (`peft`: a PeftConfig), adapter/ (peft's) and hf/
    merged, if asked."""
    if not peft.enabled:
        export_hf(model, state_dict, tokenizer, here.hf, info)
        return
    from dataclasses import replace

    from raywiz.training.adapters import export_adapter, is_quantized, merged_model

    # base_quantized: what the base really was while training (QLoRA: 4-bit), read off the model itself
    export_adapter(model, state_dict, here.adapter, replace(info, peft=peft.method,
                   base_quantized=is_quantized(model.get_base_model())), tokenizer)
    if merge_adapter:
        merged = merged_model(model, state_dict)
        export_hf(merged, merged.state_dict(), tokenizer, here.hf, info)


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



def staging_dir(layout: RunLayout, step: int, rank: int, stage: str = "train") -> str | None:
    """Where a rank writes its part of checkpoint `step` before it is persisted (created empty).

    On a local or mounted filesystem (NFS on a cluster) that is a folder beside the checkpoints, so
    persisting is a rename (``move_into_storage``): a checkpoint never needs twice its size on disk,
    and nothing is copied (a 7B model's ZeRO-3 state is ~100 GB: Ray's default copy from a temporary
    directory filled a 128 GB disk). None for cloud storage: write to a temporary directory and let
    Ray upload it.
    """
    if is_remote(layout.root):
        return None
    path = layout.training(stage).staged_checkpoint(step, rank).path
    shutil.rmtree(path, ignore_errors=True)  # left over from a run killed mid-save
    os.makedirs(path)
    return path


def move_into_storage(checkpoint, dir_name: str, layout: RunLayout, stage: str = "train"):
    """Ray Train's checkpoint_upload_fn for staged checkpoints: move this rank's files into place.

    Manifests move last (the innermost first), so a checkpoint whose manifest is there is whole;
    a stale top-level manifest from an interrupted earlier save of the same step goes first.
    """
    import ray.train

    src, dest = checkpoint.path, join(layout.training(stage).path, dir_name)
    if os.path.exists(os.path.join(src, MANIFEST)):
        try:
            os.remove(os.path.join(dest, MANIFEST))
        except FileNotFoundError:
            pass
    files, manifests = [], []
    for root, _, names in os.walk(src):
        target = os.path.join(dest, os.path.relpath(root, src))
        os.makedirs(target, exist_ok=True)
        for name in names:
            (manifests if name == MANIFEST else files).append(
                (os.path.join(root, name), os.path.join(target, name)))
    manifests.sort(key=lambda pair: -pair[1].count(os.sep))
    for a, b in files + manifests:
        os.replace(a, b)
    shutil.rmtree(src, ignore_errors=True)
    return ray.train.Checkpoint.from_directory(dest)
