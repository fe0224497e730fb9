"""`raywiz rl`: pick the policy to start from, then run the RL recipe on a Ray Train TorchTrainer.

The driver resolves ``rl.model`` (this run's train checkpoint, or any model), hands the job to Ray
Train with the scaling, failure and checkpoint settings of the ``rl:`` section, shows the progress
line, and records the best evaluated checkpoint. Re-running a job with the same name resumes: Ray
Train restores its checkpoint state from ``{run_dir}/rl``.
"""

from __future__ import annotations

import math
import os

from raywiz.artifacts import checkpoint_of, read_json, write_json_atomic
from raywiz.config import ConfigError, JobConfig
from raywiz.log import get_logger, say

log = get_logger(__name__)

DEFAULT_MAX_TOKENS = 512  # eval's default (eval.generation.max_tokens)


def start_model(job: JobConfig, given: str | None = None) -> str:
    """The policy to start from: `given` (the pipeline hands train's output on), else rl.model: 'best' /
    'last' (this run's train checkpoint; 'best' is the default when the job has train:), a model
    directory or hub name; else model.name_or_path."""
    choice = job.rl.model or ("best" if job.train is not None else None)
    if given:
        return given
    if choice is None:
        return job.model.name_or_path
    if choice not in ("best", "last"):
        return choice
    train = job.layout.training("train")
    if choice == "best" and os.path.exists(train.best_checkpoint):
        best = read_json(train.best_checkpoint)
        if best.get("hf") and os.path.exists(best["hf"]):
            return best["hf"]
    latest = next((c for c in reversed(train.checkpoints(complete=True))), None)
    if latest is None:
        raise ConfigError(f"rl.model: {choice!r}: this run has no train checkpoint with a model in {train.path} "
                          "(run `raywiz train` first, or name a model)")
    return latest.model_dir


def max_tokens(job: JobConfig) -> int:
    """New tokens per sample: rl.sampling.max_tokens, else eval's, as the model is evaluated."""
    if job.rl.sampling.max_tokens:
        return job.rl.sampling.max_tokens
    return job.eval.generation.max_tokens if job.eval is not None else DEFAULT_MAX_TOKENS


def record_best(result, job: JobConfig) -> dict | None:
    """Write {run}/rl/best_checkpoint.json: the kept checkpoint with the best held-out reward."""
    scored = [(c, m) for c, m in (result.best_checkpoints or [])
              if isinstance(m.get("eval_reward"), float) and not math.isnan(m["eval_reward"])]
    if not scored:
        return None
    chosen, metrics = max(scored, key=lambda cm: (cm[1]["eval_reward"], cm[1].get("step", 0)))
    ckpt = job.layout.training("rl").checkpoint(checkpoint_of(chosen.path).step)
    best = {"step": metrics["step"], "eval_reward": metrics["eval_reward"], "checkpoint": ckpt.path,
            "hf": ckpt.model_dir,
            "all": sorted(({"step": m["step"], "eval_reward": m["eval_reward"]} for _, m in scored),
                          key=lambda r: r["step"])}
    write_json_atomic(job.layout.training("rl").best_checkpoint, best)
    return best


def check_tasks(job: JobConfig) -> int:
    """Load the tasks on the driver, before any Ray work, so a bad file is a clear error naming it
    (not a worker's traceback); returns how many train."""
    from raywiz.rl.recipe import training_tasks

    cfg = job.rl
    try:
        train, _, _ = training_tasks(cfg)
    except ValueError as e:  # the loaders name the file and line, or the field
        raise ConfigError(f"rl.tasks: {e}") from None
    if cfg.prompts_per_step > len(train):
        raise ConfigError(f"rl.prompts_per_step: {cfg.prompts_per_step} prompts per step, but only {len(train)} "
                          "tasks to train on")
    return len(train)


def run_rl(job: JobConfig, model: str | None = None) -> str:
    """Run GRPO; return the final checkpoint's model directory (hf/, or the adapter of an unmerged LoRA run)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from raywiz.rl.recipe import describe, rl_loop_per_worker
    from raywiz.runtime import cluster_has_gpus, init_ray
    from raywiz.training.progress import ProgressBoard, TrainProgress

    cfg = job.require("rl")
    check_tasks(job)
    start = start_model(job, model)
    init_ray(job, extra_cpus_needed=cfg.workers * cfg.cpus_per_worker)
    use_gpu = cfg.use_gpu if cfg.use_gpu is not None else cluster_has_gpus()
    say(f"rl: {cfg.steps} steps of {cfg.prompts_per_step} prompts x {cfg.group_size} samples from {start} "
        f"on {cfg.workers} {'GPU' if use_gpu else 'CPU'} worker(s)")
    keep_best = {"checkpoint_score_attribute": "eval_reward", "checkpoint_score_order": "max"} if cfg.eval_every else {}
    board = ProgressBoard.create()
    trainer = TorchTrainer(
        rl_loop_per_worker,
        train_loop_config={"job": job.model_dump(mode="json"), "start_model": start, "max_tokens": max_tokens(job),
                           "progress": board},
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}),
        run_config=RunConfig(name="rl", storage_path=job.layout.root,
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.num_to_keep, **keep_best)),
    )
    with TrainProgress(board, cfg.steps, stage="rl", detail=describe):
        result = trainer.fit()
    if result.error:
        raise result.error
    best = record_best(result, job)
    if best:
        say(f"rl: best checkpoint by held-out reward: step {best['step']} ({best['eval_reward']:.3f}) -> {best['hf']}")
    final = job.layout.training("rl").latest_checkpoint()
    if final is None:
        raise RuntimeError("rl finished without a checkpoint")
    return final.model_dir or final.path
