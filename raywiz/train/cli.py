"""`raywiz train JOB.yaml [--set k=v ...]`: the last line of standard output is the exported model's path."""

from __future__ import annotations


def register(subparsers) -> None:
    from raywiz.cli import add_job_arguments

    import argparse

    p = subparsers.add_parser("train", help="fine-tune on instruction shards (Ray Train + DeepSpeed ZeRO-3, or FSDP2)",
                              epilog=_templates_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    add_job_arguments(p)
    p.set_defaults(handler=_train)


def _templates_help() -> str:
    from raywiz.data.template import CHAT_TEMPLATES

    lines = ["prompt templates (train.data.template.name):",
             "  wizardcoder   WizardCoder's Alpaca prompt (the default)",
             "  alpaca        Alpaca's, with an '### Input:' section when a row has input",
             "  custom        train.data.template.prompt, with {instruction} and {input}",
             "  model, chat   the tokenizer's own chat template",
             *(f"  {t.name:<13} {t.description}; on any tokenizer" for t in CHAT_TEMPLATES.values()),
             "chat templates render multi-turn sharegpt/messages sources, loss on assistant turns only"]
    return "\n".join(lines)


def _train(args) -> int:
    from raywiz.cli import run_training_stage

    return run_training_stage(args, "train", "raywiz.train.launch", "run_train")
