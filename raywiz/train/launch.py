"""`raywiz train`: prepare the data once, then run the recipe on a Ray Train TorchTrainer.

The driver does three things: build the packed dataset (Ray Data, on CPU workers), turn its size
into a step plan (the cosine schedule needs the total up front), and hand both to Ray Train with
the scaling, failure and checkpoint settings from the job. Re-running a job with the same name
resumes: Ray Train V2 restores its checkpoint state from ``{run_dir}/train``.
"""

from __future__ import annotations

import os

from raywiz.artifacts import Kind, check_manifest, checkpoint_of, expand_paths, join, write_json_atomic
from raywiz.config import ConfigError, JobConfig
from raywiz.log import get_logger, say

log = get_logger(__name__)


def resolve_sources(job: JobConfig, dataset: str | None = None):
    """What to train on: `train.data.sources`, else `paths` (else `dataset`, else this run's evolve output)
    as one source."""
    from raywiz.data.pipeline import Source
    from raywiz.data.config import DataSourceConfig

    sources = job.train.data.sources
    if not sources:
        files = resolve_data_files(job, dataset)
        return [Source(DataSourceConfig(path=files[0]), files)]
    out = []
    for i, cfg in enumerate(sources):
        try:
            out.append(Source(cfg, expand_paths([cfg.path]) if cfg.path else []))
        except FileNotFoundError as e:
            raise ConfigError(f"train.data.sources[{i}].path: {e}") from None
    return out


def resolve_data_files(job: JobConfig, dataset: str | None = None) -> list[str]:
    """The shard files to train on: the job's paths, else `dataset` (shards the pipeline hands on), else
    this run's sealed evolve output."""
    paths = job.train.data.paths or ([dataset] if dataset else [])
    if not paths:
        source = job.layout.evolve
        check = check_manifest(source, kind=Kind.INSTRUCTION_SHARDS)
        if not check.complete:
            raise ConfigError(f"train.data.paths: empty, and this run's evolve output is not usable ({check.reason}); "
                              "run `raywiz evolve` first, run the whole pipeline with `raywiz run`, or name shard files")
        paths = [join(source, name) for name in sorted(check.manifest["files"]) if name.endswith(".parquet")]
    try:
        return expand_paths(paths)
    except FileNotFoundError as e:
        raise ConfigError(f"train.data.paths: {e}") from None


def check_resume(job: JobConfig, use_gpu: bool | None) -> None:
    """Before any training: a checkpoint this run would resume from must suit its engine (exit 2 if not).
    use_gpu None: Ray has not started, so a refused rerun does not pay for it; where the GPUs Ray finds would
    pick the ZeRO stage, only another engine's checkpoint is refused then. The workers check again, with
    what only they know (the GPU memory that picks the ZeRO stage)."""
    from raywiz.artifacts import is_remote
    from raywiz.training.engine import CheckpointMismatch, check_resumable, planned_engine, written_by

    latest = None if is_remote(job.layout.root) else job.layout.latest_checkpoint()
    if latest is None:
        return
    plans = {planned_engine(job.train, on_gpu) for on_gpu in ((use_gpu,) if use_gpu is not None else (False, True))}
    kind, stage = plans.pop() if len(plans) == 1 else (next(iter(plans))[0], None)  # the GPUs pick the stage
    if kind == "deepspeed" and stage is None and written_by(latest.path)[0] == "deepspeed":
        return  # the same engine: whether the stage matches is known later
    try:
        check_resumable(latest.path, kind, stage)
    except CheckpointMismatch as e:
        raise ConfigError(str(e)) from None


def checkpoint_mismatch(error: BaseException):
    """The CheckpointMismatch a worker raised, out of Ray Train's WorkerGroupError, or None."""
    from raywiz.training.engine import CheckpointMismatch

    for failure in getattr(error, "worker_failures", {}).values():
        while failure is not None:
            if isinstance(failure, CheckpointMismatch):
                return failure
            failure = failure.__cause__
    return None


def make_plan(job: JobConfig, n_packed_rows: int) -> dict:
    """Steps per epoch and in total, from the packed row count and the batch geometry."""
    from dataclasses import asdict

    from raywiz.modeling import count_parameters, model_config
    from raywiz.train.recipe import step_plan

    tc = job.train
    config = model_config(job.model.name_or_path, job.model.trust_remote_code, job.model.revision)
    plan = step_plan(n_packed_rows, tc, count_parameters(config))
    if plan.steps_per_epoch == 0:
        raise ConfigError(
            f"train.optim.global_batch_size: the data packs into {n_packed_rows} rows of "
            f"{tc.data.max_length} tokens, fewer than one global batch ({tc.optim.global_batch_size} rows); "
            "lower the batch size or add data")
    return asdict(plan)


def scaling_config(job: JobConfig, use_gpu: bool):
    """Ray Train's ScalingConfig for the job: one worker per GPU (or per CPU slot), with its CPUs.

    Also what the autoscaler sees (raywiz.jobs.train_bundles reads the per-worker bundle from it).
    """
    from ray.train import ScalingConfig

    sc = job.require("train").scaling
    return ScalingConfig(
        num_workers=sc.num_workers,
        use_gpu=use_gpu,
        resources_per_worker={"CPU": sc.cpus_per_worker, **({"GPU": 1} if use_gpu else {})},
        accelerator_type=sc.accelerator_type,
        placement_strategy=sc.placement_strategy,
    )


def run_train(job: JobConfig, dataset: str | None = None) -> str:
    """Train; return the exported HF directory of the final checkpoint (or the checkpoint dir).

    dataset: instruction shards to train on when the job names none (`raywiz run --evolve-output`);
    without it, this run's own evolve output."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from raywiz.data.pipeline import prepare_packed_dataset
    from raywiz.runtime import cluster_has_gpus, init_ray
    from raywiz.training.progress import ProgressBoard, TrainProgress
    from raywiz.train.recipe import train_loop_per_worker
    from raywiz.train.validation import checkpoint_score_kwargs, record_best, validation_config

    tc = job.require("train")
    sources = resolve_sources(job, dataset)
    check_resume(job, tc.scaling.use_gpu)  # a refused rerun stops before paying for a Ray start
    init_ray(job, extra_cpus_needed=tc.scaling.num_workers * tc.scaling.cpus_per_worker)
    use_gpu = tc.scaling.use_gpu if tc.scaling.use_gpu is not None else cluster_has_gpus()
    if job.model.dtype == "auto" and not use_gpu:
        log.info("no GPU: training in float32")

    check_resume(job, use_gpu)
    say(f"train: preparing data from {', '.join(s.config.name for s in sources)}"
        if len(sources) > 1 else f"train: preparing data from {len(sources[0].files) or 1} file(s)")
    num_cpus = int(ray.cluster_resources().get("CPU", 1))
    packed, report = prepare_packed_dataset(sources, tc.data, job.model, tc.optim.seed, num_cpus)
    plan = make_plan(job, report.n_packed_rows)
    layout = job.layout
    write_json_atomic(layout.data_report, {**report.to_dict(), "plan": plan})
    say(f"train: {report.n_samples} samples ({report.n_bad} bad, {report.n_overlong_dropped} too long, "
        f"{report.n_truncated} truncated) -> {report.n_packed_rows} rows of {tc.data.max_length} tokens "
        f"({report.packing_efficiency:.0%} full); {plan['steps_per_epoch']} steps/epoch, {plan['total_steps']} steps "
        f"on {tc.scaling.num_workers} {'GPU' if use_gpu else 'CPU'} worker(s)")

    # Ray Train reads this when it starts (or waits for autoscaled) workers.
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", str(tc.scaling.worker_start_timeout_s))
    board = ProgressBoard.create()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job.model_dump(mode="json"), "plan": plan, "progress": board},
        torch_config=TorchConfig(timeout_s=tc.scaling.nccl_timeout_s),
        scaling_config=scaling_config(job, use_gpu),
        validation_config=validation_config(job, use_gpu),
        run_config=RunConfig(
            name="train",
            storage_path=layout.root,
            failure_config=FailureConfig(max_failures=tc.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=tc.checkpoint.num_to_keep, **checkpoint_score_kwargs(job)),
            worker_runtime_env={"env_vars": {
                "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": str(tc.scaling.worker_start_timeout_s)}},
        ),
        datasets={"train": packed},
    )
    with TrainProgress(board, plan["total_steps"]):
        result = trainer.fit()  # returns once every checkpoint's evaluation (train.evaluate) has finished too
    if result.error:
        mismatch = checkpoint_mismatch(result.error)
        if mismatch is not None:  # only the workers could tell (the GPU memory picked the ZeRO stage)
            raise ConfigError(str(mismatch)) from None
        raise result.error
    best = record_best(result, layout)
    if best:
        say(f"train: best checkpoint by pass@1: step {best['step']} ({best['pass@1']:.3f}) -> {best['hf']}")
    # Checkpoint.path drops s3:// and gs://, so name the checkpoint and ask the layout for its path.
    final = layout.checkpoint(checkpoint_of(result.checkpoint.path).step) if result.checkpoint \
        else layout.latest_checkpoint()
    if final is None:
        raise RuntimeError("training finished without a checkpoint")
    model_dir = final.model_dir  # hf/, or the adapter of a LoRA run that does not merge it
    if model_dir is None:
        return final.path
    _log_model_artifact(job, model_dir, dataset_dir=_dataset_dir(job, dataset))
    return model_dir


def _dataset_dir(job: JobConfig, dataset: str | None = None) -> str | None:
    """The sealed instruction-shard directory this run trained on, if it trained on one (for lineage)."""
    data = job.train.data
    paths = data.paths or [s.path for s in data.sources if s.path] or ([dataset] if dataset and not data.sources else [])
    if not paths and not data.sources:
        return job.layout.evolve
    if len(paths) == 1 and check_manifest(paths[0], kind=Kind.INSTRUCTION_SHARDS).complete:
        return paths[0]
    return None


def _log_model_artifact(job: JobConfig, hf_dir: str, dataset_dir: str | None) -> None:
    """W&B lineage: the exported model, made from this run's evolved dataset when it trained on it."""
    from raywiz import tracking

    run = tracking.start_run(job, "train")  # resumes the run rank 0 logged metrics to
    if run is not None:
        tracking.log_checkpoint(run, job, hf_dir, dataset_dir=dataset_dir)
        tracking.finish(run)
