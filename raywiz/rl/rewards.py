"""Training tasks and their execution rewards, computed only by the sandbox's trusted checker.

A training task is a raywiz.benchmarks.Task scored by one of raywiz's rules: ``humaneval`` (a
``check(candidate)`` function + ``entry_point``) or ``mbpp`` (a list of assert lines; a row's ``check`` + ``entry_point`` is one such "line"). Rows with
evalplus-style ``inputs``/``outputs`` become assert lines ``assert f(*inputs[i]) == outputs[i]``.

Every verdict comes from raywiz.benchmarks.score.check_completion: the tests run in the evaluator and
only plain values come back from the sample's sandboxed process, so nothing the sample prints,
exits with or patches makes a verdict. ``fraction`` is computed the same way, one verdict per test:
each MBPP assert (each evalplus input) and each top-level assert of a HumanEval ``check`` body is
scored as a task of its own, in a fresh sandboxed process, and the fraction is the share of those
verdicts that passed. The sample never reports a count.
"""

from __future__ import annotations

import ast
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Callable

from raywiz.benchmarks import BENCHMARKS, Task, canonical_name, load_tasks as load_benchmark_tasks, read_jsonl
from raywiz.benchmarks.mbpp import entry_point_of
from raywiz.benchmarks.postprocess import extract_code
from raywiz.benchmarks.score import ScoreSettings, check_completion
from raywiz.rl.config import RLConfig, RLTasks

EVAL_BENCHMARKS = frozenset(BENCHMARKS)  # everything raywiz eval reports on


# ----------------------------------------------------------------------------- tasks


def _read_rows(path: str) -> list[tuple[str, dict]]:
    """(where, record) per row of a .jsonl(.gz) or .parquet file, or of every such file of a directory
    (evolve's output is a directory of shards); `where` names file and line/row."""
    if not os.path.exists(path):
        raise ValueError(f"{path}: no such task file")
    if os.path.isdir(path):
        from raywiz.artifacts import expand_paths

        files = [f for f in expand_paths([path]) if f.endswith((".parquet", ".jsonl", ".jsonl.gz"))]
        if not files:
            raise ValueError(f"{path}: a directory with no .parquet or .jsonl files")
        return [row for f in files for row in _read_rows(f)]
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        return [(f"{path}: row {i + 1}", row) for i, row in enumerate(pq.read_table(path).to_pylist())]
    return [(f"{path}:{lineno}", record) for lineno, record in read_jsonl(path)]


def _string_list(value, where: str, field: str) -> list[str]:
    if isinstance(value, str):  # a JSON-encoded list, as Parquet exports of HF datasets often have
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(t, str) and t.strip() for t in value):
        raise ValueError(f"{where}: field {field} must be a non-empty list of test strings")
    return list(value)


def task_from_record(record: dict, where: str, prompt_field: str = "prompt") -> Task:
    """A training task from a row: its prompt and tests (tests | test_list | check + entry_point |
    inputs + outputs + entry_point)."""
    prompt = record.get(prompt_field)
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"{where}: missing or empty field {prompt_field}")
    task_id = str(record.get("task_id", where))
    entry_point = record.get("entry_point")
    for field in ("tests", "test_list"):
        if record.get(field) is not None:
            asserts = _string_list(record[field], where, field)
            # The trusted checker hands the tests only the function under test: name it (MBPP's rule).
            entry_point = entry_point or entry_point_of(asserts)
            return Task("mbpp", task_id, prompt, "", entry_point=entry_point, test_list=asserts,
                        test_setup_code=record.get("test_setup_code") or "")
    if record.get("check") is not None:
        if not isinstance(entry_point, str) or not entry_point.isidentifier():
            raise ValueError(f"{where}: a `check` needs the field entry_point (the function under test)")
        try:
            ast.parse(record["check"])
        except SyntaxError as e:
            raise ValueError(f"{where}: field check does not parse: {e.msg} (line {e.lineno})") from None
        # Scored by the MBPP rule with the check as its one test: the HumanEval rule would also run the
        # prompt as trusted code, and a training prompt is prose.
        return Task("mbpp", task_id, prompt, "", entry_point=entry_point, metadata={"check": record["check"]},
                    test_list=[_call_check(record["check"], entry_point)])
    if record.get("inputs") is not None:
        inputs, outputs = record["inputs"], record.get("outputs")
        if not isinstance(entry_point, str) or not entry_point.isidentifier():
            raise ValueError(f"{where}: inputs/outputs need the field entry_point")
        if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs) or not inputs:
            raise ValueError(f"{where}: fields inputs and outputs must be non-empty lists of equal length")
        asserts = [f"assert {entry_point}(*{list(args)!r}) == {out!r}" for args, out in zip(inputs, outputs)]
        return Task("mbpp", task_id, prompt, "", entry_point=entry_point, test_list=asserts)
    raise ValueError(f"{where}: no tests (give tests, test_list, check + entry_point, or inputs + outputs)")


def load_training_tasks(source: RLTasks, allow_eval_benchmarks: bool = False) -> list[Task]:
    if source.benchmark:
        name = canonical_name(source.benchmark)
        if name in EVAL_BENCHMARKS and not allow_eval_benchmarks:
            raise ValueError(f"rl.tasks.benchmark: {name} is an eval benchmark; training on it contaminates "
                             "its results (set rl.allow_eval_benchmarks: true to do it anyway)")
        tasks = load_benchmark_tasks(name)
    elif source.evolve_output:
        # Only rows evolve's verify step kept with tests that an answer passed (seeds and unverified rows
        # carry no tests to reward against).
        rows = [(w, r) for w, r in _read_rows(source.evolve_output) if r.get("verified") is True]
        if not rows:
            raise ValueError(f"rl.tasks.evolve_output: {source.evolve_output} has no verified rows (evolve with "
                             "evolve.verify.enabled: true writes them)")
        tasks = [task_from_record(r, w, prompt_field="instruction") for w, r in rows]
    else:
        tasks = [task_from_record(r, w) for w, r in _read_rows(source.path)]
    if not tasks:
        raise ValueError("rl.tasks: the source has no tasks")
    return tasks[: source.limit] if source.limit else tasks


# ----------------------------------------------------------------------------- one verdict per test


def _check_body_asserts(check: str) -> list[str]:
    """A HumanEval `check` split into one `check` per top-level assert of its body (the other
    statements, e.g. helper definitions, stay in each); [check] when it has fewer than two asserts."""
    module = ast.parse(check)
    fn = next((n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None)
    if fn is None:
        return [check]
    asserts = [i for i, s in enumerate(fn.body) if isinstance(s, ast.Assert)]
    if len(asserts) < 2:
        return [check]
    variants = []
    for keep in asserts:
        body = [s for i, s in enumerate(fn.body) if i == keep or i not in asserts]
        variant = ast.Module(body=[*(n for n in module.body if n is not fn),
                                   ast.FunctionDef(**{**fn.__dict__, "body": body})], type_ignores=[])
        variants.append(ast.unparse(ast.fix_missing_locations(variant)))
    return variants


def _call_check(check: str, entry_point: str) -> str:
    return f"{check}\ncheck({entry_point})"


def per_test_tasks(task: Task) -> list[Task]:
    """The task as one task per test, each scored on its own by the trusted checker."""
    if task.benchmark == "mbpp" and "check" in task.metadata:  # a training task's `check`
        return [replace(task, task_id=f"{task.task_id}#{i}", test_list=[_call_check(c, task.entry_point)])
                for i, c in enumerate(_check_body_asserts(task.metadata["check"]))]
    if task.benchmark == "mbpp" and len(task.test_list) > 1:
        return [replace(task, task_id=f"{task.task_id}#{i}", test_list=[t]) for i, t in enumerate(task.test_list)]
    if task.benchmark == "humaneval" and task.test:
        return [replace(task, task_id=f"{task.task_id}#{i}", test=c)
                for i, c in enumerate(_check_body_asserts(task.test))]
    return [task]  # evalplus / DS-1000 benchmark tasks: one verdict for the whole task


# ----------------------------------------------------------------------------- rewards


@dataclass
class Reward:
    value: float  # what the policy is trained on: score minus penalties
    score: float  # binary or fraction, from the trusted checker's verdicts
    passed: bool  # every test passed
    has_code_block: bool
    truncated: bool


def _has_code_block(response: str) -> bool:
    return re.search(r"```[^\n]*\n.*?```", response, flags=re.DOTALL) is not None


def code_of_response(task: Task, response: str) -> str:
    """The program a response stands for: its fenced code block, else the longest code that parses."""
    return extract_code(response)


CodeOf = Callable[[Task, str], str]


def reward_units(task: Task, cfg: RLConfig) -> list[Task]:
    """What the trusted checker scores for one response: the task (binary), or one task per test (fraction)."""
    return per_test_tasks(task) if cfg.reward == "fraction" else [task]


def reward_of(verdicts: list[bool], response: str, cfg: RLConfig, finish_reason: str | None = None) -> Reward:
    """A response's reward from its units' verdicts (reward_units order), then the format penalties."""
    passed = all(verdicts)
    score = float(passed) if cfg.reward == "binary" else sum(verdicts) / len(verdicts)
    block = _has_code_block(response)
    truncated = finish_reason == "length"
    value = score - (0 if block else cfg.no_code_block_penalty) - (cfg.truncated_penalty if truncated else 0)
    return Reward(value, score, passed, block, truncated)


def compute_reward(task: Task, response: str, cfg: RLConfig, finish_reason: str | None = None,
                   settings: ScoreSettings | None = None, pool: ThreadPoolExecutor | None = None,
                   code_of: CodeOf = code_of_response) -> Reward:
    """The reward of one response: its program (`code_of`) scored by the trusted checker, then the
    configured format penalties."""
    settings = settings or ScoreSettings()
    code = code_of(task, response)

    def verdict(unit: Task) -> bool:
        return check_completion(unit.benchmark, unit, solution=code, settings=settings).passed

    units = reward_units(task, cfg)
    return reward_of(list(pool.map(verdict, units)) if pool else [verdict(u) for u in units], response, cfg,
                     finish_reason)


def score_responses(items: list[tuple[Task, str, str | None]], cfg: RLConfig,
                    settings: ScoreSettings | None = None, workers: int | None = None,
                    code_of: CodeOf = code_of_response) -> list[Reward]:
    """Rewards of a batch of (task, response, finish_reason), the sandboxed checks on `workers` threads
    (each thread waits on its sample's process)."""
    settings = settings or ScoreSettings()
    workers = workers or settings.workers
    with ThreadPoolExecutor(max_workers=workers) as inner, ThreadPoolExecutor(max_workers=workers) as outer:
        return list(outer.map(lambda it: compute_reward(it[0], it[1], cfg, it[2], settings, inner, code_of),
                                      items))
