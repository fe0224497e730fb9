"""Decontamination by execution: a training answer that passes a benchmark task's tests is contamination.

An n-gram check misses an answer that solves a HumanEval or MBPP task in other words (renamed
function, no docstring, other variable names). This check runs it: every function an answer defines
(top level, in its longest Python block: raywiz.benchmarks.postprocess.extract_code) is scored
against the tests of each HumanEval(+)/MBPP(+) task it could be an answer to, by the benchmarks'
own scorer, in the sandbox (hostile answers cannot forge a pass):

  match "name"       tasks whose entry point has the function's name;
  match "signature"  (default) those, and tasks whose entry point takes as many positional
                     arguments (a renamed MBPP solution is still found);
  match "all"        every task (`--all-tasks`).

A function whose name differs from the task's entry point is aliased to it (`entry = name`), and the
imports of the task's prompt (HumanEval's `from typing import List`) come first, so an answer that
uses them without importing them still runs. DS-1000 problems are not functions: it is not run.

The answer is the first string among a row's columns `output`, `response`, `completion`, `content`
(else the last assistant message of a `messages` list). Scoring runs on the Ray cluster's sandbox
workers (raywiz.benchmarks.cluster_scoring) when Ray is initialized, else in this process.
Cost: one sandboxed execution per (function, matched task); `executions` in the report counts them.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

from raywiz.benchmarks import Task
from raywiz.evolve.contamination import Contamination
from raywiz.log import get_logger

log = get_logger(__name__)

EXECUTABLE = ("humaneval", "humaneval+", "mbpp", "mbpp+")
ANSWER_COLUMNS = ("output", "response", "completion", "content")


def answer_text(record: dict) -> str | None:
    """A dataset row's answer (see the module docstring for the columns looked at)."""
    for column in ANSWER_COLUMNS:
        if isinstance(record.get(column), str):
            return record[column]
    messages = record.get("messages")
    if isinstance(messages, list):
        for m in reversed(messages):
            if isinstance(m, dict) and m.get("role") == "assistant" and isinstance(m.get("content"), str):
                return m["content"]
    return None


@dataclass(frozen=True)
class Signature:
    name: str
    min_args: int  # positional parameters without a default
    max_args: int | None  # None: takes *args

    def accepts(self, other: "Signature") -> bool:
        """Could a call that fits `other` also fit this one (positional argument counts overlap)?"""
        lo, hi = max(self.min_args, other.min_args), min(self.max_args if self.max_args is not None else 1 << 30,
                                                         other.max_args if other.max_args is not None else 1 << 30)
        return lo <= hi


def _signature(fn: ast.FunctionDef) -> Signature:
    positional = len(fn.args.posonlyargs) + len(fn.args.args)
    return Signature(fn.name, positional - len(fn.args.defaults), None if fn.args.vararg else positional)


def _parse(code: str) -> ast.Module | None:
    try:
        return ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def defined_functions(answer: str) -> tuple[str, list[Signature]]:
    """The answer's code and the signatures of the functions it defines at top level."""
    from raywiz.benchmarks.postprocess import extract_code

    code = extract_code(answer)
    tree = _parse(code)
    if tree is None:
        return code, []
    return code, [_signature(n) for n in tree.body if isinstance(n, ast.FunctionDef)]


def task_signature(task: Task) -> Signature | None:
    """The task's entry point as its reference (or HumanEval's prompt) defines it."""
    for source in (task.prompt + task.solution, task.solution, task.prompt):
        tree = _parse(source)
        for node in tree.body if tree else ():
            if isinstance(node, ast.FunctionDef) and node.name == task.entry_point:
                return _signature(node)
    return None


def prompt_imports(task: Task) -> str:
    """The top-level imports of a HumanEval-style prompt (an answer may use `List` without importing it)."""
    tree = _parse(task.prompt)
    if tree is None:
        return ""
    return "".join(ast.unparse(n) + "\n" for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)))


def candidate_program(task: Task, code: str, function: str) -> str:
    """The answer as a whole-program sample of `task`: its function under the task's entry point name."""
    alias = f"\n\n{task.entry_point} = {function}\n" if function != task.entry_point else ""
    return prompt_imports(task) + code + alias


@dataclass
class _TaskIndex:
    benchmark: str
    tasks: list[Task]
    signatures: dict[str, Signature]  # task id -> entry point signature

    def matching(self, fn: Signature, match: str) -> list[Task]:
        if match == "all":
            return [t for t in self.tasks if t.entry_point]
        return [t for t in self.tasks if t.entry_point == fn.name or (
            match == "signature" and t.task_id in self.signatures and self.signatures[t.task_id].accepts(fn))]


class ExecDecontaminator:
    """Runs answers against benchmark tests; built once per run (the tasks are loaded once)."""

    def __init__(self, tasks_by_benchmark: dict[str, list[Task]], match: str = "signature", settings=None,
                 skipped: dict[str, str] | None = None):
        from raywiz.benchmarks.score import ScoreSettings

        if match not in ("name", "signature", "all"):
            raise ValueError(f"exec match {match!r}: expected name, signature or all")
        self.match = match
        self.settings = settings or ScoreSettings()
        self.indexes = [_TaskIndex(b, tasks, {t.task_id: s for t in tasks if (s := task_signature(t))})
                        for b, tasks in tasks_by_benchmark.items()]
        self.skipped = dict(skipped or {})
        self.stats = {"answers": 0, "answers_with_functions": 0, "executions": 0, "answers_passed": 0}

    @classmethod
    def from_config(cls, cfg) -> "ExecDecontaminator":
        """From a DecontamConfig: its executable benchmarks, its data paths, its exec_match."""
        from raywiz.benchmarks import load_tasks

        tasks, skipped = {}, {}
        for name in cfg.benchmarks:
            if name not in EXECUTABLE:
                skipped[name] = "not run: its problems are not functions with tests"
                continue
            try:
                tasks[name] = load_tasks(name, cfg.data_paths.get(name))
            except Exception as e:  # noqa: BLE001 - reported per benchmark, or raised
                if cfg.on_missing_benchmark == "error":
                    raise RuntimeError(f"execution decontamination: cannot load benchmark {name!r}: {e}") from e
                skipped[name] = f"{type(e).__name__}: {e}"
        return cls(tasks, cfg.exec_match, skipped=skipped)

    def check(self, answers: Sequence[str | None]) -> list[Contamination | None]:
        """For each answer: the first benchmark task whose tests it passes, or None."""
        found: list[Contamination | None] = [None] * len(answers)
        # per benchmark: the samples to score and, for each, (answer index, function name)
        work: dict[str, tuple[list[dict], list[tuple[int, str]]]] = defaultdict(lambda: ([], []))
        for i, answer in enumerate(answers):
            self.stats["answers"] += 1
            code, functions = defined_functions(answer or "")
            self.stats["answers_with_functions"] += bool(functions)
            for fn in functions:
                for index in self.indexes:
                    samples, owners = work[index.benchmark]
                    for task in index.matching(fn, self.match):
                        samples.append({"task_id": task.task_id, "solution": candidate_program(task, code, fn.name)})
                        owners.append((i, fn.name))
        scorer = self._cluster_scorer() if any(samples for samples, _ in work.values()) else None
        try:
            for index in self.indexes:
                samples, owners = work.get(index.benchmark, ([], []))
                if not samples:
                    continue
                self.stats["executions"] += len(samples)
                for sample, (i, function), verdict in zip(samples, owners, self._score(scorer, index, samples)):
                    if verdict.passed and found[i] is None:
                        self.stats["answers_passed"] += 1
                        found[i] = Contamination(index.benchmark, sample["task_id"], f"tests (function {function})",
                                                 1.0, "exec")
        finally:
            if scorer is not None:
                scorer.close()  # its workers hold CPUs: give them back between batches and rounds
        return found

    def _cluster_scorer(self):
        """The distributed scorer's workers when Ray is up (evolve, or a cluster), else None."""
        import ray

        if not ray.is_initialized() or ray.available_resources().get("CPU", 0) < 1:
            return None  # no Ray, or every CPU held by other actors: score in this process
        from raywiz.benchmarks.cluster_scoring import ClusterScorer

        return ClusterScorer(self.settings)

    def _score(self, scorer, index: _TaskIndex, samples: list[dict]):
        if scorer is not None:
            return scorer.score(index.benchmark, index.tasks, samples, allow_partial=True)
        from raywiz.benchmarks.score import score_samples

        return score_samples(index.benchmark, index.tasks, samples, self.settings, allow_partial=True)

    def report(self) -> dict:
        return {"match": self.match, "answer_columns": [*ANSWER_COLUMNS, "messages"],
                "benchmark_tasks": {ix.benchmark: len(ix.tasks) for ix in self.indexes},
                "benchmarks_not_run": self.skipped, **self.stats}
