"""Evaluate each checkpoint while training goes on, and keep the best ones.

This is Ray Train V2's checkpoint validation: a worker reports a checkpoint with
``ray.train.report(..., validation=True)``; the controller then runs ``score_checkpoint`` on it as a
separate Ray task (training does not wait) and merges the returned metrics into the checkpoint's.
Keeping the best is ``CheckpointConfig(checkpoint_score_attribute="pass@1")``: Ray deletes the
worst-scoring checkpoints beyond ``num_to_keep`` but never the latest one (needed for resume) nor one
still being evaluated. Scoring itself is the evaluation library's ``evaluate_model`` (the eval stage's
too), so a checkpoint scored here is not scored again by ``raywiz eval`` (same output directory and
fingerprint).
"""

from __future__ import annotations

import math
from typing import Any

from raywiz.artifacts import CheckpointDir, RunLayout, checkpoint_of, model_results_dir, write_json_atomic
from raywiz.log import say

SCORE = "pass@1"  # mean pass@1 over the job's eval benchmarks


def score_checkpoint(checkpoint, job: dict) -> dict[str, Any]:
    """The validation function: generate and score the checkpoint's HF export with the `eval:` section."""
    from raywiz.benchmarks.evaluate import evaluate_model
    from raywiz.config import JobConfig

    job_cfg = JobConfig.model_validate(job)
    # Checkpoint.path drops s3:// and gs://: name the checkpoint, and let the layout say where it is.
    stored = job_cfg.layout.checkpoint(checkpoint_of(checkpoint.path).step)
    # Results go where `raywiz eval` looks for this checkpoint's, so it does not score it again.
    out_dir = model_results_dir(stored.hf, job_cfg.eval.output_dir, job_cfg.run_dir)
    with checkpoint.as_directory() as local:  # local storage: the checkpoint itself; cloud: a download
        result = evaluate_model(CheckpointDir(local).hf, job_cfg.eval, job_cfg.model,
                                out_dir=out_dir, run_dir=job_cfg.run_dir, in_process=True)
    per_benchmark = {b: v for b, v in result["pass@1"].items() if v is not None}
    mean = sum(per_benchmark.values()) / len(per_benchmark) if per_benchmark else float("nan")
    say(f"checkpoint step {result.get('step')}: pass@1 "
        + ", ".join(f"{b} {v:.3f}" for b, v in per_benchmark.items()))
    return {SCORE: mean, **{f"{SCORE}/{b}": v for b, v in per_benchmark.items()}, "eval_dir": result["out_dir"]}


def validation_config(job, use_gpu: bool):
    """Ray Train's ValidationConfig for `train.evaluate`, or None when it is off."""
    ev = job.train.evaluate
    if not ev.enabled:
        return None
    from ray.train import ValidationConfig, ValidationTaskConfig

    num_gpus = ev.num_gpus
    if num_gpus is None:
        num_gpus = 1 if use_gpu and job.eval.generation.local else 0
    return ValidationConfig(
        fn=score_checkpoint,
        task_config=ValidationTaskConfig(fn_kwargs={"job": job.model_dump(mode="json")}, timeout_s=ev.timeout_s),
        ray_remote_kwargs={"num_gpus": num_gpus, "num_cpus": ev.num_cpus, "max_retries": 1},
    )


def checkpoint_score_kwargs(job) -> dict[str, Any]:
    """CheckpointConfig arguments: rank by pass@1 when checkpoints are evaluated and the best are kept."""
    ev = job.train.evaluate
    if ev.enabled and ev.keep_best:
        return {"checkpoint_score_attribute": SCORE, "checkpoint_score_order": "max"}
    return {}


def unscored_metrics() -> dict[str, float]:
    """What a checkpoint reports before it is scored: NaN ranks below every real score in Ray's order."""
    return {SCORE: float("nan")}


def record_best(result, layout: RunLayout) -> dict | None:
    """Write {run}/train/best_checkpoint.json from the fit() result: the scored checkpoint with the best pass@1."""
    scored = [(ckpt, m) for ckpt, m in (result.best_checkpoints or [])
              if isinstance(m.get(SCORE), (int, float)) and not math.isnan(m[SCORE])]
    if not scored:
        return None
    ckpt, metrics = max(scored, key=lambda cm: (cm[1][SCORE], cm[1].get("step", 0)))
    best_dir = layout.checkpoint(checkpoint_of(ckpt.path).step)  # Checkpoint.path drops s3:// and gs://
    best = {"checkpoint": best_dir.path, "hf": best_dir.hf, "step": metrics.get("step"),
            SCORE: metrics[SCORE], "scores": {k: v for k, v in metrics.items() if k.startswith(f"{SCORE}/")},
            "eval_dir": metrics.get("eval_dir"),
            "all": sorted(({"step": m.get("step"), SCORE: m[SCORE]} for _, m in scored), key=lambda r: r["step"])}
    write_json_atomic(layout.best_checkpoint, best)
    return best
