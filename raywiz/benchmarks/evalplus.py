"""HumanEval+ and MBPP+ (evalplus format): `prompt`, `entry_point`, `canonical_solution`,
`base_input`, `plus_input`, `atol`, `contract` (+ `assertion` for MBPP+; `Mbpp/N` ids).

MBPP+ inputs are stored as JSON, which has no tuples, sets or complex numbers; evalplus turns them
back per task (`mbpp_deserialize_inputs`). The table below is evalplus's (Apache-2.0), unchanged,
so raywiz calls solutions with exactly the arguments evalplus does.
"""

from __future__ import annotations

import json

from raywiz.benchmarks import Task, read_jsonl, require_fields
from raywiz.benchmarks.sources import DataNotFound, locate

FIELDS = ("task_id", "prompt", "entry_point", "canonical_solution", "base_input", "plus_input", "atol")


def _to_tuple_deep(x):
    return tuple(_to_tuple_deep(i) for i in x) if isinstance(x, list) else x


def mbpp_deserialize_inputs(task_id: str, inputs: list) -> list:
    n = int(task_id.split("/")[-1])
    if n in (2, 116, 132, 143, 222, 261, 273, 394, 399, 421, 424, 429, 470, 560, 579, 596, 616, 630, 726, 740,
             744, 809):
        return [[tuple(lst) for lst in inp] for inp in inputs]
    if n in (63, 64, 70, 94, 120, 237, 272, 299, 400, 409, 417, 438, 473, 614, 780):
        return [[[tuple(lst) for lst in lst_lst] for lst_lst in inp] for inp in inputs]
    if n in (75, 413, 444, 753):
        return [[[tuple(lst) for lst in inp[0]]] + [inp[1]] for inp in inputs]
    if n in (106, 750):
        return [[inp[0]] + [tuple(inp[1])] for inp in inputs]
    if n == 115:
        return [[[set(item) if isinstance(item, list) and len(item) else {} for item in inp[0]]] for inp in inputs]
    if n == 124:
        return [(float(inp[0]), complex(inp[1])) for inp in inputs]
    if n in (250, 405, 446, 617, 720, 763, 808):
        return [[tuple(inp[0])] + [inp[1]] for inp in inputs]
    if n in (259, 401, 445):
        modified = [[[tuple(lst) for lst in lst_lst] for lst_lst in inp] for inp in inputs]
        return [[tuple(lst) for lst in inp] for inp in modified]
    if n == 278:
        modified = [[[tuple(item) if isinstance(item, list) else item for item in inp[0]]] for inp in inputs]
        return [[tuple(lst) for lst in inp] for inp in modified]
    if n == 307:
        return [[tuple(inp[0])] + [inp[1], inp[2]] for inp in inputs]
    if n == 722:
        return [[{key: tuple(value) for key, value in inp[0].items()}] + inp[1:] for inp in inputs]
    if n == 252:
        return [[complex(inp[0])] for inp in inputs]
    if n in (580, 615, 791):
        return [_to_tuple_deep(inp) for inp in inputs]
    return inputs


def _load(benchmark: str, data_path: str | None) -> list[Task]:
    path = locate(benchmark, data_path)
    tasks = []
    for lineno, r in read_jsonl(path):
        require_fields(r, FIELDS, f"{path}:{lineno}")
        base, plus = r["base_input"], r["plus_input"]
        if benchmark == "mbpp+":
            base = mbpp_deserialize_inputs(r["task_id"], base)
            plus = mbpp_deserialize_inputs(r["task_id"], plus)
        tasks.append(Task(
            benchmark=benchmark, task_id=r["task_id"], prompt=r["prompt"], solution=r["canonical_solution"],
            entry_point=r["entry_point"], base_input=base, plus_input=plus, atol=float(r["atol"] or 0),
            contract=r.get("contract", ""), assertion=r.get("assertion", ""), test=r.get("test"),
        ))
    return tasks


def load_humaneval_plus(data_path: str | None = None) -> list[Task]:
    return _load("humaneval+", data_path)


def load_mbpp_plus(data_path: str | None = None) -> list[Task]:
    tasks = _load("mbpp+", data_path)
    try:
        prompts_path = locate("mbpp+prompts")
    except DataNotFound:
        prompts_path = None  # WizardCoder's instructions are optional: prompts.py builds one instead
    if prompts_path:
        with open(prompts_path, encoding="utf-8") as f:
            instructions = json.load(f)
        for task in tasks:
            task.instruction = instructions.get(task.task_id)
    return tasks
