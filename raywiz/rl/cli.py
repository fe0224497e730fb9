"""`raywiz rl JOB.yaml [--set k=v ...]`: the last line of standard output is the final policy's model directory."""

from __future__ import annotations


def register(subparsers) -> None:
    from raywiz.cli import add_job_arguments

    p = subparsers.add_parser("rl", help="reinforcement learning from execution rewards (GRPO on Ray Train), "
                              "from train's checkpoint or any model")
    add_job_arguments(p)
    p.set_defaults(handler=_rl)


def _rl(args) -> int:
    from raywiz.cli import run_training_stage

    return run_training_stage(args, "rl", "raywiz.rl.launch", "run_rl")
