"""The eval stage, top to bottom: for each checkpoint and benchmark,
load tasks -> build prompts -> generate -> post-process -> score in the sandbox -> pass@k -> write.

Outputs, per checkpoint and benchmark (``{run}/eval/{checkpoint}/{benchmark}/``, or beside a plain
model directory: ``{parent}/eval/{model_dir_name}/{benchmark}/``):
  samples.jsonl   task_id, completion, raw (the model's text), prompt
  results.jsonl   each sample with passed, result (+ base_passed, base/plus status for "+" benchmarks)
  summary.json    benchmark, n_tasks, pass@k (+ base_pass@k), per-task pass@k
  manifest.json   written last: a benchmark directory is complete only with it.
A rerun skips complete benchmarks and reuses finished samples.jsonl (same settings fingerprint).

`evaluate_checkpoint` is self-contained (plain arguments, returns a dict), so the train stage's
checkpoint validation (raywiz.train.validation) runs it as a Ray task on each exported checkpoint.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from typing import Any

from raywiz.artifacts import (CheckpointDir, Kind, RunLayout, check_manifest, export_of, join, read_json,
                              write_bytes_atomic, write_manifest)
from raywiz.benchmarks import Task, load_tasks, read_jsonl
from raywiz.eval.config import EvalConfig
from raywiz.eval.generation import generate_texts
from raywiz.benchmarks.postprocess import postprocess
from raywiz.benchmarks.prompts import build_prompt, default_stop, instruction_for
from raywiz.data.template import CHAT_STYLE_TEMPLATES
from raywiz.eval.report import format_table, plot_pass_at_1, summarize, task_rows, write_jsonl, write_outputs
from raywiz.benchmarks.score import read_samples, score_samples
from raywiz.inference import EngineSpec, SamplingParams, checkpoint_info, make_engine
from raywiz.log import get_logger, say
from raywiz.runtime import init_ray

log = get_logger(__name__)


# ----------------------------------------------------------------------------- where things are


def checkpoint_identity(hf_dir: str) -> dict:
    """{"name", "step", "run_dir"} of a model directory (raywiz checkpoint or a plain model)."""
    path = os.path.abspath(hf_dir) if os.path.exists(hf_dir) else hf_dir
    meta_file = os.path.join(path, "raywiz.json")
    meta = read_json(meta_file) if os.path.exists(meta_file) else {}
    ckpt = export_of(path)
    if ckpt is not None:  # a run's own checkpoint export
        return {"name": ckpt.name, "step": meta.get("step"), "run_dir": ckpt.run.root}
    name = os.path.basename(path.rstrip("/")) if os.path.isdir(path) else path.replace("/", "--")
    return {"name": name, "step": meta.get("step"), "run_dir": None}


def output_dir_for(hf_dir: str, cfg: EvalConfig, run_dir: str | None = None) -> str:
    """Where one model's results go: ``eval.output_dir/{name}``, else its run's eval directory."""
    ident = checkpoint_identity(hf_dir)
    if cfg.output_dir:
        return join(cfg.output_dir, ident["name"])
    if ident["run_dir"]:
        return RunLayout(ident["run_dir"]).eval_dir(ident["name"])
    if os.path.isdir(hf_dir):  # a plain model directory: results beside it
        return RunLayout(os.path.dirname(os.path.abspath(hf_dir))).eval_dir(ident["name"])
    if run_dir is None:
        raise ValueError(f"{hf_dir}: not a local directory; set eval.output_dir")
    return RunLayout(run_dir).eval_dir(ident["name"])


def resolve_checkpoints(job, specs: list[str]) -> list[str]:
    layout = job.layout
    if not specs:
        found = [c.model_dir for c in layout.checkpoints(complete=True)]
        return found[-1:] if found else [job.model.name_or_path]
    out: list[str] = []
    for spec in specs:
        if spec in ("latest", "all"):
            found = [c.model_dir for c in layout.checkpoints(complete=True)]
            if not found:
                raise FileNotFoundError(f"eval.checkpoints: '{spec}' but {layout.train} has no complete checkpoint")
            out += found[-1:] if spec == "latest" else found
        else:
            hf = CheckpointDir(spec).hf
            out.append(hf if os.path.isdir(hf) else spec)  # a checkpoint dir means its hf/ export
    return list(dict.fromkeys(out))


# ----------------------------------------------------------------------------- generation


def sampling_params(cfg: EvalConfig) -> SamplingParams:
    g = cfg.generation
    stop = g.stop if g.stop is not None else default_stop(cfg.prompt.style)
    return SamplingParams(n=g.n, temperature=0.0 if g.greedy else g.temperature, top_p=g.top_p,
                          max_tokens=g.max_new_tokens, stop=tuple(stop), seed=g.seed)


def backend_spec(hf_dir: str, cfg: EvalConfig, model_cfg=None) -> EngineSpec:
    g = cfg.generation
    return EngineSpec(
        backend="transformers" if g.backend == "hf" else g.backend,
        model=(g.model or os.path.basename(hf_dir.rstrip("/"))) if g.backend == "openai" else hf_dir,
        tokenizer=getattr(model_cfg, "tokenizer", None), dtype=g.dtype,
        trust_remote_code=bool(getattr(model_cfg, "trust_remote_code", False)), max_batch_size=g.batch_size,
        base_url=g.base_url, api_key_env=g.api_key_env, endpoint=g.endpoint, concurrency=g.concurrency,
        timeout_s=g.request_timeout_s, tensor_parallel_size=g.tensor_parallel_size,
    )


class _LazyGenerator:
    """Builds the backend on first use (loading a model is the slow part), then reuses it."""

    def __init__(self, spec: EngineSpec, cfg: EvalConfig, in_process: bool):
        self.spec, self.cfg, self.in_process = spec, cfg, in_process
        self._generator = None

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[str]]:
        g = self.cfg.generation
        if not self.in_process and g.num_workers > 0 and g.backend != "openai":
            import ray

            from raywiz.eval.generation.ray_pool import generate_with_ray

            gpus = g.gpus_per_worker
            if gpus is None:
                gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
            return generate_with_ray(prompts, self.spec, params, g.num_workers, gpus_per_worker=gpus)
        if self._generator is None:
            self._generator = make_engine(self.spec)
        return generate_texts(self._generator, prompts, params)


def prompts_for(tasks: list[Task], cfg: EvalConfig, tokenizer=None, trained: dict | None = None) -> list[str]:
    if cfg.generation.backend == "openai" and cfg.generation.endpoint == "chat":
        return [instruction_for(t) for t in tasks]  # the server applies its own chat template
    return [build_prompt(t, cfg.prompt.style, cfg.prompt.template, tokenizer, trained) for t in tasks]


def generate_samples(tasks: list[Task], cfg: EvalConfig, generator) -> list[dict]:
    params = sampling_params(cfg)
    tokenizer = None
    # The template the checkpoint was trained with (its raywiz.json), for local models.
    trained = checkpoint_info(generator.spec.model) if cfg.generation.backend != "openai" else {}
    if (cfg.prompt.style == "chat" or trained.get("template") in CHAT_STYLE_TEMPLATES) and cfg.generation.backend != "openai":
        from raywiz.modeling import load_tokenizer

        tokenizer = load_tokenizer(generator.spec.model, generator.spec.tokenizer)  # for its chat template
    prompts = prompts_for(tasks, cfg, tokenizer, trained)
    outputs = generator.generate(prompts, params)
    samples = []
    for task, prompt, texts in zip(tasks, prompts, outputs):
        for raw in texts:
            completion = postprocess(raw, task.benchmark, cfg.postprocess, task.entry_point, params.stop)
            samples.append({"task_id": task.task_id, "completion": completion, "raw": raw, "prompt": prompt})
    return samples


# ----------------------------------------------------------------------------- one checkpoint


def _fingerprint(hf_dir: str, benchmark: str, cfg: EvalConfig) -> str:
    """What decides the samples: the model, the tasks, prompts, decoding and post-processing."""
    weights = sorted(glob.glob(os.path.join(hf_dir, "*.safetensors")) + glob.glob(os.path.join(hf_dir, "*.bin")))
    model_id = [(os.path.basename(w), os.path.getsize(w), int(os.path.getmtime(w))) for w in weights] or hf_dir
    g = cfg.generation.model_dump(exclude={"num_workers", "gpus_per_worker", "concurrency", "batch_size",
                                            "request_timeout_s"})
    key = json.dumps([model_id, benchmark, cfg.data.get(benchmark), cfg.limit, cfg.prompt.model_dump(), g,
                      cfg.postprocess], sort_keys=True, default=str)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def evaluate_checkpoint(hf_dir: str, eval_cfg: EvalConfig, model_cfg: Any = None, out_dir: str | None = None,
                        benchmarks: list[str] | None = None, *, run_dir: str | None = None,
                        in_process: bool = False) -> dict:
    """Generate and score every benchmark for one model; returns
    {"checkpoint", "step", "model", "out_dir", "benchmarks": {name: summary}, "pass@1": {name: value}}.

    `in_process=True` generates in this process (use it inside a Ray task on a GPU worker).
    """
    ident = checkpoint_identity(hf_dir)
    out_dir = out_dir or output_dir_for(hf_dir, eval_cfg, run_dir)
    generator = _LazyGenerator(backend_spec(hf_dir, eval_cfg, model_cfg), eval_cfg, in_process)
    settings = eval_cfg.score_settings()
    summaries: dict[str, dict] = {}
    todo: dict[str, dict] = {}  # benchmark -> tasks, output dir, fingerprint, samples (once known)
    for benchmark in benchmarks or eval_cfg.benchmarks:
        bench_dir = join(out_dir, benchmark)
        fingerprint = _fingerprint(hf_dir, benchmark, eval_cfg)
        done = check_manifest(bench_dir, kind=Kind.EVAL_RESULTS)
        if done.complete and done.manifest["meta"].get("fingerprint") == fingerprint:
            log.info("%s %s: already scored, reusing %s", ident["name"], benchmark, bench_dir)
            summaries[benchmark] = read_json(join(bench_dir, "summary.json"))
            continue
        item = {"tasks": load_tasks(benchmark, eval_cfg.data.get(benchmark))[: eval_cfg.limit],
                "dir": bench_dir, "fingerprint": fingerprint, "samples": None}
        marker = join(bench_dir, "samples.fingerprint")
        if os.path.exists(marker) and open(marker).read().strip() == fingerprint:
            item["samples"] = read_samples(join(bench_dir, "samples.jsonl"))
            log.info("%s %s: reusing %d generated samples", ident["name"], benchmark, len(item["samples"]))
        todo[benchmark] = item

    # One generation pass over every benchmark that needs samples: the model loads once.
    missing = [b for b, item in todo.items() if item["samples"] is None]
    if missing:
        tasks = [t for b in missing for t in todo[b]["tasks"]]
        log.info("%s: generating for %d tasks (%s)", ident["name"], len(tasks), ", ".join(missing))
        samples = generate_samples(tasks, eval_cfg, generator)
        start = 0
        for b in missing:
            count = len(todo[b]["tasks"]) * eval_cfg.generation.n
            todo[b]["samples"] = samples[start:start + count]
            start += count
            write_jsonl(join(todo[b]["dir"], "samples.jsonl"), todo[b]["samples"])
            write_bytes_atomic(join(todo[b]["dir"], "samples.fingerprint"), (todo[b]["fingerprint"] + "\n").encode())

    for benchmark, item in todo.items():
        log.info("%s %s: scoring %d samples", ident["name"], benchmark, len(item["samples"]))
        verdicts = score_samples(benchmark, item["tasks"], item["samples"], settings)
        summary = summarize(benchmark, item["samples"], verdicts, eval_cfg.k, checkpoint=ident["name"],
                            step=ident["step"], model=hf_dir)
        write_outputs(item["dir"], item["samples"], verdicts, summary)
        write_manifest(item["dir"], Kind.EVAL_RESULTS, meta={"fingerprint": item["fingerprint"], "benchmark": benchmark})
        summaries[benchmark] = summary
    summaries = {b: summaries[b] for b in (benchmarks or eval_cfg.benchmarks)}
    return {
        "checkpoint": ident["name"], "step": ident["step"], "model": hf_dir, "out_dir": out_dir,
        "benchmarks": summaries, "pass@1": {b: s.get("pass@1") for b, s in summaries.items()},
    }


# ----------------------------------------------------------------------------- the stage


def _flat(results: list[dict]) -> list[dict]:
    """One summary per (checkpoint, benchmark), without the per-task detail (for tables and W&B)."""
    return [{k: v for k, v in s.items() if k != "per_task"} for r in results for s in r["benchmarks"].values()]


def _log_task_tables(tracking, run, results: list[dict]) -> None:
    """W&B: one per-task pass/fail table per benchmark ("eval/{benchmark}/tasks"), a row per
    (checkpoint, task), read back from each benchmark's results.jsonl (reused results included)."""
    rows: dict[str, list[dict]] = {}
    for r in results:
        for benchmark, summary in r["benchmarks"].items():
            path = join(r["out_dir"], benchmark, "results.jsonl")
            results_rows = [row for _, row in read_jsonl(path)] if os.path.exists(path) else []
            rows.setdefault(benchmark, []).extend(task_rows(results_rows, summary))
    for benchmark, table in rows.items():
        tracking.log_eval_table(run, f"eval/{benchmark}/tasks", table)


def run_eval(job, checkpoints: list[str] | None = None) -> list[dict]:
    """`raywiz eval run`: evaluate the job's checkpoints on its benchmarks; print, plot, log."""
    from raywiz import tracking

    cfg: EvalConfig = job.require("eval")
    targets = resolve_checkpoints(job, checkpoints if checkpoints is not None else cfg.checkpoints)
    if cfg.generation.num_workers > 0 and cfg.generation.backend != "openai":
        init_ray(job, extra_cpus_needed=cfg.generation.num_workers)
    run = tracking.start_run(job, "eval", config={"checkpoints": targets})
    results = []
    try:
        for hf_dir in targets:
            results.append(evaluate_checkpoint(hf_dir, cfg, job.model, run_dir=job.run_dir))
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
