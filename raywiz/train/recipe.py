"""The training recipe every Ray Train worker runs: setup, then train_step per optimizer step, with
save_checkpoint every N steps and at the end, then cleanup. Read `FinetuneRecipe` top to bottom.

Per optimizer step: take `grad_accum` micro-batches of packed rows from this worker's shard of the
epoch, count the label tokens of the whole global batch, run forward/backward on each micro-batch
with its summed token loss scaled so that the update equals the mean over every label token of the
global batch (`loss_scale`), then step. Checkpoints hold everything needed to continue from exactly
here: ZeRO (or FSDP2) shards, optimizer, RNG, and the position inside the epoch (`TrainState`).

No host sync inside a step: the batch is copied from pinned memory, the label count travels as a
device tensor (one async all-reduce when there are several workers), losses stay on the device, and
the logged numbers are read back once per logged step, all in one transfer.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import ray.train
import torch
import torch.distributed as dist
import torch.nn.functional as F
from ray.data.collate_fn import NumpyBatchCollateFn

from raywiz.artifacts import CheckpointDir, ModelInfo, RunLayout, is_remote, write_json_atomic
from raywiz.config import JobConfig
from raywiz.data import fim
from raywiz.data.pipeline import epoch_shuffle_args, training_tokenizer
from raywiz.data.tokenize import IGNORE_INDEX
from raywiz.log import get_logger
from raywiz.training import checkpoint as ckpt
from raywiz.training import kernels
from raywiz.training.engine import create_engine
from raywiz.training.engine_base import lr_at
from raywiz.training.metrics import (ConsoleLogger, JsonlLogger, MetricLogger, ProgressLogger, StepTimer, WandbLogger,
                                  model_shape, peak_flops, step_flops)
from raywiz.train.validation import unscored_metrics

log = get_logger(__name__)


# ------------------------------------------------------------------ the training math (plain, unit-tested)
@dataclass(frozen=True)
class StepPlan:
    """Steps per epoch and in total, from the packed row count and the batch geometry (the driver makes it)."""

    steps_per_epoch: int
    total_steps: int
    rows_per_step: int
    rows_dropped_per_epoch: int
    n_params: int


def step_plan(n_packed_rows: int, train_cfg, n_params: int) -> StepPlan:
    """Every worker takes the same number of whole global batches per epoch; the rest is dropped."""
    rows_per_worker = n_packed_rows // train_cfg.scaling.num_workers
    steps_per_epoch = rows_per_worker // (train_cfg.optim.micro_batch_size * train_cfg.grad_accum_steps)
    total = steps_per_epoch * train_cfg.optim.epochs
    if train_cfg.optim.max_steps:
        total = min(total, train_cfg.optim.max_steps)
    return StepPlan(steps_per_epoch=steps_per_epoch, total_steps=total, rows_per_step=train_cfg.optim.global_batch_size,
                    rows_dropped_per_epoch=n_packed_rows - steps_per_epoch * train_cfg.optim.global_batch_size,
                    n_params=n_params)


def loss_scale(global_label_tokens, accum: int, world: int):
    """Factor on each micro-batch's summed token loss. DeepSpeed divides by the accumulation steps and
    averages over ranks; this undoes both, so the update is the mean over all label tokens of the global batch."""
    return world * accum / (global_label_tokens.clamp(min=1) if torch.is_tensor(global_label_tokens)
                            else max(global_label_tokens, 1))


@dataclass
class TrainState:
    """Where training is: what a checkpoint's train state (CheckpointDir.train_state) holds."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    step_in_epoch: int = 0
    loss: float = float("nan")  # the last step's mean token loss

    @classmethod
    def from_json(cls, d: dict) -> TrainState:
        return cls(step=d["step"], epoch=d["epoch"], step_in_epoch=d["step_in_epoch"], loss=d.get("loss", math.nan))

    def advance(self, steps_per_epoch: int) -> None:
        self.step += 1
        self.step_in_epoch += 1
        if self.step_in_epoch >= steps_per_epoch:
            self.epoch, self.step_in_epoch = self.epoch + 1, 0


# ------------------------------------------------------------------ batches
class PackedRowsCollate(NumpyBatchCollateFn):
    """numpy batch from Ray Data -> int64 tensors in pinned memory (so the copy to the GPU needs no host
    sync), the packing as cu_seqlens, and counts and sample ids kept on the host."""

    def __call__(self, batch: dict) -> dict:
        pin = torch.cuda.is_available()
        out = {}
        for k in ("input_ids", "labels", "position_ids"):
            t = torch.as_tensor(np.asarray(batch[k], dtype=np.int64))
            out[k] = t.pin_memory() if pin else t
        cu, max_len = kernels.cu_seqlens_from_position_ids(batch["position_ids"])
        out["cu_seqlens"] = torch.from_numpy(cu).pin_memory() if pin else torch.from_numpy(cu)
        out["max_seqlen"] = max_len
        out["n_tokens"] = int(np.sum(batch["n_tokens"]))
        out["n_label_tokens"] = int(np.sum(batch["n_label_tokens"]))
        out["sum_sq_len"] = int(np.sum(batch["sum_sq_len"]))
        out["sample_ids"] = [s for ids in batch["sample_ids"] for s in str(ids).split(",")]
        return out


def token_loss_sum(model, batch: dict, device, fused: str = "off", varlen: bool = False) -> torch.Tensor:
    """Sum of next-token cross-entropy over label tokens (fp32, on the device), exact per sample.

    No attention_mask: with sdpa, transformers reads the position_ids restarts as sample boundaries;
    with varlen attention the cu_seqlens say the same. fused: the loss comes from the hidden states
    (raywiz.training.kernels.fused_loss_head), never holding full-vocabulary fp32 logits.
    """
    input_ids = batch["input_ids"].to(device, non_blocking=True)
    position_ids = batch["position_ids"].to(device, non_blocking=True)
    labels = batch["labels"].to(device, non_blocking=True)
    extra = kernels.varlen_kwargs(batch, device) if varlen else {}
    if fused != "off":
        with kernels.fused_loss_head(_hf_model(model), labels, fused):
            return model(input_ids=input_ids, position_ids=position_ids, use_cache=False, **extra).logits
    logits = model(input_ids=input_ids, position_ids=position_ids, use_cache=False, **extra).logits
    shift_logits = logits[:, :-1, :].float()
    return F.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)), labels[:, 1:].reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")


def _hf_model(model):
    return getattr(model, "module", model)  # the DeepSpeed (or FSDP2) engine wraps the HF model


# ------------------------------------------------------------------ opt-in diagnostics
class DebugHook:
    """train.debug: worker pid files, per-step sample traces, and a torch.profiler summary of one step."""

    def __init__(self, cfg, layout: RunLayout, rank: int):
        self.cfg, self.layout, self.rank = cfg, layout, rank
        self.local = not is_remote(layout.root)

    def on_start(self) -> None:
        """Worker pids, for operators (and the fault-injection test) to find a worker process."""
        if self.cfg.pid_files and self.local:
            write_json_atomic(self.layout.worker_pid_file(self.rank),
                              {"pid": os.getpid(), "host": os.uname().nodename, "time": time.time(),
                               "node_id": ray.get_runtime_context().get_node_id(),
                               "worker_start_timeout_s": os.environ.get("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S")})

    def on_step(self, step: int, micro_batches: list[dict]) -> None:
        """The sample ids one rank trained on at one step (a rerun after a failure overwrites it)."""
        if self.cfg.trace_samples:
            write_json_atomic(self.layout.trace_file(step, self.rank), [s for b in micro_batches for s in b["sample_ids"]])

    @contextlib.contextmanager
    def maybe_profile(self, step: int, device):
        """Around optimizer step `step` (1-based): profile it if asked (rank 0 writes the summary)."""
        if self.cfg.profile_step != step or not self.local:
            yield
            return
        from raywiz.training.metrics import profile_summary

        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        with torch.profiler.profile(activities=activities) as prof:
            yield
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        wall = time.perf_counter() - t
        if self.rank == 0:
            write_json_atomic(self.layout.profile_file(step), profile_summary(prof, wall))


# ------------------------------------------------------------------ the recipe
@dataclass
class StepOutput:
    """One optimizer step's numbers, left on the device until a logged step reads them."""

    loss_sum: torch.Tensor  # this worker's summed token loss
    counts: torch.Tensor  # global [label tokens, tokens, sum of squared sample lengths]
    lr: float


@dataclass
class _Interval:
    """What accumulates between two logged steps."""

    timer: StepTimer = field(default_factory=StepTimer)
    tokens: list = field(default_factory=list)  # device/host counts per step
    steps: int = 0


class FinetuneRecipe:
    def __init__(self, job: JobConfig, plan: StepPlan, progress=None):
        self.job, self.tc, self.plan = job, job.train, plan
        self.layout = job.layout
        self.progress = progress  # the driver's progress display (raywiz.training.progress.ProgressBoard)

    # -- setup: engine, resume, loggers
    def setup(self) -> None:
        tc = self.tc
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self.on_gpu = self.device.type == "cuda"
        self.accum, self.micro = tc.grad_accum_steps, tc.optim.micro_batch_size
        self.debug = DebugHook(tc.debug, self.layout, self.rank)
        self.debug.on_start()

        self.tokenizer = training_tokenizer(self.job.model, tc.data)  # a named chat template's tokens added
        eng = self.eng = create_engine(self.job.model, tc, self.on_gpu, self.device, n_params=self.plan.n_params,
                                       n_tokens=len(self.tokenizer))
        self.driver, self.model = eng.driver, eng.model  # the loop drives `driver` (DeepSpeed's engine, or FSDP2's)
        self.fused, self.varlen = eng.fused_loss, eng.attn_implementation == kernels.VARLEN
        self.layers, self.width = model_shape(self.model.config)
        self.peak = peak_flops(self.device)
        chosen = (f"attention {eng.attn_implementation}, fused loss {eng.fused_loss}, "
                  f"{'bf16' if eng.dtype == torch.bfloat16 else eng.dtype} weights, {eng.description}")
        log.info(chosen)
        if self.rank == 0 and self.progress is not None:  # the driver prints it (worker lines stay in Ray's logs)
            self.progress.post({"event": chosen, "step": 0})

        # resume: after a lost worker, or when the same job name runs again
        self.state = TrainState()
        restored = ckpt.load_reported_state(self.eng, self.rank, adapter_only=self.tc.peft.enabled)
        if restored is not None:
            self.state = TrainState.from_json(restored)
            if self.state.step_in_epoch >= self.plan.steps_per_epoch:  # saved at an epoch's last step
                self.state.epoch, self.state.step_in_epoch = self.state.epoch + 1, 0
            resumed = (f"resumed from step {self.state.step} (epoch {self.state.epoch + 1}, step "
                       f"{self.state.step_in_epoch} of {self.plan.steps_per_epoch} in it)")
            log.info(resumed)
            if self.rank == 0 and self.progress is not None:  # the driver says it: after a lost worker, too
                self.progress.post({"event": resumed, "step": self.state.step})
        self.loggers: list[MetricLogger] = self._loggers() if not self.finished else []

    @property
    def finished(self) -> bool:
        return self.state.step >= self.plan.total_steps

    def _loggers(self) -> list[MetricLogger]:
        if self.rank != 0:
            return [MetricLogger()]
        from raywiz.tracking import start_run

        loggers: list[MetricLogger] = [ConsoleLogger()]
        if self.progress is not None:
            loggers.append(ProgressLogger(self.progress))
        if not is_remote(self.layout.root):
            loggers.append(JsonlLogger(self.layout.metrics, resume_step=self.state.step))
        run = start_run(self.job, "train", config={"plan": asdict(self.plan)})
        if run is not None:
            loggers.append(WandbLogger(run))
        return loggers

    # -- the loop
    def train(self) -> None:
        per_epoch = self.plan.steps_per_epoch
        self.started, self.steps_this_run = time.perf_counter(), 0
        while not self.finished:
            batches = self._epoch_batches(self.state.epoch)
            for _ in range(self.state.step_in_epoch * self.accum):  # resume mid-epoch: skip what was trained
                next(batches)
            interval = _Interval()
            epoch = self.state.epoch
            while self.state.epoch == epoch and not self.finished:
                with interval.timer.waiting():
                    micro_batches = [next(batches) for _ in range(self.accum)]
                with self.debug.maybe_profile(self.state.step + 1, self.device):
                    out = self.train_step(micro_batches)
                self.debug.on_step(self.state.step, micro_batches)
                self.state.advance(per_epoch)
                self.steps_this_run += 1
                interval.tokens.append(out.counts)
                interval.steps += 1
                if self.state.step % self.tc.log_every_n_steps == 0 or self.finished:
                    self._log(out, interval, epoch)
                    interval = _Interval()
                if self.state.step % self.tc.checkpoint.every_n_steps == 0 and not self.finished:
                    self.save_checkpoint(final=False)
        self.save_checkpoint(final=True)

    def _epoch_batches(self, epoch: int):
        return iter(ray.train.get_dataset_shard("train").iter_torch_batches(
            batch_size=self.micro, collate_fn=PackedRowsCollate(), drop_last=True, prefetch_batches=4,
            **epoch_shuffle_args(self.tc.data, self.tc.optim.seed, epoch)))

    def train_step(self, micro_batches: list[dict]) -> StepOutput:
        """One optimizer step over `accum` micro-batches; nothing in it waits for the device."""
        labels, counts = self._global_counts(micro_batches)
        lr = lr_at(self.state.step, self.tc.optim, self.plan.total_steps)
        for group in self.driver.optimizer.param_groups:
            group["lr"] = lr
        scale = loss_scale(labels, self.accum, self.world)
        loss_sum = torch.zeros((), dtype=torch.float32, device=self.device)
        for b in micro_batches:
            loss = token_loss_sum(self.driver, b, self.device, self.fused, self.varlen)
            self.driver.backward(loss * scale)
            self.driver.step()
            loss_sum += loss.detach()
        return StepOutput(loss_sum=loss_sum, counts=counts, lr=lr)

    def _global_counts(self, micro_batches: list[dict]):
        """(global label tokens, [label tokens, tokens, sum of squared lengths] of the global batch).
        One worker: host numbers. Several: a device tensor all-reduced asynchronously, so the device
        waits for it, never the host."""
        local = [float(sum(b[k] for b in micro_batches)) for k in ("n_label_tokens", "n_tokens", "sum_sq_len")]
        t = torch.tensor(local, dtype=torch.float64)
        if self.world == 1 or not dist.is_initialized():
            return local[0], t
        t = (t.pin_memory() if self.on_gpu else t).to(self.device, non_blocking=True)
        dist.all_reduce(t, async_op=True).wait()
        return t[0], t

    def _log(self, out: StepOutput, interval: _Interval, epoch: int) -> None:
        """Once per logged step: one reduction and one read-back of everything the loggers show."""
        counts = torch.stack([c.to(self.device) for c in interval.tokens]).sum(0)
        loss_sum = out.loss_sum.double()
        if self.world > 1 and dist.is_initialized():
            dist.all_reduce(loss_sum)
        gnorm = self.driver.get_global_grad_norm()
        gnorm = gnorm.double().reshape(()) if torch.is_tensor(gnorm) else torch.tensor(
            float("nan") if gnorm is None else float(gnorm), dtype=torch.float64)
        last_labels = out.counts[0].to(self.device)
        vals = torch.cat([torch.stack([loss_sum / last_labels.clamp(min=1), gnorm.to(self.device)]), counts]).tolist()
        loss, grad_norm, _, tokens, sum_sq = vals
        self.state.loss = loss
        elapsed, wait_frac = interval.timer.finish()
        flops = step_flops(self.plan.n_params, int(tokens), int(sum_sq), self.layers, self.width)
        done = time.perf_counter() - self.started
        record = {
            "step": self.state.step, "total_steps": self.plan.total_steps, "epoch": epoch, "loss": loss, "lr": out.lr,
            "grad_norm": grad_norm, "tokens_per_s": tokens / elapsed,
            "mfu": flops / elapsed / (self.peak * self.world) if self.peak else None, "data_wait": wait_frac,
            "elapsed_s": done, "step_seconds": elapsed / interval.steps,
            "peak_memory_gib": torch.cuda.max_memory_allocated(self.device) / 2**30 if self.on_gpu else None,
            "time": time.time(),
            "eta_s": done / self.steps_this_run * (self.plan.total_steps - self.state.step),
        }
        for lg in self.loggers:
            lg.log(record)

    # -- checkpoints
    def save_checkpoint(self, final: bool) -> None:
        """Collective: engine shards + RNG + TrainState (+ the HF export), reported to Ray Train."""
        tc, step = self.tc, self.state.step
        export = tc.checkpoint.export_hf == "every" or (final and tc.checkpoint.export_hf == "last")
        name = self.layout.checkpoint(step).name
        staging = ckpt.staging_dir(self.layout, step, self.rank)
        upload = functools.partial(ckpt.move_into_storage, layout=self.layout) if staging else None
        with contextlib.nullcontext(staging) if staging else tempfile.TemporaryDirectory(prefix="raywiz-ckpt-") as local:
            ckpt.save_training_state(self.eng, CheckpointDir(local), self.rank,
                                     dict(asdict(self.state), total_steps=self.plan.total_steps),
                                     adapter_only=self.tc.peft.enabled)
            if export:
                sd = self.eng.full_state_dict()
                if self.rank == 0:
                    info = ModelInfo(step=step, run=self.job.name, base_model=self.job.model.name_or_path,
                                     template=tc.data.template.name, prompt=tc.data.template.prompt, final=final,
                                     fim=fim.record(self.tokenizer).get("fim"))
                    ckpt.export_model(self.model, sd, self.tokenizer, CheckpointDir(local), info, tc.peft,
                                      tc.checkpoint.merge_adapter)
                del sd
            ckpt.seal_checkpoint(local, self.rank, self.world, meta={"step": step, "run": self.job.name, "final": final})
            metrics = {"step": step, "loss": self.state.loss, "final": final}
            if tc.evaluate.enabled:  # scored later by a Ray task (raywiz.train.validation); training goes on
                metrics.update(unscored_metrics())
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(local),
                             checkpoint_dir_name=name, checkpoint_upload_fn=upload, validation=tc.evaluate.enabled)
        log.info(f"checkpoint {name} saved")

    def cleanup(self) -> None:
        for lg in self.loggers:
            lg.close()


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train's entry point: build the recipe and run it."""
    recipe = FinetuneRecipe(JobConfig.model_validate(loop_config["job"]), StepPlan(**loop_config["plan"]),
                            progress=loop_config.get("progress"))
    recipe.setup()
    try:
        if recipe.finished:
            log.info(f"this run already finished {recipe.state.step} steps; nothing to train")
            return
        recipe.train()
    finally:
        recipe.cleanup()
