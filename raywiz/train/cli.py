"""`raywiz train JOB.yaml [--set k=v ...]`: the last line of standard output is the exported model's path."""

from __future__ import annotations


def register(subparsers) -> None:
    from raywiz.cli import add_job_arguments

    p = subparsers.add_parser("train", help="fine-tune on instruction shards (Ray Train + DeepSpeed ZeRO-3, or FSDP2)")
    add_job_arguments(p)
    p.set_defaults(handler=_train)


def _train(args) -> int:
    from raywiz.config import load_job

    job = load_job(args.job, args.overrides)  # validated before any Ray work
    job.require("train")
    from raywiz.train.launch import run_train

    import ray

    path = run_train(job)
    ray.shutdown()  # flushes worker logs first, so the path really is the last line
    print(path, flush=True)
    return 0
