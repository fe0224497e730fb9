"""HumanEval infilling (openai/human-eval-infilling, MIT; Bavarian et al. 2022, "Efficient Training of
Language Models to Fill in the Middle"): HumanEval's programs with a span of the canonical solution cut
out. A task's `prompt` is the code before the span, `suffix` the code after it, `canonical_solution`
the span (the middle); a completion is the middle, scored as prompt + completion + suffix by HumanEval's
check (raywiz.benchmarks.score).

  humaneval-infill-single  1,033 tasks: one line removed
  humaneval-infill-multi   5,815 tasks: a block of lines removed
  humaneval-infill-span      164 tasks: a random character span ("light": one per problem)

`raywiz eval run` generates the middles (raywiz.benchmarks.evaluate.infill_samples): each task's PSM
prompt in the model's own FIM tokens (raywiz.data.fim), or, for a server, the prefix with `suffix`.
"""

from __future__ import annotations

from raywiz.benchmarks import Task, read_jsonl, require_fields
from raywiz.benchmarks.sources import locate

FIELDS = ("task_id", "prompt", "suffix", "canonical_solution", "test", "entry_point")


def load(benchmark: str, data_path: str | None = None) -> list[Task]:
    path = locate(benchmark, data_path)
    tasks = []
    for lineno, r in read_jsonl(path):
        require_fields(r, FIELDS, f"{path}:{lineno}")
        tasks.append(Task(
            benchmark=benchmark, task_id=r["task_id"], prompt=r["prompt"], suffix=r["suffix"],
            solution=r["canonical_solution"], entry_point=r["entry_point"], test=r["test"],
        ))
    return tasks

