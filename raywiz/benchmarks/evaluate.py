"""The evaluation core: evaluate a model on benchmarks (generate, post-process, score in the sandbox,
pass@k, write), for the eval stage (raywiz.eval.recipe) and train's checkpoint validation alike.

    result = evaluate_model(model_dir, job.eval, job.model)   # {"benchmarks": {name: summary}, "pass@1": ...}

Settings come as the job's ``eval:`` section (raywiz.eval.config.EvalConfig, passed in: this library
imports no stage). Outputs, per model and benchmark, are an ``artifacts.EvalDir`` inside
``artifacts.model_results_dir``: samples, a verdict per sample, the summary, the manifest last. A
rerun skips complete benchmarks and reuses finished samples (same settings fingerprint).
``evaluate_model`` is self-contained (plain arguments, returns a dict), so a Ray task runs it on a GPU
worker (``in_process=True``).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections import Counter
from dataclasses import replace
from typing import Any, Iterable

from raywiz.artifacts import (EvalDir, ModelInfo, is_remote, join, model_identity, model_results_dir,
                              write_bytes_atomic, write_json_atomic)
from raywiz.benchmarks import INFILL_BENCHMARKS, Task, load_tasks
from raywiz.benchmarks.passk import pass_at_k_table
from raywiz.benchmarks.postprocess import postprocess
from raywiz.benchmarks.prompts import build_prompt, default_stop, instruction_for
from raywiz.benchmarks.score import Verdict, correct_by_task, read_samples, score_samples
from raywiz.config_base import ConfigError
from raywiz.data import fim
from raywiz.data.template import CHAT_STYLE_TEMPLATES
from raywiz.inference import EngineSpec, SamplingParams, make_engine
from raywiz.inference.config import RUNTIME_FIELDS
from raywiz.log import get_logger

log = get_logger(__name__)
PLUS_BENCHMARKS = ("humaneval+", "mbpp+")


# ----------------------------------------------------------------------------- generation


def sampling_params(cfg) -> SamplingParams:
    g = cfg.generation
    stop = g.stop if g.stop is not None else default_stop(cfg.prompt.style)
    return SamplingParams(n=g.n, temperature=0.0 if g.greedy else g.temperature, top_p=g.top_p,
                          max_tokens=g.max_tokens, stop=tuple(stop), seed=g.seed)


class Generator:
    """Texts for prompts from the engine `spec` names: on Ray engine actors when the section asks for
    them (unless `in_process`), else one engine in this process, built on first use and kept."""

    def __init__(self, spec: EngineSpec, cfg, in_process: bool):
        self.spec, self.cfg, self.in_process = spec, cfg, in_process
        self._engine = None

    def generate(self, prompts: list[str], params: SamplingParams,
                 suffixes: list[str] | None = None) -> list[list[str]]:
        """n texts per prompt; `suffixes` (a server's completions API fills in the middle) only for openai."""
        g = self.cfg.generation
        if suffixes is not None:
            completions = self._local_engine().generate(prompts, params, suffixes=suffixes)
        elif not self.in_process and g.on_ray:
            import ray

            from raywiz.inference.ray_pool import generate_on_ray

            completions = generate_on_ray(prompts, self.spec, params, g.num_workers,
                                          num_gpus=g.gpus_per_worker(ray.cluster_resources().get("GPU", 0)),
                                          num_cpus=g.num_cpus_per_worker)
        else:
            completions = self._local_engine().generate(prompts, params)
        return [[c.text for c in row] for row in completions]

    def _local_engine(self):
        if self._engine is None:
            self._engine = make_engine(self.spec)
        return self._engine


def prompts_for(tasks: list[Task], cfg, tokenizer=None, trained: dict | None = None) -> list[str]:
    if cfg.generation.server_chats:
        return [instruction_for(t) for t in tasks]  # the server applies its own chat template
    return [build_prompt(t, cfg.prompt.style, cfg.prompt.template, tokenizer, trained) for t in tasks]


def generate_samples(tasks: list[Task], cfg, generator: Generator) -> list[dict]:
    """n samples per task, in task order: infilling tasks from FIM prompts, the others from the job's prompts."""
    infill = [t for t in tasks if t.benchmark in INFILL_BENCHMARKS]
    other = [t for t in tasks if t.benchmark not in INFILL_BENCHMARKS]
    by_task: dict[int, list[dict]] = {}  # id(task): benchmarks share task ids (humaneval, humaneval+)
    for group, make in ((infill, infill_samples), (other, prompted_samples)):  # infill first: refusals early
        if group:
            by_task.update(zip(map(id, group), make(group, cfg, generator)))
    return [s for t in tasks for s in by_task[id(t)]]


def prompted_samples(tasks: list[Task], cfg, generator: Generator) -> list[list[dict]]:
    """Each task's samples from the job's prompt style, post-processed as configured."""
    params = sampling_params(cfg)
    tokenizer = None
    # The template the checkpoint was trained with (its ModelInfo), for local models.
    trained = ModelInfo.read(generator.spec.model).to_dict() if cfg.generation.local else {}
    if (cfg.prompt.style == "chat" or trained.get("template") in CHAT_STYLE_TEMPLATES) and cfg.generation.local:
        from raywiz.modeling import load_tokenizer

        tokenizer = load_tokenizer(generator.spec.model, generator.spec.tokenizer)  # for its chat template
    prompts = prompts_for(tasks, cfg, tokenizer, trained)
    outputs = generator.generate(prompts, params)
    return [[{"task_id": task.task_id, "raw": raw, "prompt": prompt,
              "completion": postprocess(raw, task.benchmark, cfg.postprocess, task.entry_point, params.stop)}
             for raw in texts] for task, prompt, texts in zip(tasks, prompts, outputs)]


def infill_samples(tasks: list[Task], cfg, generator: Generator) -> list[list[dict]]:
    """Each infilling task's middles. A local model continues its own FIM prompt (PSM: prefix, suffix,
    then the middle); a server gets the prefix as `prompt` and the code after the gap as `suffix` (raywiz
    serve builds the FIM prompt). The completion is the text generated, cut only at EOS and the job's
    explicit `generation.stop` (never the completion style's stop words: a middle may hold "\ndef")."""
    g = cfg.generation
    params = replace(sampling_params(cfg), stop=tuple(g.stop or ()))
    benchmarks = sorted({t.benchmark for t in tasks})
    if g.server_chats:
        raise ConfigError(f"eval.generation.endpoint: {', '.join(benchmarks)} fill in the middle through the "
                          "completions API (its `suffix`); set endpoint: completions")
    if g.local:
        tokens = model_fim_tokens(benchmarks[0], generator.spec.model, generator.spec.tokenizer)
        prompts = [tokens.prompt(t.prompt, t.suffix) for t in tasks]
        outputs = generator.generate(prompts, params)
        extra: list[dict] = [{} for _ in tasks]
    else:
        prompts = [t.prompt for t in tasks]
        outputs = generator.generate(prompts, params, suffixes=[t.suffix for t in tasks])
        extra = [{"suffix": t.suffix} for t in tasks]
    return [[{"task_id": t.task_id, "completion": raw, "raw": raw, "prompt": prompt, **more} for raw in texts]
            for t, prompt, texts, more in zip(tasks, prompts, outputs, extra)]


def model_fim_tokens(benchmark: str, model: str, tokenizer: str | None = None) -> fim.FimTokens:
    """The FIM tokens eval builds `benchmark`'s prompts with: those the model was trained with (its
    raywiz.json), else a known set in its tokenizer (as serve's `suffix` finds them); refused, naming the
    benchmark and the model, when it has none."""
    from raywiz.modeling import load_tokenizer

    tok = load_tokenizer(model, tokenizer)
    tokens = fim.model_tokens(ModelInfo.read(model).fim, tok)
    if tokens is None:
        known = ", ".join(f"{t.prefix}{t.suffix}{t.middle}" for t in fim.TOKEN_SETS)
        raise fim.FimUnavailable(f"eval.benchmarks: {benchmark} needs a model trained to fill in the middle, and "
                                 f"{model} has no FIM tokens (known sets: {known}); evaluate a FIM model "
                                 "(e.g. StarCoder) or drop the benchmark")
    return tokens


# ----------------------------------------------------------------------------- one model


def fingerprint(hf_dir: str, benchmark: str, cfg) -> str:
    """What decides the samples: the model, the tasks, prompts, decoding and post-processing."""
    weights = sorted(glob.glob(os.path.join(hf_dir, "*.safetensors")) + glob.glob(os.path.join(hf_dir, "*.bin")))
    model_id = [(os.path.basename(w), os.path.getsize(w), int(os.path.getmtime(w))) for w in weights] or hf_dir
    g = cfg.generation.model_dump(exclude=set(RUNTIME_FIELDS))
    key = json.dumps([model_id, benchmark, cfg.data.get(benchmark), cfg.limit, cfg.prompt.model_dump(), g,
                      cfg.postprocess], sort_keys=True, default=str)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def evaluate_model(hf_dir: str, eval_cfg, model_cfg: Any = None, out_dir: str | None = None,
                   benchmarks: list[str] | None = None, *, run_dir: str | None = None, in_process: bool = False,
                   scorer=None) -> dict:
    """Generate and score every benchmark for one model; returns
    {"checkpoint", "step", "model", "out_dir", "benchmarks": {name: summary}, "pass@1": {name: value}}.

    `in_process=True` generates in this process (use it inside a Ray task on a GPU worker). `scorer`: an
    object with `score(benchmark, tasks, samples, done=, on_verdict=)` (cluster_scoring.ClusterScorer);
    None scores in this process (score_samples). Either way verdicts are saved as they come and an
    interrupted scoring resumes (PartialVerdicts).
    """
    ident = model_identity(hf_dir)
    out_dir = out_dir or model_results_dir(hf_dir, eval_cfg.output_dir, run_dir)
    spec = eval_cfg.generation.engine_spec(hf_dir, getattr(model_cfg, "tokenizer", None),
                                           bool(getattr(model_cfg, "trust_remote_code", False)))
    generator = Generator(spec, eval_cfg, in_process)
    settings = eval_cfg.score_settings()
    summaries: dict[str, dict] = {}
    todo: dict[str, dict] = {}  # benchmark -> tasks, output dir, fingerprint, samples (once known)
    for benchmark in benchmarks or eval_cfg.benchmarks:
        bench_dir = EvalDir(join(out_dir, benchmark))
        settings_id = fingerprint(hf_dir, benchmark, eval_cfg)
        if bench_dir.is_complete(settings_id) and (summary := bench_dir.read_summary()) is not None:
            log.info("%s %s: already scored, reusing %s", ident["name"], benchmark, bench_dir.path)
            summaries[benchmark] = summary
            continue
        item = {"tasks": load_tasks(benchmark, eval_cfg.data.get(benchmark))[: eval_cfg.limit],
                "dir": bench_dir, "fingerprint": settings_id, "samples": None}
        if bench_dir.samples_made_with(settings_id):
            item["samples"] = read_samples(bench_dir.samples)
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
            write_jsonl(todo[b]["dir"].samples, todo[b]["samples"])
            todo[b]["dir"].write_samples_fingerprint(todo[b]["fingerprint"])

    for benchmark, item in todo.items():
        log.info("%s %s: scoring %d samples", ident["name"], benchmark, len(item["samples"]))
        with PartialVerdicts(item["dir"].results_partial, item["samples"]) as partial:
            resume = {"done": partial.done, "on_verdict": partial.save}
            verdicts = (scorer.score(benchmark, item["tasks"], item["samples"], **resume) if scorer is not None
                        else score_samples(benchmark, item["tasks"], item["samples"], settings, **resume))
        summary = summarize(benchmark, item["samples"], verdicts, eval_cfg.k, checkpoint=ident["name"],
                            step=ident["step"], model=hf_dir)
        write_results(item["dir"], item["samples"], verdicts, summary)
        partial.remove()
        item["dir"].seal(item["fingerprint"], benchmark)
        summaries[benchmark] = summary
    summaries = {b: summaries[b] for b in (benchmarks or eval_cfg.benchmarks)}
    return {
        "checkpoint": ident["name"], "step": ident["step"], "model": hf_dir, "out_dir": out_dir,
        "benchmarks": summaries, "pass@1": {b: s.get("pass@1") for b, s in summaries.items()},
    }


# ----------------------------------------------------------------------------- summaries


def summarize(benchmark: str, samples: list[dict], verdicts: list[Verdict], ks: Iterable[int],
              **extra) -> dict:
    """The summary: `benchmark`, `n_tasks`, `n_samples`, `pass@k` (for HumanEval+/MBPP+ base + extra
    tests, evalplus's "+" line) and `base_pass@k` (base tests alone), plus per-task pass@k."""
    ks = list(ks)
    table = pass_at_k_table(correct_by_task(samples, verdicts), ks)
    summary = {"benchmark": benchmark, "n_tasks": len(table["per_task"]), "n_samples": len(samples),
               **table["overall"], **extra}
    if benchmark in PLUS_BENCHMARKS:
        base = pass_at_k_table(correct_by_task(samples, verdicts, base=True), ks)
        summary.update({f"base_{k}": v for k, v in base["overall"].items()})
        for tid, values in base["per_task"].items():
            table["per_task"][tid].update({f"base_{k}": v for k, v in values.items()})
    summary["outcomes"] = dict(Counter(_outcome(v) for v in verdicts))
    summary["per_task"] = table["per_task"]
    return summary


def _outcome(v: Verdict) -> str:
    if v.passed:
        return "passed"
    if "timed out" in v.result or "timeout" in v.result:
        return "timed out"
    return "failed"


def result_rows(samples: list[dict], verdicts: list[Verdict]) -> list[dict]:
    """Per-sample results (human-eval's results shape: the sample plus `passed`, `result`)."""
    rows = []
    for s, v in zip(samples, verdicts):
        row = {k: val for k, val in s.items() if not k.startswith("_")}
        row.update(v.to_dict())
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- result files


def sample_key(sample: dict) -> str:
    """What a saved verdict was computed on: a sample changed since is scored again."""
    text = f"{sample['task_id']}\x00{sample.get('completion')}\x00{sample.get('solution')}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class PartialVerdicts:
    """``results.partial.jsonl`` (EvalDir.results_partial): verdicts appended as samples finish, so an
    interrupted scoring resumes with the samples not scored yet. Used as the scorers' ``done`` and
    ``on_verdict`` (score_samples and the cluster scorer alike); removed once results.jsonl is whole.

        with PartialVerdicts(eval_dir.results_partial, samples) as partial:
            verdicts = score_samples(..., done=partial.done, on_verdict=partial.save)
    """

    def __init__(self, path: str, samples: list[dict]):
        self.path, self.samples = path, samples
        self.local = not is_remote(path)  # object stores cannot append: no resume there
        self.done = self._read()  # index -> Verdict of the earlier run, for the samples still the same
        self._file = None

    def _read(self) -> dict[int, Verdict]:
        done: dict[int, Verdict] = {}
        if not self.local or not os.path.exists(self.path):
            return done
        fields = set(Verdict.__dataclass_fields__)
        with open(self.path, "rb") as f:
            for raw in f:
                try:
                    row = json.loads(raw)
                    i = row["_index"]
                    if 0 <= i < len(self.samples) and row["_key"] == sample_key(self.samples[i]):
                        done[i] = Verdict(**{k: v for k, v in row.items() if k in fields})
                except (ValueError, KeyError, TypeError, RecursionError):
                    continue  # a line cut short when the run was killed
        return done

    def __enter__(self) -> "PartialVerdicts":
        self._file = open(self.path, "a", encoding="utf-8") if self.local else None
        return self

    def save(self, index: int, verdict: Verdict) -> None:
        if self._file is not None:
            row = {"_index": index, "_key": sample_key(self.samples[index]), **verdict.to_dict()}
            self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
            self._file.flush()

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.close()

    def remove(self) -> None:
        if self.local and os.path.exists(self.path):
            os.remove(self.path)


def write_jsonl(path: str, rows: Iterable[dict]) -> None:
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    write_bytes_atomic(path, data.encode("utf-8"))


def write_results(eval_dir: EvalDir, samples: list[dict], verdicts: list[Verdict], summary: dict) -> None:
    write_jsonl(eval_dir.results, result_rows(samples, verdicts))
    write_json_atomic(eval_dir.summary, summary)
