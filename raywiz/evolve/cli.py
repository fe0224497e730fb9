"""`raywiz evolve JOB.yaml [--set k=v]` and `raywiz evolve decontam DATASET [options]`."""

from __future__ import annotations

import argparse
import json
import os

from raywiz.log import get_logger, say

log = get_logger(__name__)

USAGE = """raywiz evolve JOB.yaml [--set KEY=VALUE ...]
       raywiz evolve decontam DATASET [DATASET ...] [--benchmarks humaneval,mbpp,ds1000]
                              [--data-path NAME=FILE] [--ngram 10] [--threshold 0.5] [--embedding-model M]
                              [--exec [--all-tasks]] [--report FILE] [--clean-output FILE]"""


def register(subparsers) -> None:
    from raywiz.cli import add_job_arguments

    parser = subparsers.add_parser(
        "evolve", usage=USAGE, help="Code Evol-Instruct: seeds -> evolved instruction shards (or: decontam DATASET)",
        description="Evolve seed instructions with an LLM into Parquet instruction shards ({run_dir}/evolve), or "
        "check any dataset against HumanEval/MBPP/DS-1000 with `raywiz evolve decontam DATASET`.",
    )
    add_job_arguments(parser)
    parser.add_argument("datasets", nargs="*", help=argparse.SUPPRESS)  # after `decontam`
    group = parser.add_argument_group("decontam options")
    group.add_argument("--benchmarks", default="humaneval,mbpp,ds1000", help="comma-separated benchmark names")
    group.add_argument("--data-path", action="append", default=[], metavar="NAME=FILE",
                       help="local data file of a benchmark (repeatable)")
    group.add_argument("--format", default="auto", choices=["auto", "parquet", "jsonl", "json"])
    group.add_argument("--ngram", type=int, default=10)
    group.add_argument("--threshold", type=float, default=0.5)
    group.add_argument("--min-tokens", type=int, default=8)
    group.add_argument("--embedding-model", default=None)
    group.add_argument("--embedding-threshold", type=float, default=0.95)
    group.add_argument("--strict", action="store_true", help="fail when a benchmark's data can't be loaded")
    group.add_argument("--exec", action="store_true", help="also run each answer that defines a function against "
                       "the tests of the HumanEval(+)/MBPP(+) tasks with its name or argument count, in the sandbox "
                       "(on the Ray cluster when RAY_ADDRESS is set); one that passes is contamination")
    group.add_argument("--all-tasks", action="store_true", help="--exec: run each function against every task")
    group.add_argument("--report", default=None, help="write the full report (JSON) here")
    group.add_argument("--clean-output", default=None, help="write the rows that pass as JSONL here")
    parser.set_defaults(handler=_handle)


def _handle(args) -> int:
    if args.job == "decontam" and not os.path.isfile(args.job):
        return _decontam(args)
    if args.datasets:
        say(f"evolve: unexpected arguments {args.datasets}\nusage: {USAGE}")
        return 2
    from raywiz.config import load_job
    from raywiz.evolve.recipe import run_evolve

    job = load_job(args.job, args.overrides)
    out = run_evolve(job)
    print(out)
    return 0


def _decontam(args) -> int:
    from raywiz.config import ConfigError
    from raywiz.evolve.config import DecontamConfig
    from raywiz.evolve.decontam import Decontaminator, decontaminate_file

    if not args.datasets:
        raise ConfigError("raywiz evolve decontam: name a DATASET (JSON, JSONL or Parquet files, globs, directories)")
    data_paths = {}
    for item in args.data_path:
        name, sep, path = item.partition("=")
        if not sep:
            raise ConfigError(f"--data-path {item!r}: expected NAME=FILE, e.g. humaneval=HumanEval.jsonl.gz")
        data_paths[name] = path
    try:
        cfg = DecontamConfig(
            benchmarks=[b.strip() for b in args.benchmarks.split(",") if b.strip()], data_paths=data_paths,
            on_missing_benchmark="error" if args.strict else "warn", ngram=args.ngram, threshold=args.threshold,
            min_tokens=args.min_tokens, embedding_model=args.embedding_model,
            embedding_threshold=args.embedding_threshold, exec=args.exec,
            exec_match="all" if args.all_tasks else "signature",
        )
    except ValueError as e:
        raise ConfigError(f"raywiz evolve decontam: {e}") from None
    if args.all_tasks and not args.exec:
        raise ConfigError("raywiz evolve decontam: --all-tasks goes with --exec")
    if args.exec and os.environ.get("RAY_ADDRESS"):
        from raywiz.benchmarks.cluster_scoring import connect

        connect(os.environ["RAY_ADDRESS"])  # the answers then run on the cluster's sandbox workers
    decontaminator = Decontaminator.from_config(cfg)
    try:
        report = decontaminate_file(args.datasets, decontaminator, args.format, args.clean_output)
    except ValueError as e:  # a bad row: its file and line, no traceback
        raise ConfigError(str(e)) from None
    if args.report:
        from raywiz.artifacts import write_json_atomic

        write_json_atomic(args.report, report)
    summary = {k: v for k, v in report.items() if k != "flagged"}
    print(json.dumps(summary, indent=2))
    for name, why in report["benchmarks_skipped"].items():
        log.warning("evolve decontam: skipped %s: %s", name, why)
    return 1 if report["contaminated_rows"] else 0
