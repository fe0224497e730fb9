"""The RL recipe every Ray Train worker runs: setup, then one GRPO step (raywiz.rl.loop) per rollout
batch, with save_checkpoint every N steps, at each evaluation and at the end, then cleanup. Read
`RLRecipe` top to bottom.

It trains on raywiz.training's engine (DeepSpeed or FSDP2, LoRA/QLoRA) exactly as `train` does, and
writes the same checkpoints into ``{run}/rl/`` (artifacts.TrainingDir): the engine's state, each
rank's RNG, and the loop's state (step, the prompt sampler's state), so a resumed run takes the same
prompts, samples and updates as one that never stopped.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import time
from dataclasses import replace

import ray.train
import torch

from raywiz.artifacts import CheckpointDir, ModelInfo, is_remote, write_json_atomic
from raywiz.benchmarks import Task
from raywiz.benchmarks.score import ScoreSettings
from raywiz.config import JobConfig
from raywiz.log import get_logger
from raywiz.modeling import load_tokenizer
from raywiz.rl.config import RLConfig
from raywiz.rl.loop import GRPOLoop
from raywiz.inference import EngineSpec
from raywiz.rl.reward_service import ClusterRewardScorer, RewardScorer, ThreadRewardScorer
from raywiz.rl.rewards import CodeOf, code_of_response, load_training_tasks
from raywiz.rl.rollout import ActorRollouts, EngineRollouts, GenerateRollouts, Rollouts
from raywiz.rl.toy import toy_program, toy_tasks
from raywiz.training import checkpoint as ckpt
from raywiz.training.engine import create_engine
from raywiz.training.metrics import JsonlLogger, MetricLogger, ProgressLogger, WandbLogger

log = get_logger(__name__)

# What {run}/rl/metrics.jsonl holds per step (and W&B under rl/).
RL_RECORD_KEYS = ("step", "total_steps", "reward_mean", "reward_std", "pass_rate", "response_length", "loss", "kl",
                  "clip_fraction", "entropy", "eval_reward", "generate_s", "score_s", "update_s", "sync_s", "step_s",
                  "elapsed_s", "time")


# ------------------------------------------------------------------ the parts the loop is made of
def training_tasks(cfg: RLConfig) -> tuple[list[Task], list[Task], CodeOf]:
    """(tasks to train on, held-out tasks to evaluate on, how a response becomes a program)."""
    if cfg.tasks.toy:
        tasks, code_of = toy_tasks(cfg.tasks.toy + cfg.eval_tasks), toy_program
    else:
        tasks, code_of = load_training_tasks(cfg.tasks, cfg.allow_eval_benchmarks), code_of_response
    if cfg.eval_tasks >= len(tasks):
        raise ValueError(f"rl.eval_tasks ({cfg.eval_tasks}) leaves none of the {len(tasks)} tasks to train on")
    cut = len(tasks) - cfg.eval_tasks
    return tasks[:cut], tasks[cut:], code_of


def with_template(tasks: list[Task], template: str | None, tokenizer, custom: str | None) -> list[Task]:
    """Instruction prompts as the checkpoint was trained to see them (its raywiz.json), as eval does."""
    from raywiz.inference import apply_template

    if template is None:
        return tasks
    return [replace(t, prompt=apply_template(t.prompt, template, tokenizer, custom)) for t in tasks]


def stop_sequences(job: JobConfig) -> tuple[str, ...]:
    """Rollouts stop where the policy's evaluation stops: rl.sampling.stop, else eval.generation.stop."""
    if job.rl.sampling.stop is not None:
        return tuple(job.rl.sampling.stop)
    return tuple(job.eval.generation.stop or ()) if job.eval is not None else ()


def make_rollouts(model, tokenizer, cfg: RLConfig, max_tokens: int, start_model: str | None = None,
                  use_gpu: bool = False, stop: tuple[str, ...] = ()) -> Rollouts:
    """The rollout implementation `rl.rollout` names (raywiz.rl.rollout's contract)."""
    s = cfg.sampling
    max_tokens = s.max_tokens or max_tokens
    if cfg.rollout == "generate":
        if stop:
            raise ValueError("rl.rollout: generate takes no stop sequences (rl.sampling.stop / eval.generation.stop); "
                             "use rl.rollout: engine")
        return GenerateRollouts(model, tokenizer, max_tokens, s.temperature, s.top_p)
    if cfg.rollout == "actors":
        if cfg.peft.enabled:  # the actors hold full weights: an adapter's state dict does not load into them
            raise ValueError("rl.rollout: actors needs full fine-tuning (rl.peft is on); use rl.rollout: engine")
        spec = EngineSpec(model=start_model or "", dtype="auto")
        return ActorRollouts(spec, cfg.rollout_engines, max_tokens, s.temperature, s.top_p,
                             num_gpus=1 if use_gpu else 0, stop=stop)
    return EngineRollouts(model, tokenizer, max_tokens, s.temperature, s.top_p, stop=stop)


def make_scorer(cfg: RLConfig, code_of: CodeOf, workers: int | None = None, world: int = 1) -> RewardScorer:
    """The reward scorer (raywiz.rl.reward_service's contract): the cluster's sandbox workers (each Ray
    Train worker starts its share of the free CPUs), or this worker's threads when rl.reward_workers is 0
    or the cluster has no CPU left for them."""
    import ray

    workers = cfg.reward_workers if cfg.reward_workers is not None else workers
    free = int(ray.available_resources().get("CPU", 0)) // world if ray.is_initialized() else 0
    if workers == 0 or (workers is None and free < 1):
        return ThreadRewardScorer(cfg, ScoreSettings(), code_of=code_of)
    return ClusterRewardScorer(cfg, ScoreSettings(), workers=workers or free, code_of=code_of)


def describe(record: dict) -> str:
    """The progress line's detail for one step."""
    text = (f"reward {record['reward_mean']:.3f} ± {record['reward_std']:.3f} | pass {record['pass_rate']:.0%} | "
            f"len {record['response_length']:.0f} | clip {record['clip_fraction']:.2f} | "
            f"{record['step_s']:.1f}s/step")
    return text + (f" | eval {record['eval_reward']:.3f}" if record.get("eval_reward") is not None else "")


def _all_gather(t: torch.Tensor) -> torch.Tensor:
    """Every rank's tensor, stacked (the metrics' reduction across workers)."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return t.unsqueeze(0)
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return torch.stack(out)


# ------------------------------------------------------------------ the recipe
class RLRecipe:
    def __init__(self, job: JobConfig, start_model: str, max_tokens: int, progress=None):
        self.job, self.cfg = job, job.rl
        self.start_model, self.max_tokens = start_model, max_tokens
        self.dir = job.layout.training("rl")
        self.progress = progress  # the driver's progress display (raywiz.training.progress.ProgressBoard)

    # -- setup: engine, loop, resume, loggers
    def setup(self) -> None:
        cfg = self.cfg
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        if not is_remote(self.dir.path):  # for operators (and the fault-injection test) to find a worker
            write_json_atomic(self.dir.worker_pid_file(self.rank), {"pid": os.getpid(), "time": time.time()})

        self.tokenizer = load_tokenizer(self.start_model, self.job.model.tokenizer, self.job.model.trust_remote_code)
        model_cfg = self.job.model.model_copy(update={"name_or_path": self.start_model})
        self.eng = create_engine(model_cfg, cfg.engine_settings(), self.device.type == "cuda", self.device,
                                 n_tokens=len(self.tokenizer))
        self.model = self.eng.model
        # The checkpoint's own prompt template (raywiz.json); the toy's prompts are code, used as they are.
        self.info = ModelInfo.read(self.start_model)
        train, held_out, code_of = training_tasks(cfg)
        template = None if cfg.tasks.toy else self.info.template
        train, self.eval_tasks = (with_template(ts, template, self.tokenizer, self.info.prompt) for ts in (train, held_out))
        self.loop = GRPOLoop(self.model, self.tokenizer, train, cfg, seed=cfg.seed, updater=self.eng.driver,
                             rollouts=make_rollouts(self.model, self.tokenizer, cfg, self.max_tokens, self.start_model,
                                                   self.device.type == "cuda", stop_sequences(self.job)),
                             scorer=make_scorer(cfg, code_of, world=self.world), rank=self.rank, world=self.world,
                             all_gather=_all_gather)
        self.eval_reward = None  # the last evaluation's, carried into every later checkpoint's metrics

        state = ckpt.load_reported_state(self.eng, self.rank, adapter_only=cfg.peft.enabled)
        if state is not None:  # after a lost worker, or when the same job name runs again
            self.loop.load_state_dict(state)
            self.eval_reward = state.get("eval_reward")
            self._event(f"resumed from step {self.loop.step_index}")
        self.loggers: list[MetricLogger] = self._loggers()

    @property
    def finished(self) -> bool:
        return self.loop.step_index >= self.cfg.steps

    def _event(self, text: str) -> None:
        log.info(text)
        if self.rank == 0 and self.progress is not None:  # the driver shows it
            self.progress.post({"event": text, "step": self.loop.step_index})

    def _loggers(self) -> list[MetricLogger]:
        if self.rank != 0 or self.finished:
            return [MetricLogger()]
        from raywiz.tracking import start_run

        loggers: list[MetricLogger] = []
        if self.progress is not None:
            loggers.append(ProgressLogger(self.progress))
        if not is_remote(self.dir.path):
            loggers.append(JsonlLogger(self.dir.metrics, resume_step=self.loop.step_index, keys=RL_RECORD_KEYS))
        run = start_run(self.job, "rl", config={"start_model": self.start_model, "workers": self.world})
        if run is not None:
            loggers.append(WandbLogger(run, prefix="rl"))
        return loggers

    # -- the loop
    def train(self) -> None:
        cfg, started = self.cfg, time.perf_counter()
        while not self.finished:
            record = self.loop.step()
            step = self.loop.step_index
            evaluate = bool(cfg.eval_every) and (step % cfg.eval_every == 0 or self.finished)
            if evaluate:
                self.eval_reward = self.loop.evaluate(self.eval_tasks, seed=cfg.seed)
            record.update(total_steps=cfg.steps, eval_reward=self.eval_reward if evaluate else None,
                          elapsed_s=time.perf_counter() - started, time=time.time())
            for lg in self.loggers:
                lg.log(record)
            if evaluate or step % cfg.checkpoint.every_n_steps == 0 or self.finished:
                self.save_checkpoint(final=self.finished)

    # -- checkpoints
    def save_checkpoint(self, final: bool) -> None:
        """Collective: engine shards + RNG + the loop's state (+ the HF export), reported to Ray Train."""
        cfg, step = self.cfg, self.loop.step_index
        export = cfg.checkpoint.export_hf == "every" or (final and cfg.checkpoint.export_hf == "last")
        name = self.dir.checkpoint(step).name
        layout = self.job.layout
        staging = ckpt.staging_dir(layout, step, self.rank, stage="rl")
        upload = functools.partial(ckpt.move_into_storage, layout=layout, stage="rl") if staging else None
        with contextlib.nullcontext(staging) if staging else tempfile.TemporaryDirectory(prefix="raywiz-rl-") as local:
            state = {**self.loop.state_dict(), "total_steps": cfg.steps, "eval_reward": self.eval_reward}
            ckpt.save_training_state(self.eng, CheckpointDir(local), self.rank, state, adapter_only=cfg.peft.enabled)
            if export:
                sd = self.eng.full_state_dict()
                if self.rank == 0:
                    info = replace(self.info, step=step, run=self.job.name, final=final,
                                   base_model=self.info.base_model or self.start_model)
                    ckpt.export_model(self.model, sd, self.tokenizer, CheckpointDir(local), info, cfg.peft,
                                      cfg.checkpoint.merge_adapter)
                del sd
            ckpt.seal_checkpoint(local, self.rank, self.world, meta={"step": step, "run": self.job.name, "final": final})
            # NaN before the first evaluation: Ray's keep-best order ranks it below every real score.
            metrics = {"step": step, "final": final,
                       "eval_reward": self.eval_reward if self.eval_reward is not None else float("nan")}
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(local),
                             checkpoint_dir_name=name, checkpoint_upload_fn=upload)
        log.info(f"checkpoint {name} saved")

    def cleanup(self) -> None:
        for lg in self.loggers:
            lg.close()
        self.loop.scorer.close()
        self.loop.rollouts.close()


def rl_loop_per_worker(loop_config: dict) -> None:
    """Ray Train's entry point: build the recipe and run it."""
    recipe = RLRecipe(JobConfig.model_validate(loop_config["job"]), loop_config["start_model"],
                      loop_config["max_tokens"], progress=loop_config.get("progress"))
    recipe.setup()
    try:
        if recipe.finished:
            log.info(f"this run already finished {recipe.loop.step_index} steps; nothing to train")
            return
        recipe.train()
    finally:
        recipe.cleanup()

