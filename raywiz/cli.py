"""`raywiz evolve|train|rl|eval|serve|run|submit|status|logs|stop` — thin: each subcommand calls one stage.

Each stage registers its own subcommand in ``raywiz/<stage>/cli.py`` (a ``register(subparsers)``
function), so the stage that owns the behaviour also owns its flags. Heavy imports (torch, ray)
happen inside the handlers, so ``raywiz --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules that contribute subcommands, in the order the pipeline runs.
COMMAND_MODULES = [
    "raywiz.datasets",
    "raywiz.evolve.cli",
    "raywiz.train.cli",
    "raywiz.rl.cli",
    "raywiz.eval.cli",
    "raywiz.serve.cli",
    "raywiz.pipeline",
    "raywiz.jobs",
]


def run_training_stage(args, stage: str, entry_module: str, entry_func: str) -> int:
    """`raywiz train|rl JOB.yaml`: the job validated before any Ray work, the stage run, and the final
    model directory printed as the last line of standard output (scripts read it)."""
    import importlib

    import ray

    from raywiz.config import load_job

    job = load_job(args.job, args.overrides)
    job.require(stage)
    path = getattr(importlib.import_module(entry_module), entry_func)(job)
    ray.shutdown()  # flushes worker logs first, so the path really is the last line
    print(path, flush=True)
    return 0


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments every job-driven subcommand shares: the YAML file and --set overrides."""
    parser.add_argument("job", help="job config (YAML)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field by dotted path, e.g. --set train.optim.lr=1e-5 (repeatable)",
    )
    # Also accepted after the subcommand; SUPPRESS keeps the top-level flag's value when absent here.
    parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show Ray's, torch's and the workers' own logs too (or RAYWIZ_LOG_LEVEL=debug)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raywiz", description="WizardCoder's recipe on Ray: evolve -> train (-> rl) -> eval -> serve."
    )
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show Ray's, torch's and the workers' own logs too (or RAYWIZ_LOG_LEVEL=debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from raywiz.config import ConfigError
    from raywiz.log import say, setup_console

    parser = build_parser()
    args = parser.parse_args(argv)
    setup_console(args.verbose)
    try:
        return int(args.handler(args) or 0)
    except ConfigError as e:
        say(str(e))
        return 2
    except KeyboardInterrupt:
        say("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
