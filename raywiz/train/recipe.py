"""The training loop every Ray Train worker runs. Read it top to bottom.

Per optimizer step: take `grad_accum` micro-batches of packed rows from this worker's shard of the
epoch, count the label tokens of the whole global batch (one all-reduce), run forward/backward on
each micro-batch with its summed token loss scaled so that the update equals the mean over every
label token of the global batch, then step. Checkpoints hold everything needed to continue from
exactly here: ZeRO shards, optimizer, RNG, and the position inside the epoch.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
import time

import numpy as np
import ray.train
import torch
from ray.data.collate_fn import NumpyBatchCollateFn
import torch.distributed as dist
import torch.nn.functional as F

from raywiz.artifacts import CheckpointDir, join, write_json_atomic
from raywiz.config import JobConfig
from raywiz.log import get_logger
from raywiz.data.pipeline import epoch_shuffle_args
from raywiz.data.tokenize import IGNORE_INDEX
from raywiz.modeling import load_tokenizer
from raywiz.train import checkpoint as ckpt
from raywiz.train.engine import create_engine, lr_at
from raywiz.train.metrics import StepTimer, model_shape, peak_flops, step_flops
from raywiz.train.validation import unscored_metrics

log = get_logger(__name__)


class PackedRowsCollate(NumpyBatchCollateFn):
    """numpy batch from Ray Data -> int64 tensors (+ counts and sample ids, kept on the host)."""

    def __call__(self, batch: dict) -> dict:
        out = {k: torch.as_tensor(np.asarray(batch[k], dtype=np.int64))
               for k in ("input_ids", "labels", "position_ids")}
        out["n_tokens"] = int(np.sum(batch["n_tokens"]))
        out["n_label_tokens"] = int(np.sum(batch["n_label_tokens"]))
        out["sum_sq_len"] = int(np.sum(batch["sum_sq_len"]))
        out["sample_ids"] = [s for ids in batch["sample_ids"] for s in str(ids).split(",")]
        return out


def token_loss_sum(model, batch: dict, device) -> torch.Tensor:
    """Sum of next-token cross-entropy over label tokens (fp32), with packing-aware attention.

    No attention_mask: transformers reads the position_ids restarts as sample boundaries.
    """
    input_ids = batch["input_ids"].to(device, non_blocking=True)
    position_ids = batch["position_ids"].to(device, non_blocking=True)
    labels = batch["labels"].to(device, non_blocking=True)
    logits = model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    return F.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")


def all_reduce_sum(values: list[float], device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def train_loop_per_worker(loop_config: dict) -> None:
    job = JobConfig.model_validate(loop_config["job"])
    tc = job.train
    plan = loop_config["plan"]  # steps_per_epoch, total_steps, n_params: computed once by the driver
    progress = loop_config.get("progress")  # the driver's console (raywiz.train.progress); rank 0 posts to it
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    on_gpu = device.type == "cuda"
    accum, micro = tc.grad_accum_steps, tc.optim.micro_batch_size
    layout = job.layout
    run_train_dir = layout.train
    _write_pid(run_train_dir, rank)

    # -- model, optimizer, DeepSpeed engine (built sharded under ZeRO-3)
    tokenizer = load_tokenizer(job.model.name_or_path, job.model.tokenizer, job.model.trust_remote_code)
    eng = create_engine(job.model, tc, on_gpu, device, n_params=plan["n_params"])
    engine, model = eng.engine, eng.model
    layers, width = model_shape(model.config)
    peak = peak_flops(device)

    # -- resume: after a lost worker, or when the same job name runs again
    state = {"step": 0, "epoch": 0, "step_in_epoch": 0}
    restored = ray.train.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            state = ckpt.load_training_state(engine, d, rank)
        log.info("resumed from step %s (epoch %s, step %s of %s in it)", state["step"], state["epoch"],
                 state["step_in_epoch"], plan["steps_per_epoch"])

    if restored is not None and state["step"] >= plan["total_steps"]:
        log.info("this run already finished %s steps; nothing to train", state["step"])
        return

    tracker = None
    if rank == 0:  # W&B from rank 0 only (Ray's setup_wandb logs from every worker under Train V2)
        from raywiz.tracking import start_run

        tracker = start_run(job, "train", config={"plan": plan})

    def save(final: bool) -> None:
        step = state["step"]
        export = tc.checkpoint.export_hf == "every" or (final and tc.checkpoint.export_hf == "last")
        name = layout.checkpoint(step).name
        staging = ckpt.staging_dir(layout, step, rank)
        upload = functools.partial(ckpt.move_into_storage, layout=layout) if staging else None
        with contextlib.nullcontext(staging) if staging else tempfile.TemporaryDirectory(prefix="raywiz-ckpt-") as local:
            ckpt.save_training_state(engine, local, rank,
                                     dict(state, total_steps=plan["total_steps"], loss=last_loss))
            if export:
                sd = ckpt.consolidated_state_dict(engine, tc.deepspeed.stage)
                if rank == 0:
                    meta = {"step": step, "run": job.name, "base_model": job.model.name_or_path,
                            "template": tc.data.template.name, "final": final}
                    here = CheckpointDir(local)
                    if tc.peft.enabled:  # the adapter always; the merged full model in hf/ when asked
                        from raywiz.train.adapters import export_adapter, merged_state_dict

                        export_adapter(model, sd, here.adapter, {**meta, "peft": tc.peft.method}, tokenizer)
                        if tc.checkpoint.merge_adapter:
                            ckpt.export_hf(model.get_base_model(), merged_state_dict(model, sd), tokenizer,
                                           here.hf, meta)
                    else:
                        ckpt.export_hf(model, sd, tokenizer, here.hf, meta)
                del sd
            ckpt.seal_checkpoint(local, rank, world, meta={"step": step, "run": job.name, "final": final})
            metrics = {"step": step, "loss": last_loss, "final": final}
            if tc.evaluate.enabled:  # scored later by a Ray task (raywiz.train.validation); training goes on
                metrics.update(unscored_metrics())
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(local),
                             checkpoint_dir_name=name, checkpoint_upload_fn=upload,
                             validation=tc.evaluate.enabled)
        if rank == 0:
            log.info("checkpoint %s saved", name)

    # -- the loop
    last_loss = float("nan")
    total, per_epoch = plan["total_steps"], plan["steps_per_epoch"]
    run_started, steps_this_run = time.perf_counter(), 0
    while state["step"] < total:
        epoch = state["epoch"]
        batches = iter(ray.train.get_dataset_shard("train").iter_torch_batches(
            batch_size=micro, collate_fn=PackedRowsCollate(), drop_last=True, prefetch_batches=4,
            **epoch_shuffle_args(tc.data, tc.optim.seed, epoch)))
        for _ in range(state["step_in_epoch"] * accum):  # resume mid-epoch: skip what was trained
            next(batches)
        timer = StepTimer()
        while state["step_in_epoch"] < per_epoch and state["step"] < total:
            with timer.waiting():
                micro_batches = [next(batches) for _ in range(accum)]
            local = [sum(b["n_label_tokens"] for b in micro_batches), sum(b["n_tokens"] for b in micro_batches),
                     sum(b["sum_sq_len"] for b in micro_batches)]
            global_labels, global_tokens, global_sq = all_reduce_sum(local, device)
            lr = lr_at(state["step"], tc.optim, total)
            for group in engine.optimizer.param_groups:
                group["lr"] = lr
            # DeepSpeed divides by accum steps and averages over ranks: undo both so the update is
            # the mean over all label tokens of the global batch.
            scale = world * accum / max(global_labels, 1.0)
            loss_sum = 0.0
            for b in micro_batches:
                loss = token_loss_sum(engine, b, device)
                engine.backward(loss * scale)
                engine.step()
                loss_sum += loss.item()
            last_loss = all_reduce_sum([loss_sum], device)[0] / max(global_labels, 1.0)
            if tc.trace_samples:
                _trace(run_train_dir, state["step"], rank, [s for b in micro_batches for s in b["sample_ids"]])
            state["step"] += 1
            state["step_in_epoch"] += 1
            steps_this_run += 1
            elapsed, wait_frac = timer.finish()
            if rank == 0 and (state["step"] % tc.log_every_n_steps == 0 or state["step"] == total):
                tok_s = global_tokens / elapsed
                flops = step_flops(plan["n_params"], int(global_tokens), int(global_sq), layers, width)
                mfu = flops / elapsed / (peak * world) if peak else None
                gnorm = engine.get_global_grad_norm()
                gnorm = float(gnorm) if gnorm is not None else float("nan")
                eta = (time.perf_counter() - run_started) / steps_this_run * (total - state["step"])
                log.debug("step %s/%s | epoch %s | loss %.4f | lr %.2e | grad-norm %.3f | %.0f tok/s | data-wait %.0f%%",
                          state["step"], total, epoch + 1, last_loss, lr, gnorm, tok_s, 100 * wait_frac)
                if progress is not None:
                    progress.post({"step": state["step"], "total_steps": total, "loss": last_loss, "lr": lr,
                                   "tokens_per_s": tok_s, "mfu": mfu, "eta_s": eta})
                metrics = {"loss": last_loss, "lr": lr, "grad_norm": gnorm, "useful_tokens_per_s": tok_s,
                           "mfu": mfu, "data_wait_fraction": wait_frac, "epoch": epoch, "step_seconds": elapsed,
                           "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if on_gpu else None}
                _append_metrics(run_train_dir, state["step"], metrics)
                if tracker is not None:
                    tracker.log({f"train/{k}": v for k, v in metrics.items()}, step=state["step"])
            if state["step"] % tc.checkpoint.every_n_steps == 0 and state["step"] < total:
                save(final=False)
        if state["step_in_epoch"] >= per_epoch:
            state["epoch"] += 1
            state["step_in_epoch"] = 0
    save(final=True)
    if tracker is not None:
        tracker.finish()


def _write_pid(run_train_dir: str, rank: int) -> None:
    """Worker pids, for operators (and the fault-injection test) to find a worker process."""
    if "://" not in run_train_dir:
        os.makedirs(join(run_train_dir, "workers"), exist_ok=True)
        write_json_atomic(join(run_train_dir, "workers", f"rank_{rank}.json"),
                          {"pid": os.getpid(), "host": os.uname().nodename, "time": time.time(),
                           "node_id": ray.get_runtime_context().get_node_id(),
                           # what the Ray job set for (autoscaled) worker start, seen from the worker
                           "worker_start_timeout_s": os.environ.get("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S")})


def _append_metrics(run_train_dir: str, step: int, metrics: dict) -> None:
    """Rank 0's per-step metrics as JSON lines next to the checkpoints (local storage only)."""
    if "://" not in run_train_dir:
        with open(os.path.join(run_train_dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps({"step": step, "time": time.time(), **metrics}) + "\n")


def _trace(run_train_dir: str, step: int, rank: int, sample_ids: list[str]) -> None:
    """The sample ids one rank trained on at one step (a rerun after a failure overwrites it)."""
    write_json_atomic(join(run_train_dir, "trace", f"step_{step:08d}.rank_{rank}.json"), sample_ids)


def read_trace(run_train_dir: str) -> dict[int, list[str]]:
    """step -> sorted sample ids of that step over all ranks."""
    out: dict[int, list[str]] = {}
    d = join(run_train_dir, "trace")
    for name in sorted(os.listdir(d)):
        step = int(name.split("_")[1].split(".")[0])
        with open(os.path.join(d, name)) as f:
            out.setdefault(step, []).extend(json.load(f))
    return {k: sorted(v) for k, v in out.items()}
