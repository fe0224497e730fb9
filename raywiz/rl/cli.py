"""`raywiz rl JOB.yaml [--set k=v ...]`: the last line of standard output is the final policy's model directory."""

from __future__ import annotations


def register(subparsers) -> None:
    from raywiz.cli import add_job_arguments

    p = subparsers.add_parser("rl", help="reinforcement learning from execution rewards (GRPO on Ray Train), "
                              "from train's checkpoint or any model")
    add_job_arguments(p)
    p.set_defaults(handler=_rl)


def _rl(args) -> int:
    from raywiz.config import load_job

    job = load_job(args.job, args.overrides)  # validated before any Ray work
    job.require("rl")
    from raywiz.rl.launch import run_rl

    import ray

    path = run_rl(job)
    ray.shutdown()  # flushes worker logs first, so the path really is the last line
    print(path, flush=True)
    return 0
