"""`raywiz evolve|train|eval|serve|run|submit|status|logs|stop` — thin: each subcommand calls one stage.

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
    "raywiz.evolve.cli",
    "raywiz.train.cli",
    "raywiz.eval.cli",
    "raywiz.serve.cli",
    "raywiz.pipeline",
    "raywiz.jobs",
]


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raywiz", description="WizardCoder's recipe on Ray: evolve -> train -> eval -> serve."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # a stage not built yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from raywiz.config import ConfigError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except ConfigError as e:
        print(f"raywiz: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("raywiz: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
