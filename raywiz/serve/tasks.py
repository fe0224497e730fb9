"""Benchmark tasks for the evaluation page: pick a HumanEval/MBPP task, prompt a model, test its answer.

Task loading and test execution belong to the eval stage (raywiz.eval.benchmarks.load_tasks and
raywiz.eval.score.check_completion, which runs the code in the eval sandbox); this module only
adapts them to the page and never runs generated code itself. When the eval stage is not
installed, the page says so (HTTP 501) and the rest of serve works as before.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from raywiz.data.template import format_prompt
from raywiz.serve.prompts import INSTRUCTION_TEMPLATES

# WizardCoder's instruction for code-generation benchmarks (its HumanEval/MBPP generation scripts).
WIZARDCODER_TASK_INSTRUCTION = "Create a Python script for this problem:\n{prompt}"
# Codex/human-eval stop sequences for plain completion models: the function ends at the next top-level line.
COMPLETION_STOP = ["\nclass ", "\ndef ", "\n#", "\nif __name__", "\nprint("]
CODE_BLOCK = re.compile(r"```(?:[Pp]ython3?|py)?[ \t]*\n(.*?)(?:```|$)", re.DOTALL)


class TasksUnavailable(RuntimeError):
    """The eval stage (task loading or the sandbox) is missing, or the benchmark data is."""


class TaskCatalog:
    def __init__(self, benchmarks: dict[str, str | None]):
        self.benchmarks = dict(benchmarks)
        self._cache: dict[str, list[Any]] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        return list(self.benchmarks)

    def tasks(self, benchmark: str) -> list[Any]:
        if benchmark not in self.benchmarks:
            raise KeyError(benchmark)
        with self._lock:
            if benchmark not in self._cache:
                try:
                    from raywiz.eval.benchmarks import load_tasks
                except ImportError as e:
                    raise TasksUnavailable(f"benchmark tasks need the eval stage (raywiz.eval.benchmarks): {e}") from e
                try:
                    self._cache[benchmark] = list(load_tasks(benchmark, self.benchmarks[benchmark]))
                except (OSError, ValueError) as e:
                    raise TasksUnavailable(f"{benchmark}: tasks could not be loaded: {e}") from e
            return self._cache[benchmark]

    def get(self, benchmark: str, task_id: str) -> Any:
        for task in self.tasks(benchmark):
            if str(task.task_id) == task_id:
                return task
        raise KeyError(task_id)

    @staticmethod
    def model_prompt(task: Any, template: str | None) -> tuple[str, list[str]]:
        """(prompt, stop sequences): WizardCoder's instruction for models trained with a raywiz
        template, the benchmark's own text to continue (code completion) for other models."""
        tests = "\n".join(getattr(task, "test_list", None) or [])
        if template in INSTRUCTION_TEMPLATES:
            problem = getattr(task, "instruction", None) or task.prompt.strip()
            if tests and not getattr(task, "instruction", None):
                problem += f"\nYour code should pass these tests:\n{tests}"
            return format_prompt(WIZARDCODER_TASK_INSTRUCTION.format(prompt=problem)), []
        prefix = getattr(task, "completion_prefix", task.prompt)
        if prefix:  # HumanEval: continue the signature + docstring (the tests run prefix + completion)
            return prefix, list(COMPLETION_STOP)
        return f'"""\n{task.prompt}\n{tests}\n"""\n', list(COMPLETION_STOP)  # MBPP: a docstring, then code

    @staticmethod
    def completion_for(text: str, template: str | None) -> str:
        """What the tests run: an instruction model's answer is prose around a code block (take the
        block, as WizardCoder's post-processing does); a completion model's text is code already."""
        if template in INSTRUCTION_TEMPLATES:
            match = CODE_BLOCK.search(text)
            if match:
                return match.group(1)
        return text

    def check(self, benchmark: str, task: Any, completion: str) -> dict:
        """Run the task's tests on a completion in the eval sandbox: {passed, result, ...}."""
        try:
            from raywiz.eval.score import check_completion
        except ImportError as e:
            raise TasksUnavailable(f"running tests needs the eval sandbox (raywiz.eval.score): {e}") from e
        verdict = check_completion(benchmark, task, completion)
        data = verdict.to_dict() if hasattr(verdict, "to_dict") else dict(vars(verdict))
        data["passed"] = bool(data.get("passed"))
        return data
