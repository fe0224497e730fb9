"""`raywiz serve JOB.yaml [--checkpoint PATH|RUN]`: serve a run's checkpoints over HTTP."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from raywiz.cli import add_job_arguments

    parser = subparsers.add_parser(
        "serve",
        help="serve checkpoints: OpenAI-compatible API + evaluation page, hot-loading new checkpoints",
        description="Start a Ray Serve app for the job's run (following its newest checkpoint) or for "
        "--checkpoint. Run it again with another --checkpoint to swap models in the running app.",
    )
    add_job_arguments(parser)
    parser.add_argument(
        "--checkpoint",
        default=None,
        metavar="PATH|RUN",
        help="an HF model dir, a checkpoint_* dir, a run dir, or a run name under `storage` "
        "(default: serve.checkpoint, else the job's own run)",
    )
    parser.add_argument("--port", type=int, default=None, help="override serve.port (0: a free port)")
    parser.add_argument("--detach", action="store_true", help="return once the app is running (with --set "
                        "cluster.address pointing at a running cluster: leave it serving there)")
    parser.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    from raywiz.config import load_job

    overrides = list(args.overrides)
    if args.port is not None:
        overrides.append(f"serve.port={args.port}")
    job = load_job(args.job, overrides)
    from raywiz.serve.app import run_serve

    url = run_serve(job, checkpoint=args.checkpoint, blocking=not args.detach)
    if args.detach:
        print(url)
    return 0
