"""MBPP (Google), the 500 test tasks (ids 11-510): `text`, `code`, `test_list`, `test_setup_code`.

Accepts the test split alone (WizardCoder's mbpp.test.jsonl) or Google's full mbpp.jsonl (974
tasks; the test ids are kept). The program run for a completion is
``completion + test_setup_code + test_list`` (the setup of task 367 uses the solution's class).
"""

from __future__ import annotations

import re

from raywiz.benchmarks import Task, read_jsonl, require_fields
from raywiz.benchmarks.sources import locate

FIELDS = ("task_id", "text", "code", "test_list")
TEST_IDS = range(11, 511)


def entry_point_of(test_list: list[str]) -> str | None:
    match = re.search(r"assert\s+(?:not\s+)?\(?\s*(?:set\()?\s*([A-Za-z_]\w*)\s*\(", test_list[0]) if test_list else None
    return match.group(1) if match else None


def load(data_path: str | None = None) -> list[Task]:
    path = locate("mbpp", data_path)
    tasks = []
    for lineno, r in read_jsonl(path):
        require_fields(r, FIELDS, f"{path}:{lineno}")
        if int(r["task_id"]) not in TEST_IDS:
            continue
        tasks.append(Task(
            benchmark="mbpp", task_id=str(r["task_id"]), prompt=r["text"], solution=r["code"],
            entry_point=entry_point_of(r["test_list"]), test="\n".join(r["test_list"]),
            test_list=list(r["test_list"]), test_setup_code=r.get("test_setup_code", "") or "",
        ))
    if not tasks:
        raise ValueError(f"{path}: no MBPP test tasks (task_id 11-510) in this file")
    return tasks
