"""Benchmark tasks for the evaluation page: pick a HumanEval/MBPP task, prompt a model, test its answer.

Task loading, prompts, post-processing and test execution belong to the eval stage
(raywiz.benchmarks.load_tasks, raywiz.benchmarks.prompts, raywiz.benchmarks.postprocess and
raywiz.benchmarks.score.check_completion, which runs the code in the eval sandbox), so the page's verdict
is `raywiz eval`'s for the same model and task; this module only adapts them to the page and never
runs generated code itself. When a benchmark's data is missing, the page says so (HTTP 501) and
the rest of serve works as before.
"""

from __future__ import annotations

import threading
from typing import Any

from raywiz.benchmarks import load_tasks
from raywiz.benchmarks.postprocess import postprocess
from raywiz.benchmarks.prompts import build_prompt, default_stop
from raywiz.benchmarks.score import check_completion
from raywiz.data.template import CHAT_STYLE_TEMPLATES
from raywiz.serve.prompts import INSTRUCTION_TEMPLATES


def prompt_style(template: str | None) -> str:
    """Eval's prompt style for a served model: WizardCoder's instruction prompting for models trained
    with a raywiz instruction or chat template (the latter rendered by their tokenizer's chat template,
    as eval does), the benchmark's text to continue for any other model."""
    return "wizardcoder" if template in INSTRUCTION_TEMPLATES or template in CHAT_STYLE_TEMPLATES else "completion"


class TasksUnavailable(RuntimeError):
    """A benchmark's data is missing or unreadable."""


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
    def model_prompt(task: Any, template: str | None, tokenizer=None) -> tuple[str, list[str]]:
        """(prompt, stop sequences), exactly as `raywiz eval` builds them (raywiz.benchmarks.prompts);
        the tokenizer renders a chat template the model was trained with."""
        style = prompt_style(template)
        return build_prompt(task, style, tokenizer=tokenizer, trained={"template": template}), default_stop(style)

    @staticmethod
    def completion_for(text: str, template: str | None, task: Any = None) -> str:
        """What the tests run, post-processed as `raywiz eval` does (raywiz.benchmarks.postprocess, WizardCoder's
        method). Without the task, HumanEval's rules apply (the page's main benchmark)."""
        benchmark = getattr(task, "benchmark", None) or "humaneval"
        return postprocess(text, benchmark, "wizardcoder", getattr(task, "entry_point", None),
                           default_stop(prompt_style(template)))

    def check(self, benchmark: str, task: Any, completion: str) -> dict:
        """Run the task's tests on a completion in the eval sandbox: {passed, result, ...}."""
        verdict = check_completion(benchmark, task, completion)
        data = verdict.to_dict() if hasattr(verdict, "to_dict") else dict(vars(verdict))
        data["passed"] = bool(data.get("passed"))
        return data
