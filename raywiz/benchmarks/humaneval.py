"""HumanEval (OpenAI, 164 tasks): `task_id`, `prompt`, `entry_point`, `canonical_solution`, `test`."""

from __future__ import annotations

from raywiz.benchmarks import Task, read_jsonl, require_fields
from raywiz.benchmarks.sources import locate

FIELDS = ("task_id", "prompt", "entry_point", "canonical_solution", "test")


def load(data_path: str | None = None) -> list[Task]:
    path = locate("humaneval", data_path)
    tasks = []
    for lineno, r in read_jsonl(path):
        require_fields(r, FIELDS, f"{path}:{lineno}")
        tasks.append(Task(
            benchmark="humaneval", task_id=r["task_id"], prompt=r["prompt"], solution=r["canonical_solution"],
            entry_point=r["entry_point"], test=r["test"],
        ))
    return tasks
