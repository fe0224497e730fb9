"""The eval stage, top to bottom: for each checkpoint, evaluate it on the job's benchmarks
(raywiz.benchmarks.evaluate: generate -> post-process -> score in the sandbox -> pass@k -> write),
then print the table, plot pass@1 per checkpoint and log to W&B.

Scoring runs in this process (score.score_samples), or on the Ray cluster's sandbox workers
(cluster_scoring.ClusterScorer: every node's CPUs) when the job's cluster has several nodes or
``eval.sandbox.cluster`` / ``workers_per_node`` / ``--cluster`` ask for it; the verdicts are the same.

Where results go and what is in them is the artifacts' (``artifacts.model_results_dir``, ``EvalDir``):
``{run}/eval/{checkpoint}/{benchmark}/`` with the samples, a verdict per sample, the summary, and the
manifest last. A rerun skips complete benchmarks and reuses finished samples (same fingerprint).
"""

from __future__ import annotations

import os
from contextlib import nullcontext

from raywiz.artifacts import CheckpointDir, EvalDir, join
from raywiz.benchmarks import read_jsonl
from raywiz.benchmarks.evaluate import evaluate_model
from raywiz.eval.config import EvalConfig
from raywiz.eval.report import format_table, plot_pass_at_1, task_rows
from raywiz.log import say
from raywiz.runtime import init_ray


# ----------------------------------------------------------------------------- which checkpoints


def resolve_checkpoints(job, specs: list[str]) -> list[str]:
    """The model directories to evaluate. No spec or 'latest': the run's most trained complete checkpoint
    (rl's final when rl ran, else train's); 'all': train's then rl's; a path: that model (a checkpoint
    directory means its hf/ export). Without any checkpoint in the run, the job's base model."""
    layout = job.layout
    # train's by step, then rl's (rl continues from train's model): the last is the most trained
    found = [c.model_dir for c in layout.all_checkpoints(complete=True)]
    if not specs:
        return found[-1:] if found else [job.model.name_or_path]
    out: list[str] = []
    for spec in specs:
        if spec in ("latest", "all"):
            if not found:
                raise FileNotFoundError(f"eval.checkpoints: '{spec}' but neither {layout.train} nor {layout.rl} "
                                        "has a complete checkpoint")
            out += found[-1:] if spec == "latest" else found
        else:
            hf = CheckpointDir(spec).hf
            out.append(hf if os.path.isdir(hf) else spec)  # a checkpoint dir means its hf/ export
    return list(dict.fromkeys(out))


# ----------------------------------------------------------------------------- where samples are scored


def scores_on_cluster(job, cfg: EvalConfig) -> bool:
    """Whether to score on the Ray cluster's sandbox workers: when eval.sandbox.cluster says so, when
    workers_per_node is set, or (unset) when the job's Ray cluster has more than one node."""
    if cfg.sandbox.cluster is not None:
        return cfg.sandbox.cluster
    if cfg.sandbox.workers_per_node is not None:
        return True
    import ray

    if not ray.is_initialized():
        if not (job.cluster.address or os.environ.get("RAY_ADDRESS")):
            return False  # one machine, no cluster named: no Ray started just to score
        init_ray(job)
    return sum(1 for node in ray.nodes() if node.get("Alive")) > 1


class ClusterScoring:
    """The cluster scorer for one model: its sandbox workers start at the first benchmark scored and stop
    with `close()`, so the CPUs they hold are free again when the next model generates."""

    def __init__(self, job, cfg: EvalConfig):
        self.job, self.cfg = job, cfg
        self._scorer = None

    def score(self, benchmark, tasks, samples, **kwargs):
        if self._scorer is None:
            from raywiz.benchmarks.cluster_scoring import ClusterScorer

            init_ray(self.job)
            self._scorer = ClusterScorer(self.cfg.score_settings(), workers=self.cfg.sandbox.workers,
                                         workers_per_node=self.cfg.sandbox.workers_per_node)
            say(f"eval: scoring on {len(set(self._scorer.node_of.values()))} nodes by "
                f"{len(self._scorer.actors)} sandbox workers")
        return self._scorer.score(benchmark, tasks, samples, **kwargs)

    def close(self) -> None:
        if self._scorer is not None:
            self._scorer.close()
            self._scorer = None

    def __enter__(self) -> "ClusterScoring":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----------------------------------------------------------------------------- the stage


def _flat(results: list[dict]) -> list[dict]:
    """One summary per (checkpoint, benchmark), without the per-task detail (for tables and W&B)."""
    return [{k: v for k, v in s.items() if k != "per_task"} for r in results for s in r["benchmarks"].values()]


def _log_task_tables(tracking, run, results: list[dict]) -> None:
    """W&B: one per-task pass/fail table per benchmark ("eval/{benchmark}/tasks"), a row per
    (checkpoint, task), read back from each benchmark's results file (reused results included)."""
    rows: dict[str, list[dict]] = {}
    for r in results:
        for benchmark, summary in r["benchmarks"].items():
            path = EvalDir(join(r["out_dir"], benchmark)).results
            results_rows = [row for _, row in read_jsonl(path)] if os.path.exists(path) else []
            rows.setdefault(benchmark, []).extend(task_rows(results_rows, summary))
    for benchmark, table in rows.items():
        tracking.log_eval_table(run, f"eval/{benchmark}/tasks", table)


def run_eval(job, checkpoints: list[str] | None = None) -> list[dict]:
    """`raywiz eval run`: evaluate the job's checkpoints on its benchmarks; print, plot, log."""
    from raywiz import tracking

    cfg: EvalConfig = job.require("eval")
    targets = resolve_checkpoints(job, checkpoints if checkpoints is not None else cfg.checkpoints)
    if cfg.generation.on_ray:
        init_ray(job, extra_cpus_needed=cfg.generation.num_workers)
    run = tracking.start_run(job, "eval", config={"checkpoints": targets})
    on_cluster = scores_on_cluster(job, cfg)
    results = []
    try:
        for hf_dir in targets:
            with ClusterScoring(job, cfg) if on_cluster else nullcontext() as scorer:  # None: in this process
                results.append(evaluate_model(hf_dir, cfg, job.model, run_dir=job.run_dir, scorer=scorer))
        flat = _flat(results)
        print(format_table(flat, cfg.k))
        plot_path = None
        if cfg.plot and len(results) > 1:
            try:
                plot_path = plot_pass_at_1(flat, join(os.path.dirname(results[0]["out_dir"]), "pass_at_1.png"))
                say(f"eval: pass@1 per checkpoint: {plot_path}")
            except ImportError:
                say("eval: no plot (matplotlib is not installed; pip install 'raywiz[eval]')")
        if run is not None:
            eval_root = os.path.dirname(results[0]["out_dir"])
            raywiz_checkpoints = [r["model"] for r in results if os.path.isdir(r["model"])]
            tracking.log_eval_results(run, job, eval_root, flat, checkpoints=raywiz_checkpoints)
            _log_task_tables(tracking, run, results)
            if plot_path:
                tracking.log_image(run, "eval/pass_at_1_per_checkpoint", plot_path)
    finally:
        tracking.finish(run)
    return results
